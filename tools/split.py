#!/usr/bin/env python3
r"""Split a KITTI dataset into training/ and val/ by hard links, reproducibly (same as `taoflow split`).

Example: tools/split.py --input_image_dir data/generated/kitti/image --input_label_dir data/generated/kitti/label \
    --output_dir data/generated/kitti_split --val_split 10
"""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.cli import tool_main  # noqa: E402

main = tool_main(("split",), __doc__)

if __name__ == "__main__":
    sys.exit(main())
