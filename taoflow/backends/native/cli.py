"""`taoflow-ssd`: TAO's `ssd` command-line surface on the native backend.

`taoflow-ssd train -e spec.txt -r results -k KEY` accepts the same arguments as TAO 5's `ssd train` (and so works
when the TAO launcher runs it as `ssd train ...` with TAO_DOCKER_DISABLE=1). The entrypoint wrapper's options
(--gpus, --gpu_index, --use_amp, --log_file, -np) are accepted by every task, as TAO's entrypoint does.
`train --gpus N` (N > 1) runs N processes, one per GPU (launch.py); rank 0 alone logs (INFO and, with -v, DEBUG;
the other ranks only warnings and errors, prefixed with their rank) and writes --log_file.
`-k` is accepted everywhere for compatibility; native artifacts are plain PyTorch/ONNX files and are NOT encrypted.
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from ...errors import TaoflowError

KEY_HELP = "TAO model key (native checkpoints are not encrypted; `export --etlt` encodes the model with it)"


def _common(p):
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (train only uses more than one)")
    p.add_argument("--gpu_index", type=int, nargs="+", default=None, help="GPU indices to use")
    p.add_argument("--use_amp", action="store_true", help="mixed precision training")
    p.add_argument("--log_file", default=None, help="also write the log to this file")
    p.add_argument("-np", "--num_processes", type=int, default=-1, help="accepted for TAO compatibility")
    p.add_argument("-k", "--key", default="", help=KEY_HELP)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser():
    parser = argparse.ArgumentParser(prog="ssd", description="TAO SSD tasks on taoflow's native PyTorch backend. "
                                     + KEY_HELP + ".")
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)

    p = sub.add_parser("train", help="train an SSD model")
    p.add_argument("-e", "--experiment_spec_file", required=True)
    p.add_argument("-r", "--results_dir", required=True)
    p.add_argument("-m", "--resume_model_weights", default=None, help="pretrained, pruned or checkpoint .pth")
    p.add_argument("--initial_epoch", type=int, default=1, help="> 1 resumes, with optimizer state, from -m")
    p.add_argument("--arch", choices=("ssd", "dssd"), default=None, help="checked against the spec")
    p.add_argument("--use_multiprocessing", action="store_true", help="accepted for TAO compatibility")
    _common(p)

    p = sub.add_parser("evaluate", help="evaluate a model on the spec's validation data")
    p.add_argument("-m", "--model_path", required=True)
    p.add_argument("-e", "--experiment_spec", required=True)
    p.add_argument("-r", "--results_dir", default=None)
    p.add_argument("-i", "--image_dir", default=None, help="override the validation image directory")
    p.add_argument("-l", "--label_dir", default=None, help="override the validation label directory")
    p.add_argument("-b", "--batch_size", type=int, default=None)
    _common(p)

    p = sub.add_parser("inference", help="run a model on images; write annotated images and KITTI labels")
    p.add_argument("-m", "--model_path", required=True)
    p.add_argument("-i", "--image_dir", required=True, help="image file or directory")
    p.add_argument("-e", "--experiment_spec", required=True)
    p.add_argument("-t", "--threshold", type=float, default=0.3)
    p.add_argument("-r", "--results_dir", default=None, help="TAO 5: images_annotated/ and labels/ go here")
    p.add_argument("-o", "--out_image_dir", default=None, help="TAO 3/4: annotated image directory")
    p.add_argument("-l", "--out_label_dir", default=None, help="TAO 3/4: KITTI label directory")
    p.add_argument("-b", "--batch_size", type=int, default=1)
    _common(p)

    p = sub.add_parser("prune", help="prune a model with TAO's min_weight criterion")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-o", "--output_file", required=True)
    p.add_argument("-e", "--experiment_spec_path", default=None, help="spec (optional; checked when given)")
    p.add_argument("--results_dir", default=None)
    p.add_argument("-n", "--normalizer", choices=("max", "L2"), default="max")
    p.add_argument("-eq", "--equalization_criterion", default="union",
                   choices=("arithmetic_mean", "geometric_mean", "union", "intersection"))
    p.add_argument("-pg", "--pruning_granularity", type=int, default=8)
    p.add_argument("-pth", "--pruning_threshold", type=float, default=0.1)
    p.add_argument("-nf", "--min_num_filters", type=int, default=16)
    p.add_argument("-el", "--excluded_layers", nargs="*", default=[])
    _common(p)

    p = sub.add_parser("export", help="export to ONNX for TensorRT / ONNX Runtime")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-o", "--output_file", default=None)
    p.add_argument("-e", "--experiment_spec", default=None)
    p.add_argument("--results_dir", default=None)
    p.add_argument("--gen_ds_config", action="store_true", help="write labels.txt and nvinfer_config.txt")
    p.add_argument("--target_opset", type=int, default=13)
    p.add_argument("--static_batch_size", type=int, default=-1)
    p.add_argument("--data_type", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--cal_image_dir", default=None)
    p.add_argument("--cal_data_file", default=None)
    p.add_argument("--cal_cache_file", default="./cal.bin")
    p.add_argument("--cal_json_file", default=None)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_batch_size", type=int, default=1)
    p.add_argument("--min_batch_size", type=int, default=1)
    p.add_argument("--opt_batch_size", type=int, default=1)
    p.add_argument("--max_workspace_size", type=int, default=2)
    p.add_argument("--engine_file", default=None)
    p.add_argument("-s", "--strict_type_constraints", action="store_true")
    p.add_argument("--force_ptq", action="store_true")
    p.add_argument("--onnx_route", default="torch", help="accepted for TAO compatibility")
    p.add_argument("--etlt", action="store_true",
                   help="write a .etlt (the ONNX encoded with -k KEY or $TAO_MODEL_KEY by NVIDIA's codec, as TAO "
                        "does; needs Python 3.10 or 3.12 for the codec, see README)")
    _common(p)

    p = sub.add_parser("dataset_convert", help="TFRecords exactly as TAO's dataset_convert writes them")
    from ...datasets.tfrecords import add_cli_arguments
    add_cli_arguments(p)
    return parser


def _rank():
    """(rank, world size) of a multi-process training rank, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else (0, 1)


