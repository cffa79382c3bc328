#!/usr/bin/env python3
"""Convert a CRPD license-plate dataset to TAO KITTI labels (same as `taoflow convert crpd`).

Example: tools/convert_crpd.py -i data/CRPD_single -o data/generated/crpd_kitti --class-mode lpd -j 8
"""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.cli import tool_main  # noqa: E402

main = tool_main(("convert", "crpd"), __doc__)

if __name__ == "__main__":
    sys.exit(main())
