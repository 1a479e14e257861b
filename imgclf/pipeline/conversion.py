"""Keras -> TFLite conversion behind one parity gate, which also picks the quantisation.

The TFLite model has a fixed batch dimension of 1 (a dynamic batch dimension was measured 4-5x
slower on the CPU; batches at serving time loop over images). The gate runs the converted model
through ``imgclf.runtime.TFLiteModel``, the class that serves it, on images the calibration did not
see, and compares it with the Keras model (``Gate``):

- float32, float16, dynamic: the top-1 class agrees with Keras on at least 99% of the images;
- int8 on a labelled test split: at most 1 point of accuracy lost, and the top-1 agrees with Keras
  on at least 98% of the images;
- int8 without labels (the pretrained ImageNet classifier): the top-1 agrees with the float model's
  on at least 95% of the images, and the float top-1 is in the int8 top-5 on at least 99%.

``auto`` (the default) writes int8 when the gate holds and float16 otherwise; the manifest records
which, why (``quantization_reason``) and every figure the gate looked at (``gate``).

The TFLite model also outputs the penultimate features, and ``main`` fits the out-of-distribution
statistics (``ood.npz``, ``imgclf.pipeline.ood``) on the training split's features and calibrates
them on the test split's.
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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from imgclf import artifact
from imgclf.artifact import Manifest, OodStats
from imgclf.pipeline import ExitCode
from imgclf.pipeline.data import DatasetError, find_splits, load_split
from imgclf.pipeline.ood import fit_from_model
from imgclf.preprocess import SQUASH, Framing
from imgclf.runtime import TFLiteModel
from imgclf.settings import ServeSettings

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
AUTO = "auto"
# What ``auto`` tries, in order; the first one the gate lets through is written.
AUTO_ORDER = ("int8", "float16")
# Files a model directory (and a registry version) holds, besides the ones written here.
COPIED_FILES = (artifact.KERAS, artifact.LABELS, artifact.METRICS)
# Figures are rounded in manifests: the last bits of a float sum are not worth a changed file.
DIGITS = 6


@dataclass(frozen=True)
class ParityReport:
    """How the TFLite model compares with the Keras model on the same images.

    ``keras_accuracy`` and ``tflite_accuracy`` are None when the images have no labels.
    """

    images: int
    # Share of images whose TFLite top-1 class is the Keras top-1 class.
    agreement: float
    # Share of images whose Keras top-1 class is among the TFLite top-5 (as serving ranks them).
    top1_in_top5: float
    keras_accuracy: float | None
    tflite_accuracy: float | None
    max_abs_prob_diff: float
    invoke_ms_p50: float
    size_bytes: int

    @property
    def labelled(self) -> bool:
        return self.keras_accuracy is not None

    def figures(self, *, timing: bool = True) -> dict[str, Any]:
        """The figures as a manifest records them: rounded, without the accuracies when there are
        no labels, and without the invoke time unless ``timing``."""
        return {
            k: round(v, DIGITS) if isinstance(v, float) else v
            for k, v in asdict(self).items()
            if v is not None and (timing or k != "invoke_ms_p50")
        }


@dataclass(frozen=True)
class Check:
    """One figure the gate compares with its limit."""

    figure: str
    value: float
    limit: float
    # True: the value may not exceed the limit; False: it may not fall below it.
    at_most: bool = False

    @property
    def passed(self) -> bool:
        # A tolerance, so that 0.99 - 0.98 is not "more than 0.01".
        if self.at_most:
            return self.value <= self.limit + 1e-9
        return self.value >= self.limit - 1e-9

    def __str__(self) -> str:
        relations = ("<=", ">") if self.at_most else (">=", "<")
        relation = relations[0] if self.passed else relations[1]
        return f"{self.figure} {self.value:.4f} {relation} {self.limit:g}"


@dataclass(frozen=True)
class Gate:
    """The parity gate's limits; ``checks`` says which apply to a converted model."""

    # float32 / float16 / dynamic: least top-1 agreement with Keras.
    min_agreement: float = 0.99
    # int8 on a labelled test split: most accuracy lost, least top-1 agreement with Keras.
    max_accuracy_drop: float = 0.01
    min_int8_agreement: float = 0.98
    # int8 without labels: least top-1 agreement with the float model, and least share of images
    # whose float top-1 stays in the int8 top-5 (what a client asking for top_k=5 sees).
    min_int8_agreement_unlabelled: float = 0.95
    min_int8_top1_in_top5: float = 0.99

    def checks(self, report: ParityReport, quantization: str) -> list[Check]:
        """The gate's checks of one converted model.

        Args:
            report: the model's parity figures.
            quantization: how it was converted (int8 is held to its own limits).

        Returns:
            Every check, passed or not.
        """
        if quantization != "int8":
            return [Check("top-1 agreement", report.agreement, self.min_agreement)]
        if report.keras_accuracy is not None and report.tflite_accuracy is not None:
            drop = report.keras_accuracy - report.tflite_accuracy
            return [
                Check("accuracy drop", drop, self.max_accuracy_drop, at_most=True),
                Check("top-1 agreement", report.agreement, self.min_int8_agreement),
            ]
        return [
            Check("top-1 agreement", report.agreement, self.min_int8_agreement_unlabelled),
            Check("float top-1 in int8 top-5", report.top1_in_top5, self.min_int8_top1_in_top5),
        ]


