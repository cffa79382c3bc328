"""`taoflow tao preflight`: check that this machine can run TAO through the launcher, and say what is missing.

Follows taoflow.cli's convention (add_cli_arguments / run_cli); also runs standalone as
`python -m taoflow.backends.tao.cli`, printing one `error: ...` line and exiting 2 on a problem, without traceback.
"""

import argparse
import sys

from ...errors import TaoflowError
from .launcher import GENERATION_ENV, LAUNCHER_ENV
from .preflight import run_preflight


def add_cli_arguments(parser):
    parser.add_argument("--launcher", default=None, help=f"path of `tao` (default: ${LAUNCHER_ENV}, else PATH)")
    parser.add_argument("--generation", default=None, help=f"tao4 or tao5 (default: ${GENERATION_ENV}, else the "
                        "launcher's config)")
    parser.add_argument("--deploy", action="store_true", help="also check `tao deploy ssd` (TAO 5 gen_trt_engine)")


def run_cli(args):
    group_task = ("deploy", "ssd") if args.deploy else None
    pre = run_preflight(launcher=args.launcher, generation=args.generation, group_task=group_task)
    info = pre.launcher
    mode = "TAO_DOCKER_DISABLE=1 (task executables on PATH)" if pre.docker_disabled else "docker"
    print(f"ok: {info.path} ({info.package or 'launcher'} {info.version or '?'}, toolkit "
          f"{info.toolkit_version or '?'}, {info.generation}, {mode})")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="taoflow tao preflight", description=__doc__.splitlines()[0])
    add_cli_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except TaoflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
