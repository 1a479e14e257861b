"""Executes a notebook top to bottom with nbclient, from the repository root, into another file.

Usage: python scripts/run_notebook.py notebook.ipynb --out runs/notebook.ipynb [--timeout 600]

The tracked notebook is never rewritten by running it: ``--out`` names where the executed copy
goes (``make notebook`` writes runs/notebook.ipynb). To refresh the committed outputs on purpose,
pass the notebook itself as ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Executes the notebook; exits non-zero (nbclient's error) when a cell fails."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="where the executed copy goes")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    notebook = nbformat.read(args.notebook, as_version=4)
    NotebookClient(
        notebook,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    ).execute()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, args.out)
    print(f"executed {args.notebook} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