@dataclass(frozen=True)
class Candidate:
    """One converted model and what the gate made of it."""

    quantization: str
    content: bytes
    report: ParityReport
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def verdict(self) -> str:
        """``int8 held the gate (...)`` or ``int8 failed the gate (...)``, failed checks first."""
        ordered = sorted(self.checks, key=lambda check: check.passed)
        held = "held" if self.passed else "failed"
        return f"{self.quantization} {held} the gate ({', '.join(map(str, ordered))})"


@dataclass(frozen=True)
class Conversion:
    """The candidates converted for one request, in the order tried, and the one to write."""

    requested: str
    candidates: tuple[Candidate, ...]
    force: bool = False

    @property
    def passed(self) -> bool:
        return any(candidate.passed for candidate in self.candidates)

    @property
    def chosen(self) -> Candidate | None:
        """The first candidate that held the gate; with ``force``, else the last one tried."""
        for candidate in self.candidates:
            if candidate.passed:
                return candidate
        return self.candidates[-1] if self.force and self.candidates else None

    @property
    def reason(self) -> str:
        """Why the chosen quantisation (or why nothing), in a sentence for the manifest."""
        verdicts = "; ".join(candidate.verdict() for candidate in self.candidates)
        chosen = self.chosen
        if chosen is None:
            return f"{self.requested} requested: {verdicts}"
        if self.requested == AUTO and chosen is not self.candidates[0]:
            how = f"auto fell back to {chosen.quantization}"
        elif self.requested == AUTO:
            how = f"auto chose {chosen.quantization}"
        else:
            how = f"{chosen.quantization} requested"
        forced = "" if chosen.passed else ", written anyway (--force)"
        return f"{how}{forced}: {verdicts}"

    def record(self, gate: Gate, *, timing: bool = True) -> dict[str, Any]:
        """The gate's limits and figures, as the manifest's ``gate`` holds them."""
        first = self.candidates[0].report
        return {
            "requested": self.requested,
            "images": first.images,
            "labelled": first.labelled,
            "limits": asdict(gate),
            "candidates": {
                c.quantization: {
                    "passed": c.passed,
                    "checks": [str(check) for check in c.checks],
                    **c.report.figures(timing=timing),
                }
                for c in self.candidates
            },
        }


def to_tflite(model: keras.Model, quantization: str, representative: np.ndarray) -> bytes:
    """Converts a Keras classifier to a TFLite flatbuffer with input shape ``(1, H, W, 3)``.

    Args:
        model: the Keras model (float pixels 0..255 in, probabilities out).
        quantization: ``float32`` (none), ``float16`` (weights), ``dynamic`` (int8 weights, float
            activations) or ``int8`` (integers throughout, uint8 pixels in and probabilities out).
        representative: uint8 images ``(N, H, W, 3)`` for int8 calibration.

    Returns:
        The ``.tflite`` bytes: the probabilities first, then (when the model ends in a Dense layer)
        the penultimate features, the input of that layer, which out-of-distribution scores use.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")
    # A wrapper with a fixed batch of 1 gives the TFLite model a static input shape. Its name is
    # fixed too: the flatbuffer's tensor names carry it, and Keras would number an unnamed model
    # by how many came before it in the process (the same model would convert to other bytes).
    pixels = keras.Input(batch_shape=(1, *model.input_shape[1:]), name="pixels")
    fixed = keras.Model(pixels, _outputs(model, pixels), name="tflite")
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":

        def samples() -> Iterator[list[np.ndarray]]:
            # The first sample spans 0..255 in one pixel each, so that the input's calibrated
            # range is exactly that: uint8 pixels then go in unchanged (scale 1, zero point 0),
            # which is how imgclf.runtime feeds int8 models.
            for i, image in enumerate(representative):
                sample = image[np.newaxis].astype(np.float32)
                if i == 0:
                    sample[0, 0, 0, 0], sample[0, 0, 1, 0] = 0.0, 255.0
                yield [sample]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    with _quiet_export():
        return converter.convert()


def features_layer(model: keras.Model) -> keras.layers.Layer | None:
    """The model's last Dense layer (the classifier), whose input is the penultimate features."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense):
            return layer
    return None


