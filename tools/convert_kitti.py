#!/usr/bin/env python3
"""Convert a KITTI traffic dataset to TAO's image/label layout (same as `taoflow convert kitti`).

Example: tools/convert_kitti.py -i data/kitti/training -o data/generated/kitti --preset traffic -j 8
"""

import argparse
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.datasets.kitti import add_cli_arguments, run_cli  # noqa: E402
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