def _setup_logging(args):
    rank, world = _rank()
    handlers = [logging.StreamHandler(sys.stderr)]
    if getattr(args, "log_file", None) and rank == 0:
        handlers.append(logging.FileHandler(args.log_file))
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if rank == 0 else logging.WARNING, handlers=handlers, force=True,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s" if world == 1 else
                        f"%(asctime)s [%(levelname)s] [rank {rank}/{world}] %(name)s: %(message)s")


def _check_spec(args):
    """Refuse, before any work, spec fields the native backend cannot honour; log those it ignores (check_native).

    train() runs the same check itself, so only the other tasks that read a spec need it here.
    """
    spec_path = {"evaluate": "experiment_spec", "inference": "experiment_spec", "export": "experiment_spec",
                 "prune": "experiment_spec_path"}.get(args.task)
    if spec_path is None or getattr(args, spec_path) is None:
        return
    from ...spec import load_experiment
    from ...spec.experiment import check_native
    task = args.task if args.task in ("evaluate", "inference", "export") else "any"
    for warning in check_native(load_experiment(getattr(args, spec_path), task=task), task=task):
        logging.getLogger("taoflow.backends.native").warning("%s", warning)


def _check_output_dir(path, flag):
    """A directory the task will create or write into: refuse a path that is (or lies under) a non-directory."""
    if path is None:
        return
    p = Path(path)
    for d in (p, *p.parents):
        if d.exists():
            if not d.is_dir():
                raise TaoflowError(f"{flag} {path}: {d} exists and is not a directory")
            return


def _check_output_file(path, flag):
    if path is not None and Path(path).is_dir():
        raise TaoflowError(f"{flag} {path} is a directory; {flag} names the output file")
    if path is not None:
        _check_output_dir(Path(path).parent, flag)


def _check_positive(args, *names):
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise TaoflowError(f"--{name} must be at least 1, got {value}")


def _check_model(spec, model_path, flag="-m"):
    """The checkpoint loads and fits the spec; return its state."""
    from .build import arch_from_spec
    from .checkpoint import check_matches_spec, load_checkpoint
    state = load_checkpoint(model_path)
    if spec is not None:
        check_matches_spec(state, arch_from_spec(spec), model_path)
    return state


