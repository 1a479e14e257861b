"""The bundled user model ``model/content/``: transfer learning on the real-photo dataset.

``make model`` built it (EfficientNet-Lite0 features, a searched head; README "The bundled
models"). These tests redraw the photo dataset's test split (seed 0, as ``make model`` drew it)
and check the bundle answers it as its manifest says, as serving loads and runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
from imgclf import artifact
from imgclf.pipeline import photo_data
from imgclf.pipeline.data import find_splits, load_split
from imgclf.pipeline.efficientnet_lite import weights_digest

BUNDLED = ROOT / "model" / "content"


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The photo dataset's test split, drawn as ``make photo-data`` draws it."""
    root = tmp_path_factory.mktemp("photos")
    assert photo_data.main(["--out", str(root)]) == 0
    return find_splits(root)[1]


def test_the_bundle_holds_what_serving_and_retraining_need_and_its_provenance() -> None:
    manifest = artifact.load(artifact.read_dir(BUNDLED), name="content").manifest
    metrics = json.loads((BUNDLED / artifact.METRICS).read_text())

    # model.keras is bundled: retraining warm-starts from it (its head retrains on features)
    assert sorted(p.name for p in BUNDLED.iterdir()) == sorted(
        artifact.SERVING_FILES + artifact.OPTIONAL_FILES + (artifact.KERAS,)
    )
    assert manifest.name == "content" and manifest.framing == "crop_0.875_bicubic"
    assert list(manifest.classes) == list(photo_data.CLASSES)
    assert manifest.quantization_reason.startswith("auto ")
    assert metrics["backbone"] == "efficientnet_lite0" and metrics["candidate"] == "frozen"
    assert metrics["source"]["weights_sha256"] == weights_digest("lite0")
    assert metrics["config"]["data"] == "data/photos" and metrics["config"]["seed"] == 0


@pytest.mark.slow
def test_the_bundle_scores_its_test_photographs_as_its_manifest_says(test_split: Path) -> None:
    model = artifact.load(artifact.read_dir(BUNDLED), name="content")
    test = load_split(
        test_split, model.height, model.width, classes=list(model.labels), framing=model.framing
    )

    predicted = np.array([int(np.argmax(model.predict(x))) for x in test.x])

    accuracy = float(np.mean(predicted == test.y))
    assert len(test.y) == model.manifest.parity["images"]
    assert accuracy == pytest.approx(model.manifest.metrics["accuracy"], abs=0.01)
    # four classes: chance is 0.25
    assert accuracy > 0.5
