"""Keras -> TFLite conversion and the parity check that must pass before anything is written.

The TFLite model has a fixed batch dimension of 1 (a dynamic batch dimension was measured 4-5x
slower on the CPU; batches at serving time loop over images). The parity check runs the converted
model through ``imgclf.runtime.TFLiteModel``, the class that serves it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgclf import artifact
from imgclf.artifact import Manifest
from imgclf.pipeline import ExitCode
from imgclf.pipeline.data import DatasetError, find_splits, load_split
from imgclf.runtime import TFLiteModel
from imgclf.settings import ServeSettings

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
# Files a model directory (and a registry version) holds, besides the ones written here.
COPIED_FILES = (artifact.KERAS, artifact.LABELS, artifact.METRICS)


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
) -> Manifest:
    """Writes ``model.tflite`` and ``manifest.json`` into ``out`` and copies the Keras artifacts.

    Returns:
        The manifest.
    """
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != model_dir.resolve():
        for filename in COPIED_FILES:
            shutil.copyfile(model_dir / filename, out / filename)
    labels = json.loads((model_dir / artifact.LABELS).read_text())
    metrics = json.loads((model_dir / artifact.METRICS).read_text())
    lite = TFLiteModel(tflite_content)
    manifest = Manifest(
        name=name,
        sha256=hashlib.sha256(tflite_content).hexdigest(),
        size_bytes=len(tflite_content),
        quantization=quantization,
        input=lite.input.as_dict(),
        output=lite.output.as_dict(),
        classes=tuple(labels),
        metrics={"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]},
        parity=asdict(report),
        source={"keras_sha256": sha256_file(model_dir / artifact.KERAS)},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        versions=metrics.get("versions", {}),
    )
    artifact.write_model(out, tflite_content, manifest)
    return manifest


CLI_HELP = """Converts a Keras model to TFLite and proves it still agrees with Keras before writing.

Examples:
    python convert.py --model-dir runs/train --data data/sample                  # float16
    python convert.py --model-dir runs/train --data data/sample --quantization int8 --out model

MODEL_DIR holds model.keras, labels.json and metrics.json (what train.py writes). The parity check
runs both models on the test split of --data; the conversion is refused (exit code 3, nothing
written) when float models agree on fewer than --min-agreement of the top-1 answers, or when
int8 loses more than --max-accuracy-drop accuracy, unless --force.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="convert.py",
        description=CLI_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", type=Path, required=True, help="folder with model.keras etc.")
    p.add_argument("--data", type=Path, required=True, help="dataset root (seg_train/, seg_test/)")
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="float16",
        help="float32 | float16 (half the size) | dynamic (int8 weights) | int8 (full)",
    )
    p.add_argument("--out", type=Path, help="where to write (default: --model-dir)")
    p.add_argument("--name", default=ServeSettings().model_name, help="model name in the manifest")
    p.add_argument(
        "--representative", type=int, default=200, help="training images used to calibrate int8"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="least top-1 agreement with Keras for float32/float16/dynamic",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="most test accuracy int8 may lose against Keras",
    )
    p.add_argument("--force", action="store_true", help="write even when the parity check fails")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``convert.py`` / ``python -m imgclf.pipeline.conversion``: returns the exit code."""
    args = parse_args(argv)
    out = args.out or args.model_dir
    model = keras.models.load_model(args.model_dir / artifact.KERAS)
    classes = json.loads((args.model_dir / artifact.LABELS).read_text())
    size = model.input_shape[1:3]
    try:
        train_dir, test_dir = find_splits(args.data)
        test = load_split(test_dir, *size, classes=classes)
        train = load_split(train_dir, *size, classes=classes)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train.x), size=min(args.representative, len(train.x)), replace=False)
    content = to_tflite(model, args.quantization, train.x[pick])
    report = check_parity(model, content, test.x, test.y)
    print(
        f"parity on {report.images} test images: top-1 agreement {report.agreement:.4f}, "
        f"accuracy keras {report.keras_accuracy:.4f} tflite {report.tflite_accuracy:.4f}, "
        f"max |p diff| {report.max_abs_prob_diff:.4f}, size {report.size_bytes / 1024:.0f} KiB, "
        f"invoke p50 {report.invoke_ms_p50:.2f} ms"
    )
    problems = report.problems(args.quantization, args.min_agreement, args.max_accuracy_drop)
    if problems and not args.force:
        print(
            f"refused ({args.quantization}): {'; '.join(problems)}; nothing written "
            "(use --force to write anyway)",
            file=sys.stderr,
        )
        return ExitCode.PARITY_FAILED
    for problem in problems:
        print(f"warning (--force): {problem}", file=sys.stderr)
    write_model_dir(args.model_dir, out, content, args.quantization, report, args.name)
    print(f"wrote {out / artifact.MODEL} and {out / artifact.MANIFEST}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
