"""imgclf.runtime.TFLiteModel.predict_batch and the batch branch of serving's ``answer``.

A batch is classified either one invoke per image or in one invoke of an interpreter resized to the
batch; both must give what ``predict`` gives on each image. Which one serving uses is
``BATCH_INVOKE_SIZES`` (measured by ``make bench``); the answer must not depend on it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT
from imgclf import artifact
from imgclf.runtime import BATCH_INVOKE_SIZES, TFLiteModel
from imgclf.serving.predict import ImageSource, PredictRequest, answer
from imgclf.settings import ImageLimits

BUNDLED = ROOT / "model" / "scene"


@pytest.fixture(scope="module")
def content() -> bytes:
    return (BUNDLED / artifact.MODEL).read_bytes()


def _pixels(model: TFLiteModel, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, model.height, model.width, 3), dtype=np.uint8)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_a_batch_gives_each_images_own_prediction_both_ways(content: bytes, n: int) -> None:
    # GIVEN the bundled model and n images
    model = TFLiteModel(content)
    pixels = _pixels(model, n)
    one_by_one = np.stack([model.predict(image) for image in pixels])
    # WHEN the batch is classified in one invoke and in one invoke per image
    batched = model.predict_batch(pixels, batch_invoke=True)
    looped = model.predict_batch(pixels, batch_invoke=False)
    # THEN both are the per-image probabilities, row for row
    assert batched.shape == looped.shape == (n, model.num_classes)
    assert batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    np.testing.assert_array_equal(looped, one_by_one)


def test_the_batch_interpreter_is_built_once_per_size_and_kept(content: bytes) -> None:
    model = TFLiteModel(content)
    first = model.predict_batch(_pixels(model, 4, seed=1), batch_invoke=True)
    again = model.predict_batch(_pixels(model, 4, seed=1), batch_invoke=True)
    np.testing.assert_array_equal(first, again)
    # AND the interpreter that runs batches of 1 is untouched by the resized ones
    image = _pixels(model, 1, seed=2)
    np.testing.assert_allclose(
        model.predict_batch(image, batch_invoke=True)[0], model.predict(image[0]), atol=0
    )
    assert sorted(model._batch_interpreters) == [4]


def test_features_come_with_the_batch_both_ways(content: bytes) -> None:
    model = TFLiteModel(content)
    pixels = _pixels(model, 3, seed=3)
    probs, features = model.classify_batch(pixels, batch_invoke=True)
    looped_probs, looped_features = model.classify_batch(pixels, batch_invoke=False)
    np.testing.assert_allclose(probs, looped_probs, atol=1e-6)
    if model.features is None:
        assert features is None and looped_features is None
    else:
        assert features is not None and looped_features is not None
        assert features.shape == (3, model.features.shape[-1])
        np.testing.assert_allclose(features, looped_features, atol=1e-4)


def test_serving_follows_the_measured_rule(content: bytes) -> None:
    # GIVEN a model loaded as serving loads it: batch invokes only for BATCH_INVOKE_SIZES
    model = TFLiteModel(content)
    assert model.batch_invoke_sizes == BATCH_INVOKE_SIZES
    model.predict_batch(_pixels(model, 8))
    # THEN a size outside the rule builds no batch interpreter (no memory, no build time spent)
    assert sorted(model._batch_interpreters) == sorted(BATCH_INVOKE_SIZES & {8})
    # AND an empty batch is an empty answer
    assert model.predict_batch(_pixels(model, 0)).shape == (0, model.num_classes)


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _no_fetch(url: str) -> bytes:
    raise AssertionError(f"nothing is downloaded here ({url})")


@pytest.mark.parametrize("sizes", [frozenset({3}), frozenset({2, 3, 4})])
def test_answer_is_the_same_whether_the_batch_runs_as_one_invoke_or_a_loop(
    sizes: frozenset[int],
) -> None:
    # GIVEN the bundled model as serving loads it, and a batch with an undecodable item
    model = artifact.load(artifact.read_dir(BUNDLED))
    images = [_jpeg(1), b"not an image", _jpeg(2), _jpeg(3)]
    request = PredictRequest(tuple(ImageSource("bytes", i) for i in images), True, 3, None)
    limits = ImageLimits()
    # WHEN it is answered with one invoke per image, then with batch invokes for some sizes
    looped = answer(request, model, _no_fetch, 3, limits)
    model.interpreter.batch_invoke_sizes = sizes
    try:
        batched = answer(request, model, _no_fetch, 3, limits)
    finally:
        model.interpreter.batch_invoke_sizes = BATCH_INVOKE_SIZES
    # THEN every item has the same answer (or the same error) at the same place
    assert len(batched["results"]) == len(looped["results"]) == len(images)
    for ours, theirs in zip(batched["results"], looped["results"], strict=True):
        if "predictions" in theirs:
            assert [p["label"] for p in ours["predictions"]] == [
                p["label"] for p in theirs["predictions"]
            ]
            for a, b in zip(ours["predictions"], theirs["predictions"], strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert set(ours["timing_ms"]) == {"decode", "inference"}
            assert (ours["ood"] is None) == (theirs["ood"] is None)
            if theirs["ood"] is not None:
                assert ours["ood"]["unusual"] == theirs["ood"]["unusual"]
                assert ours["ood"]["score"] == pytest.approx(theirs["ood"]["score"], abs=0.02)
        else:
            assert ours == theirs and ours["status"] == 422
    # AND the three good images ran as one invoke where the rule lists 3
    assert 3 in model.interpreter._batch_interpreters
