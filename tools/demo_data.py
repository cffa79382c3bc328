#!/usr/bin/env python3
"""Generate a synthetic CRPD-format license-plate dataset (same as `taoflow demo-data`).

Example: tools/demo_data.py -o data/generated/crpd -n 5000 -j 2
"""

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from taoflow.cli import tool_main  # noqa: E402

main = tool_main(("demo-data",), __doc__)

if __name__ == "__main__":
    sys.exit(main())
