#!/usr/bin/env python3
"""Convert a CRPD license-plate dataset to TAO KITTI labels (same as `taoflow convert crpd`).

Example: tools/convert_crpd.py -i data/CRPD_single -o data/generated/crpd_kitti --class-mode lpd -j 8
"""

import argparse
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.datasets.crpd import add_cli_arguments, run_cli  # noqa: E402
from taoflow.errors import TaoflowError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except TaoflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
