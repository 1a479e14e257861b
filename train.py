"""The training command: search, train and evaluate a classifier (``python train.py --help``).

The same command as ``python -m imgclf.pipeline.training``; its usage and examples are there.
"""

from __future__ import annotations

import sys

from imgclf.pipeline.training import main

if __name__ == "__main__":
    sys.exit(main())
