"""OOD statistics at conversion: the features output, the fit, and old one-output models.

Real Keras and LiteRT: a small Keras classifier is converted both the old way (one output) and the
way ``imgclf.pipeline.conversion`` converts now (probabilities, then penultimate features).
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import encode, scene_image
from imgclf import artifact
from imgclf.artifact import Manifest
from imgclf.pipeline import ood
from imgclf.pipeline.conversion import to_tflite
from imgclf.runtime import TFLiteModel
from imgclf.serving.predict import predict
from imgclf.settings import ImageLimits

SIZE = 32
CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu", name="penultimate")(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _write(tmp_path, content: bytes, stats=None):  # type: ignore[no-untyped-def]
    lite = TFLiteModel(content)
    record = ood.record(stats, fitted_on="x", calibrated_on="y") if stats else {}
    manifest = Manifest(
        name="tiny",
        sha256=hashlib.sha256(content).hexdigest(),
        classes=CLASSES,
        input=lite.input.as_dict(),
        output=lite.output.as_dict(),
        ood=record,
    )
    (tmp_path / artifact.LABELS).write_text('["a", "b", "c"]')
    (tmp_path / artifact.METRICS).write_text("{}")
    artifact.write_model(tmp_path, content, manifest, stats.to_bytes() if stats else None)
    return artifact.load(artifact.read_dir(tmp_path))


def test_an_old_one_output_model_still_loads_and_serves_with_ood_null(
    classifier: keras.Model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a model converted the old way: one output, no ood.npz
    pixels = keras.Input(batch_shape=(1, SIZE, SIZE, 3))
    fixed = keras.Model(pixels, classifier(pixels))
    content = tf.lite.TFLiteConverter.from_keras_model(fixed).convert()
    assert TFLiteModel(content).features is None
    # WHEN it is loaded and asked to classify an image
    model = _write(tmp_path, content)
    result = predict(model, encode(scene_image("sea", size=(64, 64))), 3, ImageLimits())
    # THEN it answers as before, with "ood": null
    assert model.ood is None
    assert result["ood"] is None
    assert len(result["predictions"]) == 3


def test_conversion_exports_the_features_and_fits_stats_that_flag_far_inputs(
    classifier: keras.Model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # GIVEN the classifier converted with its penultimate features as a second output
    content = to_tflite(classifier, "float32", _pixels(4, 0))
    lite = TFLiteModel(content)
    assert lite.features is not None and lite.features.shape == (1, 16)
    x = _pixels(8, 1)
    probs, features = lite.classify(x[0])
    features_model = keras.Model(classifier.inputs, classifier.get_layer("probabilities").input)
    expected = features_model.predict(x[:1].astype(np.float32), verbose=0)[0]
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probs, lite.predict(x[0]))
    # WHEN statistics are fitted on noise of one brightness and a far input is dark and flat
    bright = np.clip(_pixels(60, 2) // 4 + 150, 0, 255).astype(np.uint8)
    stats, record = ood.fit_from_model(
        content, bright[:40], None, bright[40:], fitted_on="40", calibrated_on="20"
    )
    model = _write(tmp_path, content, stats)
    far = np.zeros((SIZE, SIZE, 3), np.uint8)
    # THEN the far input scores 1 and is unusual; the record describes ood.npz
    assert model.classify(far)[1] == {"score": 1.0, "unusual": True}
    assert record["sha256"] == hashlib.sha256((tmp_path / artifact.OOD).read_bytes()).hexdigest()
    assert record["calibration_images"] == 20
