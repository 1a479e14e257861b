"""The conversion command: Keras -> TFLite behind a parity check (``python convert.py --help``).

The same command as ``python -m imgclf.pipeline.conversion``; its usage and examples are there.
"""

from __future__ import annotations

import sys

from imgclf.pipeline.conversion import main

if __name__ == "__main__":
    sys.exit(main())