def _outputs(model: keras.Model, pixels: Any) -> Any:
    """The probabilities of ``model`` on ``pixels``, and its penultimate features when it has a
    final Dense layer (a second output: ``imgclf.runtime.TFLiteModel`` tells them by order)."""
    layer = features_layer(model)
    if layer is None:
        return model(pixels, training=False)
    both = keras.Model(model.inputs, [model.outputs[0], layer.input])
    probabilities, features = both(pixels, training=False)
    return [
        keras.layers.Identity(name="probabilities")(probabilities),
        keras.layers.Identity(name="features")(features),
    ]


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
    model: keras.Model, tflite_content: bytes, x: np.ndarray, y: np.ndarray | None = None
) -> ParityReport:
    """Runs both models on the same images and compares their answers.

    Args:
        model: the Keras model.
        tflite_content: the converted model.
        x: uint8 images ``(N, H, W, 3)``.
        y: their true class indices, or None for unlabelled images.

    Returns:
        The agreement, both accuracies (None without labels), the largest probability difference,
        the median invoke time.
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
    keras_top = keras_probs.argmax(axis=1)
    # Ranked as serving ranks them (a stable sort: among equal scores, the lower index first),
    # since quantised outputs tie.
    lite_rank = np.argsort(-lite_probs, axis=1, kind="stable")
    lite_top = lite_rank[:, 0]
    in_top5 = (lite_rank[:, :5] == keras_top[:, np.newaxis]).any(axis=1)
    return ParityReport(
        images=len(x),
        agreement=float(np.mean(keras_top == lite_top)),
        top1_in_top5=float(np.mean(in_top5)),
        keras_accuracy=None if y is None else float(np.mean(keras_top == y)),
        tflite_accuracy=None if y is None else float(np.mean(lite_top == y)),
        max_abs_prob_diff=float(np.abs(keras_probs - lite_probs).max()),
        invoke_ms_p50=float(np.median(times) * 1000),
        size_bytes=len(tflite_content),
    )


def convert_gated(
    model: keras.Model,
    requested: str,
    calibration: np.ndarray,
    x: np.ndarray,
    y: np.ndarray | None = None,
    gate: Gate | None = None,
    *,
    force: bool = False,
    log: bool = True,
) -> Conversion:
    """Converts a model and puts it through the gate; ``auto`` tries int8, then float16.

    Args:
        model: the Keras model.
        requested: one of ``QUANTIZATIONS`` or ``auto``.
        calibration: uint8 images for int8 calibration, none of them in ``x``.
        x: the uint8 images the gate scores.
        y: their labels, or None (then int8 is held to the unlabelled limits).
        gate: the limits (default: ``Gate()``).
        force: a model that fails the gate is still chosen (the last one tried).
        log: print one line per candidate.

    Returns:
        Every candidate with its figures, and the chosen one (None when none held the gate).
    """
    gate = gate or Gate()
    order = AUTO_ORDER if requested == AUTO else (requested,)
    candidates: list[Candidate] = []
    for quantization in order:
        content = to_tflite(model, quantization, calibration)
        report = check_parity(model, content, x, y)
        candidate = Candidate(
            quantization, content, report, tuple(gate.checks(report, quantization))
        )
        candidates.append(candidate)
        if log:
            print(describe(candidate))
        if candidate.passed:
            break
    return Conversion(requested, tuple(candidates), force)


def describe(candidate: Candidate) -> str:
    """One line of figures about a candidate, for the console."""
    r = candidate.report
    accuracy = (
        f"accuracy keras {r.keras_accuracy:.4f} tflite {r.tflite_accuracy:.4f}, "
        if r.keras_accuracy is not None and r.tflite_accuracy is not None
        else ""
    )
    return (
        f"{candidate.quantization} on {r.images} images: top-1 agreement {r.agreement:.4f}, "
        f"keras top-1 in top-5 {r.top1_in_top5:.4f}, {accuracy}"
        f"max |p diff| {r.max_abs_prob_diff:.4f}, size {r.size_bytes / 1024:.0f} KiB, "
        f"invoke p50 {r.invoke_ms_p50:.2f} ms: {'held' if candidate.passed else 'failed'}"
    )


def sha256_file(path: Path) -> str:
    """Returns the hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_framing(metrics: dict[str, Any]) -> Framing:
    """The framing a model was trained with, as its ``metrics.json`` records it.

    Raises:
        ValueError: a framing this code does not know.
    """
    # Models trained before framings were recorded squashed their images.
    return Framing.parse(str(metrics.get("framing") or SQUASH.name))


