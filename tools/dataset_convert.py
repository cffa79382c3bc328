#!/usr/bin/env python3
"""Standalone `dataset_convert`: TFRecords exactly as `tao ssd dataset_convert -d SPEC -o PREFIX` writes them."""

import argparse
import logging
import sys

from taoflow.datasets.tfrecords import add_cli_arguments, run_cli
from taoflow.errors import TaoflowError


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
