#!/usr/bin/env python3
"""Standalone `dataset_convert`: TFRecords exactly as `tao ssd dataset_convert -d SPEC -o PREFIX` writes them."""

import argparse
import logging
import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.datasets.tfrecords import add_cli_arguments, run_cli  # noqa: E402
from taoflow.errors import TaoflowError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dataset_convert", description=__doc__)
    add_cli_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    try:
        return run_cli(args)
    except TaoflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