def make_manifest(
    content: bytes,
    conversion: Conversion,
    gate: Gate,
    *,
    name: str,
    classes: Sequence[str],
    framing: Framing,
    metrics: dict[str, Any],
    source: dict[str, Any],
    versions: dict[str, Any],
    created_at: str,
    timing: bool = True,
    ood: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest of a converted model: its tensors, classes, framing and the gate's decision.

    Args:
        content: the written ``.tflite`` bytes (``conversion.chosen.content``).
        conversion: the gate's candidates.
        gate: its limits.
        name: the model's name.
        classes: the class names, in output order.
        framing: how its input images are framed.
        metrics: the evaluation to show (accuracy, macro F1), empty without labels.
        source: where the model came from.
        versions: package versions.
        created_at: ISO time, or empty.
        timing: record invoke times (they differ between runs).
        ood: the record of ``ood.npz`` (``imgclf.pipeline.ood.record``), or None.

    Returns:
        The manifest.

    Raises:
        ValueError: no candidate was chosen.
    """
    chosen = conversion.chosen
    if chosen is None:
        raise ValueError("no converted model held the gate")
    lite = TFLiteModel(content)
    return Manifest(
        name=name,
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        quantization=chosen.quantization,
        quantization_reason=conversion.reason,
        input=lite.input.as_dict(),
        output=lite.output.as_dict(),
        features=lite.features.as_dict() if lite.features is not None else {},
        ood=ood or {},
        classes=tuple(classes),
        metrics=metrics,
        parity=chosen.report.figures(timing=timing),
        gate=conversion.record(gate, timing=timing),
        source=source,
        created_at=created_at,
        versions=versions,
        framing=framing.name,
    )


def write_model_dir(
    model_dir: Path,
    out: Path,
    conversion: Conversion,
    gate: Gate,
    name: str,
    ood: tuple[OodStats, dict[str, Any]] | None = None,
    trained_on: str = "",
) -> Manifest:
    """Writes ``model.tflite``, ``ood.npz`` (when given) and ``manifest.json`` into ``out`` and
    copies the Keras artifacts.

    The framing comes from ``metrics.json`` (``framing``; ``squash_bilinear`` when absent), and so
    does any ``source`` it records, to which the Keras file's sha256 is added, and ``trained_on``
    (what the model knows, shown by ``GET /models``) unless the source already says.

    Returns:
        The manifest.
    """
    chosen = conversion.chosen
    if chosen is None:
        raise ValueError("no converted model held the gate")
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != model_dir.resolve():
        for filename in COPIED_FILES:
            shutil.copyfile(model_dir / filename, out / filename)
    metrics = json.loads((model_dir / artifact.METRICS).read_text())
    evaluation = {k: metrics[k] for k in ("accuracy", "macro_f1") if k in metrics}
    manifest = make_manifest(
        chosen.content,
        conversion,
        gate,
        name=name,
        classes=json.loads((model_dir / artifact.LABELS).read_text()),
        framing=model_framing(metrics),
        metrics=evaluation,
        source={
            **({"trained_on": trained_on} if trained_on else {}),
            **metrics.get("source", {}),
            "keras_sha256": sha256_file(model_dir / artifact.KERAS),
        },
        versions=metrics.get("versions", {}),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ood=ood[1] if ood else None,
    )
    artifact.write_model(out, chosen.content, manifest, ood[0].to_bytes() if ood else None)
    return manifest


CLI_HELP = """Converts a Keras model to TFLite and proves it still agrees with Keras before writing.

Examples:
    python convert.py --model-dir runs/train --data data/sample             # auto: int8 or float16
    python convert.py --model-dir runs/train --data data/sample --quantization float16 --out model

MODEL_DIR holds model.keras, labels.json and metrics.json (what train.py writes; metrics.json's
"framing" says how images are framed, squash_bilinear when absent). The gate runs both models on
the test split of --data, after calibrating int8 on training images:
  float32, float16, dynamic  top-1 agreement with Keras >= --min-agreement (0.99)
  int8                       accuracy drop <= --max-accuracy-drop (0.01) and
                             top-1 agreement >= --min-int8-agreement (0.98)
--quantization auto (the default) writes int8 when it holds and float16 otherwise; the manifest
says which and why (quantization_reason, gate). When the quantisation asked for (or, with auto,
float16 as well) fails, nothing is written and the exit code is 3, unless --force.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="convert.py",
        description=CLI_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Gate()
    p.add_argument("--model-dir", type=Path, required=True, help="folder with model.keras etc.")
    p.add_argument("--data", type=Path, required=True, help="dataset root (seg_train/, seg_test/)")
    p.add_argument(
        "--quantization",
        choices=(AUTO, *QUANTIZATIONS),
        default=AUTO,
        help="auto (int8 if the gate holds, else float16) | float32 | float16 (half the size) | "
        "dynamic (int8 weights) | int8 (full)",
    )
    p.add_argument("--out", type=Path, help="where to write (default: --model-dir)")
    p.add_argument("--name", default=ServeSettings().model_name, help="model name in the manifest")
    p.add_argument(
        "--representative", type=int, default=200, help="training images used to calibrate int8"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=defaults.min_agreement,
        help="least top-1 agreement with Keras for float32/float16/dynamic",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=defaults.max_accuracy_drop,
        help="most test accuracy int8 may lose against Keras",
    )
    p.add_argument(
        "--min-int8-agreement",
        type=float,
        default=defaults.min_int8_agreement,
        help="least top-1 agreement with Keras for int8",
    )
    p.add_argument("--force", action="store_true", help="write even when the parity check fails")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``convert.py`` / ``python -m imgclf.pipeline.conversion``: returns the exit code."""
    args = parse_args(argv)
    out = args.out or args.model_dir
    model = keras.models.load_model(args.model_dir / artifact.KERAS)
    classes = json.loads((args.model_dir / artifact.LABELS).read_text())
    height, width = model.input_shape[1:3]
    try:
        framing = model_framing(json.loads((args.model_dir / artifact.METRICS).read_text()))
        train_dir, test_dir = find_splits(args.data)
        test = load_split(test_dir, height, width, classes=classes, framing=framing)
        train = load_split(train_dir, height, width, classes=classes, framing=framing)
    except (DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train.x), size=min(args.representative, len(train.x)), replace=False)
    calibration = train.x[pick]
    gate = Gate(
        min_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop,
        min_int8_agreement=args.min_int8_agreement,
    )
    conversion = convert_gated(
        model, args.quantization, calibration, test.x, test.y, gate, force=args.force
    )
    if not conversion.passed and not args.force:
        print(
            f"refused: {conversion.reason}; nothing written (--force writes anyway)",
            file=sys.stderr,
        )
        return ExitCode.PARITY_FAILED
    if not conversion.passed:
        print(f"warning (--force): {conversion.reason}", file=sys.stderr)
    chosen = conversion.chosen
    assert chosen is not None
    ood = None
    if TFLiteModel(chosen.content).features is not None:
        ood = fit_from_model(
            chosen.content,
            train.x,
            train.y,
            test.x,
            fitted_on=f"{len(train.x)} training images of {args.data.name}",
            calibrated_on=f"{len(test.x)} test images of {args.data.name}",
        )
        print(f"ood: {ood[1]['size_bytes']} B, calibrated on {ood[1]['calibrated_on']}")
    trained_on = (
        f"the training split of {args.data.name}: {len(train.x)} images of {len(classes)} "
        f"classes ({', '.join(classes)})"
    )
    manifest = write_model_dir(args.model_dir, out, conversion, gate, args.name, ood, trained_on)
    print(manifest.quantization_reason)
    print(f"wrote {out / artifact.MODEL} ({manifest.quantization}) and {out / artifact.MANIFEST}")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
