"""notebook.ipynb runs top to bottom with no edits and shows its plots."""

from __future__ import annotations

from pathlib import Path

import pytest
import run_notebook
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_notebook_executes_and_renders_its_plots(
    sample_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTEBOOK_DATA", str(sample_data))
    notebook = run_notebook.run(ROOT / "notebook.ipynb", timeout=300, save=False)
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 7  # distribution, samples, colours, trials, curves, confusion, maps
    text = "".join(out.get("text", "") for out in outputs)
    assert "macro F1" in text and "agreement" in text
