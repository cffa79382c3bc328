"""`taoflow` command line: one subcommand per stage, each a thin wrapper over the stage's plain function."""

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .errors import TaoflowError

# subcommand path -> (module, help[, prefix]); the module provides add_<prefix>arguments and run_<prefix>,
# by default add_cli_arguments and run_cli.
COMMANDS = {
    ("demo",): ("taoflow.demo", "run the pipeline on generated demo data (the README's main command)"),
    ("serve",): ("taoflow.serve", "serve the train-ssd deployments (starts a local Prefect server if needed)"),
    ("watch",): ("taoflow.watch", "start a deployment (e.g. train-ssd/crpd) when new data lands in a folder"),
    ("demo-data",): ("taoflow.datasets.demo", "generate a synthetic CRPD-format license-plate dataset"),
    ("convert", "crpd"): ("taoflow.datasets.crpd", "CRPD quadrilateral plates -> KITTI labels"),
    ("convert", "kitti"): ("taoflow.datasets.kitti", "KITTI traffic labels -> remapped 15-field KITTI labels"),
    ("split",): ("taoflow.datasets.split", "deterministic train/val split (links, never moves files)"),
    ("tfrecords",): ("taoflow.datasets.tfrecords", "TFRecords exactly as `tao ssd dataset_convert` writes them"),
    ("spec", "check"): ("taoflow.spec.cli", "parse and validate TAO spec files", "check"),
    ("spec", "render"): ("taoflow.spec.cli", "print a spec with its paths made absolute", "render"),
    ("fleet", "deploy"): ("taoflow.deploy.cli", "package an export and roll it out: canary, waves, rollback",
                          "deploy"),
    ("fleet", "status"): ("taoflow.deploy.cli", "models, versions and passports on each device", "status"),
    ("fleet", "rollback"): ("taoflow.deploy.cli", "switch a device back to its previous (or a given) version",
                            "rollback"),
    ("device", "doctor"): ("taoflow.deploy.cli", "what a device has and lacks for deploys, with advice", "doctor"),
    ("tao", "preflight"): ("taoflow.backends.tao.cli", "check that TAO can run through the launcher"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="taoflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"taoflow {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {}
    for path, (module_name, help_text, *prefix) in COMMANDS.items():
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text, description=help_text)
        else:
            if path[0] not in groups:
                grp = top.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = grp.add_subparsers(dest=f"{path[0]}_command", metavar="COMMAND", required=True)
            sub = groups[path[0]].add_parser(path[1], help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        hook = prefix[0] if prefix else "cli"
        add = getattr(module, f"add_{hook}_arguments")
        run = getattr(module, f"run_{hook}" if prefix else "run_cli")
        add(sub)
        sub.set_defaults(_run=run)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.log_level == "INFO":  # the Prefect client logs every API call through httpx; they bury the progress
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args._run(args) or 0
    except TaoflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
