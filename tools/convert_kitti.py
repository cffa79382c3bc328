#!/usr/bin/env python3
"""Convert a KITTI traffic dataset to TAO's image/label layout (same as `taoflow convert kitti`).

Example: tools/convert_kitti.py -i data/kitti/training -o data/generated/kitti --preset traffic -j 8
"""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.cli import tool_main  # noqa: E402

main = tool_main(("convert", "kitti"), __doc__)

if __name__ == "__main__":
    sys.exit(main())
