"""Executes a notebook top to bottom in place with nbclient (outputs saved), from the repo root.

Usage: python scripts/run_notebook.py notebook.ipynb [--timeout 600] [--no-save]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def run(path: Path, timeout: int = 600, save: bool = True) -> nbformat.NotebookNode:
    """Executes ``path`` with the repository root as working directory and returns the notebook."""
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    ).execute()
    if save:
        nbformat.write(notebook, path)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--no-save", action="store_true", help="do not write the outputs back")
    args = parser.parse_args(argv)
    run(args.notebook, args.timeout, save=not args.no_save)
    print(f"executed {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
