"""notebook.ipynb runs top to bottom with no edits and shows its plots (scripts/run_notebook.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow


def test_notebook_executes_and_renders_its_plots(sample_data: Path, tmp_path: Path) -> None:
    tracked = (ROOT / "notebook.ipynb").read_bytes()
    out = tmp_path / "executed.ipynb"
    command = [sys.executable, "scripts/run_notebook.py", "notebook.ipynb", "--out", str(out)]
    env = {**os.environ, "NOTEBOOK_DATA": str(sample_data)}
    subprocess.run([*command, "--timeout", "300"], cwd=ROOT, env=env, check=True, timeout=900)
    notebook = nbformat.read(out, as_version=4)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 7  # distribution, samples, colours, trials, curves, confusion, maps
    text = "".join(out.get("text", "") for out in outputs)
    assert "macro F1" in text and "agreement" in text
    assert (ROOT / "notebook.ipynb").read_bytes() == tracked  # running it never rewrites it
