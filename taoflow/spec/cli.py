"""`taoflow spec check|render`: validate TAO spec files, or print one with its paths made absolute."""

import os
import sys

from ..errors import SpecError
from .dataset_export import load_dataset_export
from .experiment import REQUIRED, load_experiment
from .protos import dataset_export_pb2, ssd_experiment_pb2
from .render import render, rewrite_paths
from .textproto import parse_text, read_spec_text


def _kind(path):
    """Tell an experiment spec from a dataset_convert spec by which one parses."""
    text = read_spec_text(path)
    try:
        parse_text(text, dataset_export_pb2.DatasetExportConfig(), path)
        return "dataset_export"
    except SpecError:
        parse_text(text, ssd_experiment_pb2.Experiment(), path)  # raises the experiment's own error
        return "experiment"


def add_check_arguments(parser):
    parser.add_argument("specs", nargs="+", help="spec files (experiment or dataset_convert)")
    parser.add_argument("--task", default="train", choices=sorted(REQUIRED), help="task the experiment spec is for")


def run_check(args):
    failed = 0
    for path in args.specs:
        try:
            if _kind(path) == "dataset_export":
                spec = load_dataset_export(path)
                classes, _ = spec.class_ids()
                print(f"{path}: ok (dataset_convert; classes {', '.join(classes)})")
            else:
                spec = load_experiment(path, task=args.task)
                print(f"{path}: ok ({'dssd' if spec.is_dssd else 'ssd'} {spec.ssd.arch}{spec.ssd.nlayers}, "
                      f"{spec.effective.augmentation_config.output_width}x"
                      f"{spec.effective.augmentation_config.output_height}, classes {', '.join(spec.classes)})")
        except SpecError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0  # bad input, like every other command (0 ok, 1 the run failed, 2 bad input)


def add_render_arguments(parser):
    parser.add_argument("spec", help="spec file")
    parser.add_argument("--root", required=True, help="directory that relative paths in the spec are resolved against")


def run_render(args):
    root = os.path.abspath(args.root)
    if _kind(args.spec) == "dataset_export":
        message = load_dataset_export(args.spec).raw
    else:
        message = load_experiment(args.spec, task="any").raw
    absolute = rewrite_paths(message, lambda _field, value: os.path.join(root, value))
    sys.stdout.write(render(absolute))
    return 0
