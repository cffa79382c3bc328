#!/usr/bin/env python3
"""Standalone `dataset_convert`: TFRecords exactly as `tao ssd dataset_convert -d SPEC -o PREFIX` writes them."""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.cli import tool_main  # noqa: E402

main = tool_main(("tfrecords",), __doc__)

if __name__ == "__main__":
    sys.exit(main())