def _check_data_sources(spec, training):
    """The spec's data exist and read cleanly (labels, image headers) without decoding anything: what training or
    evaluation would otherwise find only after writing status.json, weights/ and an epoch or more of work."""
    from .data import tfrecord_files
    from .kitti_eval_data import load_kitti_eval_data
    dc = spec.effective.dataset_config
    mapping = dict(dc.target_class_mapping)
    if training:
        sources = list(dc.data_sources)
        if not sources:
            raise TaoflowError(f"{spec.path}: dataset_config has no data_sources to train on")
        if sources[0].tfrecords_path:
            for s in sources:
                if s.tfrecords_path:
                    tfrecord_files(s.tfrecords_path)
        else:
            for s in sources:
                load_kitti_eval_data(s.image_directory_path, s.label_directory_path, mapping, what="training")
    if training and not spec.effective.eval_config.validation_period_during_training:
        return
    pairs = [(s.image_directory_path, s.label_directory_path) for s in dc.validation_data_sources
             if s.image_directory_path and s.label_directory_path]
    if not pairs:
        raise TaoflowError(f"{spec.path}: no validation_data_sources with image and label directories"
                           + (" (validation_period_during_training is set)" if training else ""))
    for image_dir, label_dir in pairs:
        load_kitti_eval_data(image_dir, label_dir, mapping)


def _validate(args):
    """Every argument and input a task reads, checked before the task writes anything (status.json, weights/,
    results directories): bad input is one `error:` line and exit 2, with nothing created."""
    from ...spec import load_experiment
    if getattr(args, "gpus", 1) < 0:
        raise TaoflowError(f"--gpus must be 0 or more, got {args.gpus}")
    if args.gpu_index is not None and any(i < 0 for i in args.gpu_index):
        raise TaoflowError(f"--gpu_index takes GPU indices (0 or more), got {args.gpu_index}")
    if args.task == "train" and _launches_ranks(args):
        _rank_placement(args)  # this machine has the GPUs, before anything is read
    if args.task == "train":
        spec = load_experiment(args.experiment_spec_file, task="train")
        from ...spec.experiment import check_native
        check_native(spec, task="train")  # raises on refused fields; train() logs the warnings
        if args.arch is not None and spec.is_dssd != (args.arch == "dssd"):
            raise TaoflowError(f"--arch {args.arch} does not match the spec's "
                               f"{'dssd_config' if spec.is_dssd else 'ssd_config'}")
        epochs = spec.effective.training_config.num_epochs
        if args.initial_epoch < 1 or args.initial_epoch > epochs:
            raise TaoflowError(f"--initial_epoch must be between 1 and num_epochs ({epochs}) of "
                               f"{args.experiment_spec_file}, got {args.initial_epoch}")
        if args.initial_epoch > 1 and not args.resume_model_weights:
            raise TaoflowError("--initial_epoch > 1 needs -m with the checkpoint to resume from")
        if args.resume_model_weights:
            state = _check_model(spec, args.resume_model_weights)
            if args.initial_epoch > 1 and state.get("optimizer") is None:
                raise TaoflowError(f"{args.resume_model_weights} has no optimizer state; resume needs a training "
                                   f"checkpoint")
        _check_output_dir(args.results_dir, "-r")
        _check_data_sources(spec, training=True)
    elif args.task == "evaluate":
        spec = load_experiment(args.experiment_spec, task="evaluate")
        _check_model(spec, args.model_path)
        if bool(args.image_dir) != bool(args.label_dir):
            raise TaoflowError("-i and -l go together: give both to evaluate other data, or neither")
        _check_positive(args, "batch_size")
        _check_output_dir(args.results_dir, "-r")
        if args.image_dir:
            from .kitti_eval_data import load_kitti_eval_data
            load_kitti_eval_data(args.image_dir, args.label_dir, dict(spec.effective.dataset_config
                                                                      .target_class_mapping))
        else:
            _check_data_sources(spec, training=False)
    elif args.task == "inference":
        if args.results_dir is None and not (args.out_image_dir and args.out_label_dir):
            raise TaoflowError("give -r/--results_dir (TAO 5) or both -o and -l (TAO 3/4)")
        spec = load_experiment(args.experiment_spec, task="inference")
        _check_model(spec, args.model_path)
        if not 0 <= args.threshold <= 1:
            raise TaoflowError(f"-t/--threshold must be between 0 and 1, got {args.threshold}")
        _check_positive(args, "batch_size")
        for flag, path in (("-r", args.results_dir), ("-o", args.out_image_dir), ("-l", args.out_label_dir)):
            _check_output_dir(path, flag)
        from ...datasets.images import MAX_IMAGE_SIDE, image_size
        from .inference import list_inputs
        for path in list_inputs(args.image_dir):
            image_size(path, MAX_IMAGE_SIDE)  # names a truncated or oversized image before any output exists
    elif args.task == "prune":
        spec = load_experiment(args.experiment_spec_path, task="any") if args.experiment_spec_path else None
        _check_model(spec, args.model)
        _check_output_file(args.output_file, "-o")
        _check_output_dir(args.results_dir, "--results_dir")
        _check_positive(args, "pruning_granularity", "min_num_filters")
        if not args.pruning_threshold >= 0:
            raise TaoflowError(f"-pth must be 0 or more, got {args.pruning_threshold}")
    elif args.task == "export":
        spec = load_experiment(args.experiment_spec, task="export") if args.experiment_spec else None
        _check_model(spec, args.model)
        _check_output_file(args.output_file, "-o")
        _check_output_dir(args.results_dir, "--results_dir")
        _check_positive(args, "batches", "batch_size", "max_batch_size", "min_batch_size", "opt_batch_size")


