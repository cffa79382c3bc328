"""`taoflow` command line: one subcommand per stage, each a thin wrapper over the stage's plain function.

Exit status, the same for every subcommand: 0 ok; 1 the run failed (a device unreachable, a TAO step that failed,
something a check found missing); 2 bad input (a file that does not parse or validate, a path that does not exist
or cannot be written, an argument out of range). Errors are one `error: ...` line on stderr, never a traceback
(`--log-level DEBUG` adds the traceback of an unexpected error, which is a bug in taoflow).
"""

import argparse
import errno
import importlib
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import TaoflowError

# subcommand path -> (module, help[, prefix]); the module provides add_<prefix>arguments and run_<prefix>,
# by default add_cli_arguments and run_cli.
COMMANDS = {
    ("demo",): ("taoflow.demo", "run the pipeline on generated demo data (the README's main command)"),
    ("serve",): ("taoflow.serve", "serve the train-ssd deployments (starts a local Prefect server if needed)"),
    ("watch",): ("taoflow.watch", "start a deployment (e.g. train-ssd/crpd) when new data lands in a folder"),
    ("demo-data",): ("taoflow.datasets.demo", "generate synthetic data: CRPD-format license plates, or KITTI-format "
                                              "traffic and road signs (--kind kitti)"),
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
    ("fleet", "service"): ("taoflow.deploy.cli", "the detector service on each device: install | status | stop | logs",
                           "service"),
    ("device", "doctor"): ("taoflow.deploy.cli", "what a device has and lacks for deploys, with advice", "doctor"),
    ("device", "detect"): ("taoflow.deploy.cli", "run a device's model on a video, images, a camera or a stream",
                           "detect"),
    ("tao", "preflight"): ("taoflow.backends.tao.cli", "check that TAO can run through the launcher"),
    ("etlt",): ("taoflow.etlt.cli", "decode | encode | info: look inside .etlt models with NVIDIA's codec"),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="taoflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"taoflow {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {}
    for path, (_module, help_text, *_prefix) in COMMANDS.items():
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text, description=help_text)
        else:
            if path[0] not in groups:
                grp = top.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = grp.add_subparsers(dest=f"{path[0]}_command", metavar="COMMAND", required=True)
            sub = groups[path[0]].add_parser(path[1], help=help_text, description=help_text)
        _attach(sub, path)
    return parser


def _attach(parser, path):
    """Give `parser` the arguments of subcommand `path` and make it run that subcommand's function."""
    module_name, _help, *prefix = COMMANDS[path]
    module = importlib.import_module(module_name)
    hook = prefix[0] if prefix else "cli"
    getattr(module, f"add_{hook}_arguments")(parser)
    parser.set_defaults(_run=getattr(module, f"run_{hook}" if prefix else "run_cli"))


def tool_main(path, doc):
    """The `main(argv=None)` of a standalone script in tools/: subcommand `path` of this CLI under the script's
    own name, with the same exit codes and one-line errors (the scripts are this entry point, not copies of it)."""
    def main(argv=None):
        parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name, description=doc)
        _attach(parser, tuple(path))
        args = parser.parse_args(argv)
        verbose = getattr(args, "verbose", False) is True
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s")
        return run(args)
    return main


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.log_level == "INFO":  # the Prefect client logs every API call through httpx; they bury the progress
        logging.getLogger("httpx").setLevel(logging.WARNING)
    return run(args)


def run(args):
    """Run a parsed subcommand; the exit status and the one-line error of the module docstring."""
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
    except OSError as e:  # a path given on the command line that cannot be read, created or written
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2 if e.errno in BAD_PATH_ERRNOS else 1
    except Exception as e:  # noqa: BLE001 - a bug in taoflow: one line, and the traceback only when asked for
        unreachable = _unreachable_server(e)
        if unreachable:
            print(f"error: {unreachable}", file=sys.stderr)
            return 1
        logging.getLogger("taoflow").debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(e).__name__}: {e} (a bug in taoflow; rerun with --log-level DEBUG for the "
              f"traceback)", file=sys.stderr)
        return 1


# errnos that mean "this path is wrong" (bad input, exit 2) rather than "the machine failed" (disk full, I/O: exit 1)
BAD_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                   errno.ENAMETOOLONG, errno.EROFS, errno.ELOOP, errno.EINVAL, errno.EXDEV}


def _unreachable_server(e):
    """A message for a server that cannot be reached (the Prefect API through httpx), else None."""
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(e, httpx.TransportError):
        try:
            url = str(e.request.url)
        except RuntimeError:  # no request attached
            url = os.environ.get("PREFECT_API_URL", "the server")
        return f"cannot reach {url}: {e or type(e).__name__} (is the Prefect server running? PREFECT_API_URL)"
    return None


def os_error_message(e):
    """'PATH: what went wrong' for an OSError, naming the path (both for a rename or link)."""
    what = e.strerror or str(e)
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and e.filename is not None:
        what += " (a file is in the way of a directory this command needs)"
    if e.filename is None:
        return what
    where = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{where}: {what}"


if __name__ == "__main__":
    sys.exit(main())
