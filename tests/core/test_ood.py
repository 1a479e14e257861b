"""The out-of-distribution score every answer carries (``artifact.OodStats``, ``ood.npz``).

Real components only: the bundled scene model, its ``ood.npz``, a real photo of a cat from
scikit-image and sample scenes drawn as the training data was.
"""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest

from helpers import ROOT, encode, scene_image
from imgclf import artifact
from imgclf.artifact import InvalidModel, OodStats
from imgclf.pipeline.sample_data import CLASSES
from imgclf.serving.predict import ImageSource, PredictRequest, answer, predict
from imgclf.settings import ImageLimits

SCENE = ROOT / "model" / "scene"


def _cat() -> bytes:
    return importlib.resources.files("skimage").joinpath("data/chelsea.png").read_bytes()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return artifact.read_dir(SCENE)


@pytest.fixture(scope="module")
def scene(files: dict[str, bytes]) -> artifact.LoadedModel:
    return artifact.load(files)


def _no_fetch(url: str) -> bytes:
    raise AssertionError(f"no URL expected: {url}")


def test_a_real_cat_photo_is_unusual_for_the_scene_model_while_its_own_scenes_are_not(
    scene: artifact.LoadedModel,
) -> None:
    # GIVEN the scene model (synthetic drawn scenes) with its OOD statistics
    assert scene.ood is not None
    # WHEN a real photo of a cat and 36 freshly drawn scenes are classified
    cat = predict(scene, _cat(), 1, ImageLimits())
    drawn = [
        predict(scene, encode(scene_image(label, seed=1000 + i)), 1, ImageLimits())["ood"]
        for i in range(6)
        for label in CLASSES
    ]
    # THEN the cat is flagged, with a score above the threshold, and the scenes mostly are not
    assert cat["ood"]["unusual"] is True
    assert cat["ood"]["score"] > artifact.OOD_THRESHOLD
    unusual = np.mean([ood["unusual"] for ood in drawn])
    assert unusual <= 0.1, drawn
    assert np.median([ood["score"] for ood in drawn]) < 0.9


def test_single_and_batch_answers_carry_the_documented_ood_field(
    scene: artifact.LoadedModel,
) -> None:
    # GIVEN a single request and a batch request of a scene and the cat photo
    scene_bytes = encode(scene_image("forest", seed=7))
    single = PredictRequest((ImageSource("bytes", _cat()),), False, 1, None)
    batch = PredictRequest(
        (ImageSource("bytes", scene_bytes), ImageSource("bytes", _cat())), True, 1, None
    )
    # WHEN they are answered
    one = answer(single, scene, _no_fetch, 3, ImageLimits())
    many = answer(batch, scene, _no_fetch, 3, ImageLimits())
    # THEN each answer has {"score": float in 0..1, "unusual": bool}
    for ood in (one["ood"], *(r["ood"] for r in many["results"])):
        assert set(ood) == {"score", "unusual"}
        assert 0.0 <= ood["score"] <= 1.0
        assert isinstance(ood["unusual"], bool)
        json.dumps(ood)
    assert one["ood"]["unusual"] is True
    assert many["results"][1]["ood"] == one["ood"]


def test_a_version_without_ood_npz_serves_with_the_field_null(files: dict[str, bytes]) -> None:
    # GIVEN the scene version without its ood.npz (as a registry version published before it)
    model = artifact.load({k: v for k, v in files.items() if k != artifact.OOD})
    # WHEN an image is classified THEN the answer says null, and still classifies
    result = predict(model, _cat(), 2, ImageLimits())
    assert model.ood is None
    assert result["ood"] is None
    assert len(result["predictions"]) == 2


def test_a_tampered_ood_npz_is_refused_by_its_sha256(files: dict[str, bytes]) -> None:
    # GIVEN ood.npz with one byte changed
    tampered = bytearray(files[artifact.OOD])
    tampered[len(tampered) // 2] ^= 0xFF
    # WHEN the files are verified THEN the sha256 in the manifest refuses them
    with pytest.raises(InvalidModel, match="ood.npz sha256"):
        artifact.verify_files({**files, artifact.OOD: bytes(tampered)})


def test_an_ood_npz_the_manifest_does_not_describe_is_refused(files: dict[str, bytes]) -> None:
    # GIVEN a manifest without its ood record beside an ood.npz
    manifest = json.loads(files[artifact.MANIFEST])
    del manifest["ood"]
    changed = {**files, artifact.MANIFEST: json.dumps(manifest).encode()}
    # THEN the files are refused
    with pytest.raises(InvalidModel, match="not described"):
        artifact.verify_files(changed)


def test_ood_npz_is_plain_arrays_that_round_trip_byte_for_byte(files: dict[str, bytes]) -> None:
    # GIVEN the bundled statistics
    stats = OodStats.from_bytes(files[artifact.OOD])
    # THEN they write the same bytes again, hold no pickles, and a garbage file is refused
    assert stats.to_bytes() == files[artifact.OOD]
    assert len(files[artifact.OOD]) < 64 * 1024
    with pytest.raises(InvalidModel):
        OodStats.from_bytes(b"PK\x03\x04 not a zip")
