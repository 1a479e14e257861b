"""imgclf.artifact: the typed manifest (old and new schemas) and the load path serving uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
from imgclf import artifact
from imgclf.artifact import InvalidModel, Manifest

BUNDLED = ROOT / "model" / "scene"


def test_a_manifest_written_before_schema_versions_still_loads_and_round_trips() -> None:
    # GIVEN the bundled manifest as the first version of convert.py wrote it (no schema_version)
    raw = json.loads((BUNDLED / "manifest.json").read_text())
    for newer in ("schema_version", "framing", "ood", "quantization_reason", "gate"):
        raw.pop(newer, None)
    raw["written_by_a_newer_tool"] = {"kept": True}
    # WHEN it is read and written back
    manifest = Manifest.from_dict(raw)
    again = manifest.to_dict()
    # THEN it is schema 1, typed, framed as models then were, and nothing it held is lost
    assert manifest.schema_version == 1 and manifest.classes == tuple(raw["classes"])
    assert manifest.quantization == raw["quantization"] and manifest.sha256 == raw["sha256"]
    assert manifest.framing == "squash_bilinear"
    assert {k: v for k, v in again.items() if k not in ("schema_version", "framing")} == raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"sha256": "x", "classes": ["a"], "framing": "fisheye"}', "unknown framing"),
        (b"[1, 2]", "not a JSON object"),
        (b"{not json", "not valid JSON"),
        (b'{"sha256": "x"}', "no list of classes"),
        (b'{"classes": ["a"]}', "no sha256"),
    ],
)
def test_a_broken_manifest_is_an_invalid_model(content: bytes, message: str) -> None:
    with pytest.raises(InvalidModel, match=message):
        Manifest.from_json(content)


def test_load_verifies_loads_and_warms_up_the_bundled_model() -> None:
    loaded = artifact.load(artifact.read_dir(BUNDLED), name="fallback")  # where it is served
    assert loaded.name == "fallback" and loaded.version == artifact.BUNDLED_VERSION
    probs = loaded.predict(np.zeros((loaded.height, loaded.width, 3), np.uint8))
    assert probs.shape == (len(loaded.labels),) and abs(float(probs.sum()) - 1) < 1e-3
    assert loaded.describe()["sha256"] == loaded.manifest.sha256


def test_write_model_leaves_a_manifest_that_describes_the_file_beside_it(tmp_path: Path) -> None:
    files = artifact.read_dir(BUNDLED)
    for name in (artifact.LABELS, artifact.METRICS):
        (tmp_path / name).write_bytes(files[name])
    artifact.write_model(
        tmp_path, files[artifact.MODEL], Manifest.from_json(files["manifest.json"])
    )
    assert (
        artifact.verify_files(artifact.read_dir(tmp_path)).sha256
        == json.loads(files["manifest.json"])["sha256"]
    )
    assert not list(tmp_path.glob(".*.tmp"))