def _launches_ranks(args):
    """This is the command a user ran with --gpus N > 1 (not one of the ranks it starts)."""
    return args.gpus > 1 and "WORLD_SIZE" not in os.environ


def _rank_placement(args):
    """The GPUs of the N ranks (taoflow.gpus.training_placement); --gpu_index names them as in TAO's launcher."""
    from ...gpus import GPUS_ENV, training_placement
    env = os.environ
    if args.gpu_index is not None:
        if len(set(args.gpu_index)) != args.gpus:
            raise TaoflowError(f"--gpus {args.gpus} needs as many distinct --gpu_index values, got {args.gpu_index}")
        env = {k: v for k, v in os.environ.items() if k != GPUS_ENV}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in sorted(set(args.gpu_index)))
    return training_placement(args.gpus, env)


def run(args, argv=None):
    """argv: the command line (what the ranks of a multi-GPU training run again); default sys.argv[1:]."""
    if args.task == "dataset_convert":
        from ...datasets.tfrecords import run_cli
        return run_cli(args)
    _check_spec(args)
    _validate(args)
    if args.task == "train" and _launches_ranks(args):
        from .launch import run_ranks
        return run_ranks([str(a) for a in (sys.argv[1:] if argv is None else argv)], args.gpus,
                         _rank_placement(args))
    if args.gpu_index is not None and "WORLD_SIZE" not in os.environ:  # a rank's GPUs are set by its launcher
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in args.gpu_index)
    if args.task == "train":
        from .train import train
        from .evaluate import validation_fn
        result = train(args.experiment_spec_file, args.results_dir, resume_model=args.resume_model_weights,
                       initial_epoch=args.initial_epoch, gpus=args.gpus, use_amp=args.use_amp,
                       evaluate_fn=validation_fn)
        if result["checkpoint"]:  # rank 0 only in a multi-GPU run
            print(f"Training finished; last checkpoint: {result['checkpoint']}")
        return 0
    if args.task == "evaluate":
        from .evaluate import evaluate_cli
        return evaluate_cli(args)
    if args.task == "inference":
        from .inference import inference_cli
        return inference_cli(args)
    if args.task == "prune":
        from .prune import prune_cli
        return prune_cli(args)
    if args.task == "export":
        from .export import export_cli
        return export_cli(args)
    raise AssertionError(args.task)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    rank, world = _rank()
    if world == 1:
        return _run_reporting_errors(args, argv, "error: ")
    from .launch import watch_launcher
    watch_launcher()
    code = _run_reporting_errors(args, argv, f"error: [rank {rank}/{world}] ")
    if code:  # a failed rank leaves at once: its process group's threads would abort the interpreter's exit
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    return code


def _run_reporting_errors(args, argv, prefix):
    """run(), every error one line starting with `prefix`; returns the exit code."""
    try:
        return run(args, argv) or 0
    except TaoflowError as e:
        print(f"{prefix}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a path that cannot be read, created or written
        from ...cli import BAD_PATH_ERRNOS, os_error_message
        print(f"{prefix}{os_error_message(e)}", file=sys.stderr)
        return 2 if e.errno in BAD_PATH_ERRNOS else 1
    except Exception as e:  # noqa: BLE001 - a bug: one line (the traceback with -v), and a failed run's exit 1
        logging.getLogger("taoflow").debug("unexpected error", exc_info=True)
        print(f"{prefix}unexpected {type(e).__name__}: {e} (a bug in taoflow; rerun with -v for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
