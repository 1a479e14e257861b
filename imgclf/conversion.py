"""Keras -> TFLite conversion and the parity check that must pass before anything is written.

The TFLite model has a fixed batch dimension of 1 (a dynamic batch dimension was measured 4-5x
slower on the CPU; batches at serving time loop over images). The parity check runs the converted
model through ``imgclf.runtime.TFLiteModel``, the class that serves it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from imgclf.runtime import TFLiteModel

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
# Files a model directory (and a registry version) holds, besides the ones written here.
COPIED_FILES = ("model.keras", "labels.json", "metrics.json")


class ParityError(RuntimeError):
    """The converted model does not agree with the Keras model well enough to be used."""


@dataclass(frozen=True)
class ParityReport:
    """How the TFLite model compares with the Keras model on the same labelled images."""

    images: int
    agreement: float
    keras_accuracy: float
    tflite_accuracy: float
    max_abs_prob_diff: float
    invoke_ms_p50: float
    size_bytes: int

    def problems(
        self, quantization: str, min_agreement: float, max_accuracy_drop: float
    ) -> list[str]:
        """Returns why the model fails the gate (empty when it passes).

        Float models must agree with Keras on the top-1 class; int8 models may disagree on some
        images but must not lose more than ``max_accuracy_drop`` accuracy.
        """
        if quantization == "int8":
            drop = self.keras_accuracy - self.tflite_accuracy
            if drop > max_accuracy_drop:
                return [
                    f"int8 accuracy {self.tflite_accuracy:.4f} is {drop:.4f} below Keras "
                    f"{self.keras_accuracy:.4f} (allowed: {max_accuracy_drop:.4f})"
                ]
            return []
        if self.agreement < min_agreement:
            return [f"top-1 agreement {self.agreement:.4f} is below {min_agreement:.4f}"]
        return []


def to_tflite(model: keras.Model, quantization: str, representative: np.ndarray) -> bytes:
    """Converts a Keras classifier to a TFLite flatbuffer with input shape ``(1, H, W, 3)``.

    Args:
        model: the Keras model (float pixels 0..255 in, probabilities out).
        quantization: ``float32`` (none), ``float16`` (weights), ``dynamic`` (int8 weights, float
            activations) or ``int8`` (integers throughout, uint8 pixels in and probabilities out).
        representative: uint8 images ``(N, H, W, 3)`` for int8 calibration.

    Returns:
        The ``.tflite`` bytes.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")
    # A wrapper with a fixed batch of 1 gives the TFLite model a static input shape.
    pixels = keras.Input(batch_shape=(1, *model.input_shape[1:]), name="pixels")
    fixed = keras.Model(pixels, model(pixels, training=False))
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":

        def samples() -> Iterator[list[np.ndarray]]:
            for image in representative:
                yield [image[np.newaxis].astype(np.float32)]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with _quiet_export():
        return converter.convert()


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silences the SavedModel export that the converter runs (a page of prints per model)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def check_parity(
    model: keras.Model, tflite_content: bytes, x: np.ndarray, y: np.ndarray
) -> ParityReport:
    """Runs both models on the same images and compares their answers.

    Args:
        model: the Keras model.
        tflite_content: the converted model.
        x: uint8 images ``(N, H, W, 3)``.
        y: their true class indices.

    Returns:
        The agreement, both accuracies, the largest probability difference, the median invoke time.
    """
    keras_probs = model.predict(x.astype(np.float32), batch_size=64, verbose=0)
    lite = TFLiteModel(tflite_content, num_threads=1)
    lite.predict(x[0])  # the first invoke pays a one-off cost; keep it out of the timing
    lite_probs = np.empty_like(keras_probs)
    times = np.empty(len(x))
    for i, image in enumerate(x):
        start = time.perf_counter()
        lite_probs[i] = lite.predict(image)
        times[i] = time.perf_counter() - start
    keras_top, lite_top = keras_probs.argmax(axis=1), lite_probs.argmax(axis=1)
    return ParityReport(
        images=len(x),
        agreement=float(np.mean(keras_top == lite_top)),
        keras_accuracy=float(np.mean(keras_top == y)),
        tflite_accuracy=float(np.mean(lite_top == y)),
        max_abs_prob_diff=float(np.abs(keras_probs - lite_probs).max()),
        invoke_ms_p50=float(np.median(times) * 1000),
        size_bytes=len(tflite_content),
    )


def sha256_file(path: Path) -> str:
    """Returns the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model_dir(
    model_dir: Path,
    out: Path,
    tflite_content: bytes,
    quantization: str,
    report: ParityReport,
    name: str,
) -> dict[str, Any]:
    """Writes ``model.tflite`` and ``manifest.json`` into ``out`` and copies the Keras artifacts.

    The TFLite file is written last-but-one and the manifest last, each through a temporary name,
    so a reader never sees a manifest that does not describe the file next to it.

    Returns:
        The manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != model_dir.resolve():
        for filename in COPIED_FILES:
            shutil.copyfile(model_dir / filename, out / filename)
    labels = json.loads((model_dir / "labels.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    lite = TFLiteModel(tflite_content)
    manifest = {
        "name": name,
        "format": "tflite",
        "sha256": hashlib.sha256(tflite_content).hexdigest(),
        "size_bytes": len(tflite_content),
        "quantization": quantization,
        "input": lite.input.as_dict(),
        "output": lite.output.as_dict(),
        "classes": labels,
        "metrics": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]},
        "parity": asdict(report),
        "source": {"keras_sha256": sha256_file(model_dir / "model.keras")},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": metrics.get("versions", {}),
    }
    for filename, content in (
        ("model.tflite", tflite_content),
        ("manifest.json", (json.dumps(manifest, indent=2) + "\n").encode()),
    ):
        tmp = out / f".{filename}.tmp"
        tmp.write_bytes(content)
        tmp.replace(out / filename)
    return manifest
