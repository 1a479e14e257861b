"""A model version's files, its typed manifest, and the checks that load it: one home for all three.

A model directory (the bundled ``model/``, a training run's output, a registry version) holds::

    model.tflite    the served model (TFLite flatbuffer)
    model.keras     the Keras model it came from (warm starts need it; serving does not)
    labels.json     the class names, in output order
    metrics.json    the evaluation (train.py's, then the retrain job's)
    ood.npz         optional: the out-of-distribution statistics of the penultimate features
                    (``OodStats``; models converted before it, and their one-output model.tflite,
                    serve without an ``ood`` score)
    manifest.json   what the rest is: sha256, tensors, classes, quantisation, parity (``Manifest``)

``verify_files`` is the cheap check serving runs on every load; ``load`` adds loading, the tensor
spec and a warm-up and returns the ``LoadedModel`` that answers requests; ``verify_dir`` adds
predictions on real images and is what publishing runs, in a separate process
(``python -m imgclf.artifact verify DIR``), so that a model that crashes the interpreter cannot
take the publisher down. Stdlib, numpy and ``imgclf.runtime`` only: serving imports this.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.preprocess import IMAGE_SUFFIXES, SQUASH, Framing, load_image
from imgclf.runtime import TFLiteModel
from imgclf.settings import PROJECT_ROOT

MODEL = "model.tflite"
KERAS = "model.keras"
LABELS = "labels.json"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
# Every file of a version; the manifest last, since its presence is what makes a version exist.
MODEL_FILES = (MODEL, KERAS, LABELS, METRICS, MANIFEST)
OOD = "ood.npz"
# What a serving container needs.
SERVING_FILES = (MODEL, LABELS, MANIFEST, METRICS)
# Files a version may have, read and verified (sha256 in the manifest's ``ood``) when present.
OPTIONAL_FILES = (OOD,)
# ``ood.score`` above this marks an answer ``unusual``: further from the model's training data
# than 99% of its own held-out in-distribution images.
OOD_THRESHOLD = 0.99
# Bytes 4..8 of every TFLite flatbuffer (its file identifier).
TFLITE_IDENTIFIER = b"TFL3"
# 1: manifests written before the field existed (no schema_version); 2: this module's.
SCHEMA_VERSION = 2
BUNDLED_VERSION = "bundled"
# How many of the given images verify_dir predicts on.
CHECK_IMAGES = 12
VERIFY_TIMEOUT_SECONDS = 300.0


class InvalidModel(Exception):
    """The files are not a valid model (missing, hash, format, spec, classes or predictions)."""


# Manifest fields added since schema 2 (the parity gate's decision).
_OMITTED_WHEN_EMPTY = ("quantization_reason", "gate", "features", "ood")


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what a version's ``model.tflite`` is and where it came from."""

    name: str
    sha256: str
    classes: tuple[str, ...]
    quantization: str = ""
    size_bytes: int | None = None
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    # The Keras model's evaluation on its test split: accuracy, macro_f1 (empty without labels).
    metrics: dict[str, Any] = field(default_factory=dict)
    # The written model's figures against Keras (``imgclf.pipeline.conversion.ParityReport``).
    parity: dict[str, Any] = field(default_factory=dict)
    # Why this quantisation, in a sentence: the parity gate's verdict on each one it tried.
    quantization_reason: str = ""
    # The parity gate's limits and the figures of every quantisation it tried (older: empty).
    gate: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    # The penultimate features output of a two-output model.tflite (shape, dtype, quantisation).
    features: dict[str, Any] = field(default_factory=dict)
    # ``ood.npz``: its sha256 and size, and how it was fitted and calibrated (``OodStats``).
    ood: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # Package versions the model was trained and converted with.
    versions: dict[str, Any] = field(default_factory=dict)
    # How images are framed into the input (``imgclf.preprocess.Framing``); older models squashed.
    framing: str = SQUASH.name
    format: str = "tflite"
    schema_version: int = SCHEMA_VERSION
    # Keys this code does not know (a newer writer's), kept so that a rewrite loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Reads a manifest of any schema version.

        Raises:
            InvalidModel: not an object, or no sha256 / list of classes.
        """
        if not isinstance(data, dict):
            raise InvalidModel("manifest.json is not a JSON object")
        if not isinstance(data.get("classes"), list) or not data["classes"]:
            raise InvalidModel("manifest.json has no list of classes")
        if not isinstance(data.get("sha256"), str):
            raise InvalidModel("manifest.json has no sha256")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["classes"] = tuple(str(c) for c in data["classes"])
        values["schema_version"] = int(data.get("schema_version", 1))
        values["name"] = str(data.get("name") or "")
        try:
            Framing.parse(str(values.get("framing", SQUASH.name)))
        except ValueError as exc:
            raise InvalidModel(f"manifest.json: {exc}") from exc
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def from_json(cls, content: bytes | str) -> Manifest:
        """Parses ``manifest.json``.

        Raises:
            InvalidModel: not JSON, or not a manifest.
        """
        try:
            return cls.from_dict(json.loads(content))
        except ValueError as exc:
            raise InvalidModel(f"manifest.json is not valid JSON: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``manifest.json``."""
        data = dataclasses.asdict(self)
        extra = data.pop("extra")
        data["classes"] = list(self.classes)
        # Fields newer than some manifests are left out while empty: rewriting an older manifest
        # then adds nothing to it.
        for name in _OMITTED_WHEN_EMPTY:
            if not data[name]:
                del data[name]
        return {**extra, **data}

    def to_json(self) -> bytes:
        """The bytes of ``manifest.json``."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()


def _labels(files: dict[str, bytes]) -> Any:
    try:
        return json.loads(files[LABELS])
    except KeyError as exc:
        raise InvalidModel(f"{LABELS} is missing") from exc
    except ValueError as exc:
        raise InvalidModel(f"{LABELS} is not valid JSON: {exc}") from exc


def verify_files(files: dict[str, bytes]) -> Manifest:
    """Checks a version's files without loading the model (cheap; serving runs it on every load).

    Args:
        files: file name -> bytes; at least model.tflite, manifest.json and labels.json.

    Returns:
        The manifest.

    Raises:
        InvalidModel: a file is missing, the sha256 or size differs from the manifest, the file
            is not a TFLite flatbuffer, or labels / classes / output size disagree.
    """
    if MANIFEST not in files:
        raise InvalidModel(f"{MANIFEST} is missing")
    manifest = Manifest.from_json(files[MANIFEST])
    labels = _labels(files)
    model = files.get(MODEL)
    if model is None:
        raise InvalidModel(f"{MODEL} is missing")
    digest = hashlib.sha256(model).hexdigest()
    if digest != manifest.sha256:
        raise InvalidModel(f"{MODEL} sha256 {digest} != manifest {manifest.sha256}")
    if manifest.size_bytes is not None and manifest.size_bytes != len(model):
        raise InvalidModel(f"{MODEL} is {len(model)} bytes, manifest {manifest.size_bytes}")
    if model[4:8] != TFLITE_IDENTIFIER:
        raise InvalidModel(f"{MODEL} is not a TFLite flatbuffer")
    if labels != list(manifest.classes):
        raise InvalidModel(f"{LABELS} {labels} != manifest classes {list(manifest.classes)}")
    output_shape = manifest.output.get("shape")
    if output_shape and output_shape[-1] != len(labels):
        raise InvalidModel(f"output shape {output_shape} does not fit {len(labels)} classes")
    ood = files.get(OOD)
    if ood is not None:
        if not manifest.ood.get("sha256"):
            raise InvalidModel(f"{OOD} is not described by the manifest (no ood.sha256)")
        digest = hashlib.sha256(ood).hexdigest()
        if digest != manifest.ood["sha256"]:
            raise InvalidModel(f"{OOD} sha256 {digest} != manifest {manifest.ood['sha256']}")
    return manifest


@dataclass(frozen=True)
class OodStats:
    """How far an input's penultimate features are from the model's in-distribution data.

    Class-conditional Gaussians with one shared covariance (Mahalanobis, Lee et al. 2018) in a
    PCA-reduced feature space: ``distance`` is the smallest squared Mahalanobis distance to a class
    mean, and ``score`` its empirical CDF over held-out in-distribution images (``calibration``,
    sorted): 0.97 means 97% of those images were closer. ``imgclf.pipeline.ood`` fits them.
    """

    mean: np.ndarray  # (feature_dim,) the training features' mean
    components: np.ndarray  # (feature_dim, dims) the PCA projection
    class_means: np.ndarray  # (classes, dims) in the projected space
    whitening: np.ndarray  # (dims, dims) W with W @ W.T = the shared covariance's inverse
    calibration: np.ndarray  # (n,) sorted distances of held-out in-distribution images

    _KEYS = ("mean", "components", "class_means", "whitening", "calibration")

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[0])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The smallest squared Mahalanobis distance to a class mean, per row of ``(N, dim)``."""
        z = (np.asarray(features, np.float64) - self.mean) @ self.components
        diff = (z[:, np.newaxis, :] - self.class_means[np.newaxis]) @ self.whitening
        return np.min(np.sum(diff * diff, axis=-1), axis=1)

    def scores(self, distances: np.ndarray) -> np.ndarray:
        """The share of the calibration images no further than each distance (0..1)."""
        ranks = np.searchsorted(self.calibration, distances, side="right")
        return ranks / len(self.calibration)

    def assess(self, features: np.ndarray, threshold: float = OOD_THRESHOLD) -> dict[str, Any]:
        """The ``ood`` field of one answer: ``{"score", "unusual"}``."""
        score = float(self.scores(self.distances(features[np.newaxis]))[0])
        return {"score": round(score, 4), "unusual": score > threshold}

    def to_bytes(self) -> bytes:
        """``ood.npz``, byte for byte the same for the same arrays (fixed zip times)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for key in self._KEYS:
                array = io.BytesIO()
                np.lib.format.write_array(
                    array, np.ascontiguousarray(getattr(self, key), np.float32), allow_pickle=False
                )
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, array.getvalue())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, content: bytes) -> OodStats:
        """Reads ``ood.npz`` (no pickles).

        Raises:
            InvalidModel: not an npz of the expected arrays and shapes.
        """
        try:
            with np.load(io.BytesIO(content), allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k], np.float64) for k in cls._KEYS}
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            raise InvalidModel(f"{OOD} is not valid: {exc}") from exc
        d, k = arrays["components"].shape if arrays["components"].ndim == 2 else (0, 0)
        if (
            arrays["mean"].shape != (d,)
            or arrays["class_means"].ndim != 2
            or arrays["class_means"].shape[1] != k
            or arrays["whitening"].shape != (k, k)
            or arrays["calibration"].ndim != 1
            or not len(arrays["calibration"])
            or not all(np.all(np.isfinite(a)) for a in arrays.values())
        ):
            raise InvalidModel(f"{OOD} has arrays of unexpected shapes or non-finite values")
        arrays["calibration"] = np.sort(arrays["calibration"])
        return cls(**arrays)


def check_spec(model: TFLiteModel, manifest: Manifest) -> None:
    """Checks that a loaded model's tensors and class count are the ones its manifest declares.

    Raises:
        InvalidModel: input shape / dtype, output shape or number of classes differ.
    """
    for name, spec, declared in (
        ("input", model.input, manifest.input),
        ("output", model.output, manifest.output),
    ):
        if list(declared.get("shape", spec.shape)) != list(spec.shape):
            raise InvalidModel(f"{name} shape {list(spec.shape)} != manifest {declared['shape']}")
        if declared.get("dtype", spec.dtype) != spec.dtype:
            raise InvalidModel(f"{name} dtype {spec.dtype} != manifest {declared['dtype']}")
    if model.num_classes != len(manifest.classes):
        raise InvalidModel(
            f"model has {model.num_classes} outputs, manifest {len(manifest.classes)} classes"
        )


def _interpreter(content: bytes, num_threads: int = 1) -> TFLiteModel:
    try:
        return TFLiteModel(content, num_threads=num_threads)
    except ValueError as exc:
        raise InvalidModel(str(exc)) from exc


@dataclass(frozen=True)
class LoadedModel:
    """A verified, loaded and warmed-up model with what describes it."""

    name: str
    version: str
    interpreter: TFLiteModel
    manifest: Manifest
    # The out-of-distribution statistics (None: the version has no ood.npz or no features output).
    ood: OodStats | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.classes

    @property
    def ref(self) -> dict[str, str]:
        """The ``{"name", "version"}`` every answer carries."""
        return {"name": self.name, "version": self.version}

    @property
    def framing(self) -> Framing:
        """How this model's input images are framed."""
        return Framing.parse(self.manifest.framing)

    @property
    def height(self) -> int:
        return self.interpreter.height

    @property
    def width(self) -> int:
        return self.interpreter.width

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for ``(height, width, 3)`` uint8 pixels."""
        return self.interpreter.predict(pixels)

    def classify(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any] | None]:
        """Class probabilities and the ``ood`` field (``{"score", "unusual"}``, or None when the
        version has no OOD statistics) for ``(height, width, 3)`` uint8 pixels."""
        probs, features = self.interpreter.classify(pixels)
        if self.ood is None or features is None:
            return probs, None
        return probs, self.ood.assess(features)

    def describe(self) -> dict[str, Any]:
        """The body of ``GET /model``."""
        runtime = self.interpreter.runtime
        return {
            "model": self.ref,
            "classes": list(self.labels),
            "input": self.interpreter.input.as_dict(),
            "output": self.interpreter.output.as_dict(),
            "quantization": self.manifest.quantization or None,
            "framing": self.manifest.framing,
            "metrics": self.manifest.metrics,
            "sha256": self.manifest.sha256,
            "ood": self.manifest.ood or None,
            "runtime": {"name": runtime.name, "version": runtime.version},
        }


def load(
    files: dict[str, bytes], num_threads: int = 1, *, version: str | None = None, name: str = ""
) -> LoadedModel:
    """Verifies a model's files, loads the model and runs one warm-up inference.

    Args:
        files: file name -> content, as a model directory or a registry version holds them.
        num_threads: interpreter threads.
        version: the registry version; None for a model directory, whose manifest's
            ``version`` is used if it has one, else ``"bundled"``.
        name: the model name when the manifest has none.

    Returns:
        The loaded model.

    Raises:
        InvalidModel: a missing file, a sha256 mismatch, a flatbuffer that does not load, or a
            tensor spec / classes that do not match the manifest.
    """
    manifest = verify_files(files)
    model = _interpreter(files[MODEL], num_threads)
    check_spec(model, manifest)
    ood = load_ood(files, model)
    # The first invoke after loading costs ~15 ms more than the next ones: pay it now.
    model.predict(np.zeros((model.height, model.width, 3), dtype=np.uint8))
    return LoadedModel(
        name=name or manifest.name,
        version=version or str(manifest.extra.get("version") or BUNDLED_VERSION),
        interpreter=model,
        manifest=manifest,
        ood=ood,
    )


def load_ood(files: dict[str, bytes], model: TFLiteModel) -> OodStats | None:
    """The version's ``OodStats`` (verified by ``verify_files``), or None without ``ood.npz``.

    Raises:
        InvalidModel: the file does not parse, or the model has no features output of its size.
    """
    if OOD not in files:
        return None
    stats = OodStats.from_bytes(files[OOD])
    if model.features is None or model.features.shape[-1] != stats.feature_dim:
        got = None if model.features is None else list(model.features.shape)
        raise InvalidModel(f"{OOD} needs {stats.feature_dim} features; the model outputs {got}")
    return stats


def read_dir(path: Path, names: Sequence[str] = SERVING_FILES + OPTIONAL_FILES) -> dict[str, bytes]:
    """Reads the files of a model directory that are present (of ``names``)."""
    return {n: (path / n).read_bytes() for n in names if (path / n).is_file()}


def write_model(out: Path, content: bytes, manifest: Manifest, ood: bytes | None = None) -> None:
    """Writes ``model.tflite``, ``ood.npz`` then ``manifest.json`` into ``out``, each through a
    temporary name, so a reader never sees a manifest that does not describe the files next to it.

    Without ``ood``, a stale ``ood.npz`` is removed (the new manifest does not describe it).
    """
    out.mkdir(parents=True, exist_ok=True)
    if ood is None:
        (out / OOD).unlink(missing_ok=True)
    written = ((MODEL, content), (OOD, ood), (MANIFEST, manifest.to_json()))
    for filename, data in written:
        if data is None:
            continue
        tmp = out / f".{filename}.tmp"
        tmp.write_bytes(data)
        tmp.replace(out / filename)


def _check_images(
    model: TFLiteModel, images_dir: Path | None, framing: Framing
) -> list[tuple[str, np.ndarray]]:
    """Pixels to predict on: up to CHECK_IMAGES files (labelled by their folder), else synthetic."""
    if images_dir is None:
        rng = np.random.default_rng(0)
        shape = (model.height, model.width, 3)
        return [
            ("", np.zeros(shape, np.uint8)),
            ("", np.full(shape, 255, np.uint8)),
            ("", rng.integers(0, 256, shape, dtype=np.uint8)),
        ]
    paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    # Spread the picks over the classes rather than taking the first folder's files.
    picked = paths[:: max(1, len(paths) // CHECK_IMAGES)][:CHECK_IMAGES]
    if not picked:
        raise InvalidModel(f"no images to check the model with in {images_dir}")
    return [
        (p.parent.name, load_image(p.read_bytes(), model.height, model.width, framing=framing))
        for p in picked
    ]


def verify_dir(model_dir: Path, images_dir: Path | None = None) -> dict[str, Any]:
    """Fully checks a model directory: files, loading, tensor spec and predictions.

    Args:
        model_dir: holds model.tflite, manifest.json and labels.json.
        images_dir: images to predict on (a class-folder layout labels them); None = synthetic.

    Returns:
        A report: ``{"sha256", "runtime", "checked_images", "agreement"}``.

    Raises:
        InvalidModel: any check fails.
    """
    manifest = verify_files(read_dir(model_dir))
    model = _interpreter((model_dir / MODEL).read_bytes())
    check_spec(model, manifest)
    classes = manifest.classes
    agree = labelled = 0
    samples = _check_images(model, images_dir, Framing.parse(manifest.framing))
    for label, pixels in samples:
        probs = model.predict(pixels)
        if probs.shape != (len(classes),) or not np.all(np.isfinite(probs)):
            raise InvalidModel(f"prediction has shape {probs.shape} or non-finite values")
        # Softmax outputs, int8-quantised ones included, sum to 1 within a few output steps.
        if probs.min() < -0.01 or abs(float(probs.sum()) - 1.0) > 0.05:
            raise InvalidModel(f"prediction is not a probability distribution: {probs.tolist()}")
        if label in classes:
            labelled += 1
            agree += int(classes[int(np.argmax(probs))] == label)
    return {
        "sha256": manifest.sha256,
        "runtime": f"{model.runtime.name} {model.runtime.version}",
        "checked_images": len(samples),
        "agreement": agree / labelled if labelled else None,
    }


def verify_in_subprocess(
    model_dir: Path, images_dir: Path | None = None, timeout: float = VERIFY_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Runs ``verify_dir`` in a fresh Python process.

    Raises:
        InvalidModel: the check failed, the process crashed, or it timed out.
    """
    cmd = [sys.executable, "-m", "imgclf.artifact", "verify", str(model_dir.resolve())]
    if images_dir is not None:
        cmd += ["--images", str(images_dir.resolve())]
    try:
        proc = subprocess.run(
            cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidModel(f"model check timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise InvalidModel(f"model check failed in a separate process: {detail[0]}")
    return json.loads(proc.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imgclf.artifact verify DIR [--images DIR]``: prints the report, exit 1 if bad."""
    parser = argparse.ArgumentParser(prog="python -m imgclf.artifact", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="check a model directory (load + predict)")
    verify.add_argument("model_dir", type=Path)
    verify.add_argument("--images", type=Path, help="class folders of images to predict on")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(verify_dir(args.model_dir, args.images)))
    except InvalidModel as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
