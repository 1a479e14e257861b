"""The model registry: immutable numbered versions and a ``live`` alias moved by conditional writes.

Layout (in an S3 bucket or a local folder, see ``imgclf.storage``)::

    <name>/versions/<NNNN>/{model.tflite, model.keras, labels.json, manifest.json, metrics.json}
    <name>/aliases/live.json  = {"version": "0007", "previous": "0006", "history": [...], ...}

A version exists once its ``manifest.json`` is written; every file of a version is created with
``If-None-Match: *`` and ``manifest.json`` goes last, so a publisher that dies half way leaves no
version (only an unlisted, numbered leftover) and nothing published is ever overwritten. The alias
is replaced with ``If-Match: <etag it was read with>``, so two publishers can never interleave.

Serving imports this module: stdlib, boto3, numpy and ``imgclf.runtime`` only, never TensorFlow.
Run ``python -m imgclf.registry --help`` for the command line (list, show, publish, promote,
rollback, verify).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.preprocess import IMAGE_SUFFIXES, load_image
from imgclf.runtime import TFLiteModel
from imgclf.settings import PROJECT_ROOT, ServeSettings
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store, open_store

MODEL_FILES = ("model.tflite", "model.keras", "labels.json", "metrics.json", "manifest.json")
# What a serving container needs; model.keras is only for warm-starting a training job.
SERVING_FILES = ("model.tflite", "labels.json", "manifest.json", "metrics.json")
LIVE_ALIAS = "live"
# Bytes 4..8 of every TFLite flatbuffer (its file identifier).
TFLITE_IDENTIFIER = b"TFL3"
# How many rollback steps the alias remembers.
HISTORY_LENGTH = 10
# How many of the given images the publish check predicts on.
CHECK_IMAGES = 12
VERIFY_TIMEOUT_SECONDS = 300.0


class RegistryError(Exception):
    """Base class of the registry's errors."""


class AliasNotFound(RegistryError):
    """The alias has never been set."""


class VersionNotFound(RegistryError):
    """No published version by that name."""


class InvalidModel(RegistryError):
    """The files are not a valid model (hash, format, spec, classes or predictions)."""


class AliasConflict(RegistryError):
    """The alias moved since it was read; nothing was changed."""


def format_version(value: str | int) -> str:
    """Normalises ``7``, ``"7"`` or ``"0007"`` to the registry's ``"0007"``.

    Raises:
        VersionNotFound: not a positive integer.
    """
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise VersionNotFound(f"{value!r} is not a model version (a positive number)")
    return f"{int(text):04d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json(files: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name])
    except KeyError as exc:
        raise InvalidModel(f"{name} is missing") from exc
    except ValueError as exc:
        raise InvalidModel(f"{name} is not valid JSON: {exc}") from exc


def verify_model_files(files: dict[str, bytes]) -> dict[str, Any]:
    """Checks a version's files without loading the model (cheap; serving runs it on every load).

    Args:
        files: file name -> bytes; at least model.tflite, manifest.json and labels.json.

    Returns:
        The manifest.

    Raises:
        InvalidModel: a file is missing, the sha256 or size differs from the manifest, the file
            is not a TFLite flatbuffer, or labels / classes / output size disagree.
    """
    manifest = _json(files, "manifest.json")
    labels = _json(files, "labels.json")
    model = files.get("model.tflite")
    if model is None:
        raise InvalidModel("model.tflite is missing")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("classes"), list):
        raise InvalidModel("manifest.json has no list of classes")
    digest = hashlib.sha256(model).hexdigest()
    if digest != manifest.get("sha256"):
        raise InvalidModel(f"model.tflite sha256 {digest} != manifest {manifest.get('sha256')}")
    if "size_bytes" in manifest and manifest["size_bytes"] != len(model):
        raise InvalidModel(f"model.tflite is {len(model)} bytes, manifest {manifest['size_bytes']}")
    if model[4:8] != TFLITE_IDENTIFIER:
        raise InvalidModel("model.tflite is not a TFLite flatbuffer")
    if labels != manifest["classes"]:
        raise InvalidModel(f"labels.json {labels} != manifest classes {manifest['classes']}")
    output_shape = manifest.get("output", {}).get("shape")
    if output_shape and output_shape[-1] != len(labels):
        raise InvalidModel(f"output shape {output_shape} does not fit {len(labels)} classes")
    return manifest


def check_model_spec(model: TFLiteModel, manifest: dict[str, Any]) -> None:
    """Checks that a loaded model's tensors and class count are the ones its manifest declares.

    Raises:
        InvalidModel: input shape / dtype, output shape or number of classes differ.
    """
    for name, spec in (("input", model.input), ("output", model.output)):
        declared = manifest.get(name) or {}
        if list(declared.get("shape", spec.shape)) != list(spec.shape):
            raise InvalidModel(f"{name} shape {list(spec.shape)} != manifest {declared['shape']}")
        if declared.get("dtype", spec.dtype) != spec.dtype:
            raise InvalidModel(f"{name} dtype {spec.dtype} != manifest {declared['dtype']}")
    if model.num_classes != len(manifest["classes"]):
        raise InvalidModel(
            f"model has {model.num_classes} outputs, manifest {len(manifest['classes'])} classes"
        )


def _check_images(model: TFLiteModel, images_dir: Path | None) -> list[tuple[str, np.ndarray]]:
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
    return [(p.parent.name, load_image(p.read_bytes(), model.height, model.width)) for p in picked]


def verify_model_dir(model_dir: Path, images_dir: Path | None = None) -> dict[str, Any]:
    """Fully checks a model directory: files, loading, tensor spec and predictions.

    Publishing runs this in a separate process (``python -m imgclf.registry verify``) so that a
    model that crashes the interpreter cannot take the publisher down with it.

    Args:
        model_dir: holds model.tflite, manifest.json and labels.json.
        images_dir: images to predict on (a class-folder layout labels them); None = synthetic.

    Returns:
        A report: ``{"version_sha256", "runtime", "checked_images", "agreement"}``.

    Raises:
        InvalidModel: any check fails.
    """
    files = {n: (model_dir / n).read_bytes() for n in SERVING_FILES if (model_dir / n).is_file()}
    manifest = verify_model_files(files)
    try:
        model = TFLiteModel(files["model.tflite"])
    except ValueError as exc:
        raise InvalidModel(str(exc)) from exc
    check_model_spec(model, manifest)
    classes = manifest["classes"]
    agree = labelled = 0
    samples = _check_images(model, images_dir)
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
        "sha256": manifest["sha256"],
        "runtime": f"{model.runtime.name} {model.runtime.version}",
        "checked_images": len(samples),
        "agreement": agree / labelled if labelled else None,
    }


def verify_in_subprocess(
    model_dir: Path, images_dir: Path | None = None, timeout: float = VERIFY_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Runs ``verify_model_dir`` in a fresh Python process.

    Raises:
        InvalidModel: the check failed, the process crashed, or it timed out.
    """
    cmd = [sys.executable, "-m", "imgclf.registry", "verify", str(model_dir.resolve())]
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


class Registry:
    """The versions and aliases of one model name in one store."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    @property
    def uri(self) -> str:
        return f"{self.store.uri}/{self.name}"

    def _version_key(self, version: str, file: str = "") -> str:
        return f"{self.name}/versions/{version}/{file}"

    def _alias_key(self, alias: str) -> str:
        return f"{self.name}/aliases/{alias}.json"

    def list_versions(self) -> list[str]:
        """Returns the published versions, oldest first."""
        prefix = f"{self.name}/versions/"
        return sorted(
            (
                key[len(prefix) :].split("/")[0]
                for key in self.store.list(prefix)
                if key.endswith("/manifest.json")
            ),
            key=int,
        )

    def read_live(self, etag: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """Reads the ``live`` alias, conditionally.

        Args:
            etag: the ETag of the pointer the caller already has (a conditional GET).

        Returns:
            ``(pointer, etag)``, or ``(None, etag)`` when unchanged since ``etag``.

        Raises:
            AliasNotFound: no version has been made live yet.
        """
        try:
            obj = self.store.get(self._alias_key(LIVE_ALIAS), if_none_match=etag)
        except ObjectNotFound as exc:
            raise AliasNotFound(f"{self.uri} has no {LIVE_ALIAS!r} alias") from exc
        if obj is None:
            return None, etag
        return json.loads(obj.data), obj.etag

    def read_version(self, version: str, names: Sequence[str] = SERVING_FILES) -> dict[str, bytes]:
        """Downloads files of a published version.

        Args:
            version: e.g. ``"0007"`` (or ``"7"``).
            names: which files (default: what serving needs; ``MODEL_FILES`` for all).

        Returns:
            file name -> bytes.

        Raises:
            VersionNotFound: the version is not published.
        """
        version = format_version(version)
        files = {}
        for name in ("manifest.json", *(n for n in names if n != "manifest.json")):
            try:
                files[name] = self.store.get(self._version_key(version, name)).data
            except ObjectNotFound as exc:
                if name == "manifest.json":
                    raise VersionNotFound(f"{self.uri} has no version {version}") from exc
                raise InvalidModel(f"version {version} has no {name}") from exc
        return {n: files[n] for n in names}

    def describe(self, version: str) -> dict[str, Any]:
        """Returns a version's manifest and metrics, and whether it is live."""
        files = self.read_version(version, names=("manifest.json", "metrics.json"))
        try:
            live = self.read_live()[0]
        except AliasNotFound:
            live = {}
        version = format_version(version)
        return {
            "version": version,
            "live": live.get("version") == version,
            "manifest": json.loads(files["manifest.json"]),
            "metrics": json.loads(files["metrics.json"]),
        }

    def publish(self, model_dir: Path, images_dir: Path | None = None) -> str:
        """Validates a model directory and publishes it as the next version (not made live).

        Args:
            model_dir: holds every file in ``MODEL_FILES``.
            images_dir: known images the model must predict on (see ``verify_model_dir``).

        Returns:
            The new version, e.g. ``"0008"``.

        Raises:
            InvalidModel: a file is missing or the model fails its checks.
        """
        missing = [n for n in MODEL_FILES if not (model_dir / n).is_file()]
        if missing:
            raise InvalidModel(f"{model_dir} lacks {', '.join(missing)}")
        files = {n: (model_dir / n).read_bytes() for n in MODEL_FILES}
        verify_model_files(files)
        verify_in_subprocess(model_dir, images_dir)
        # Claim a number by creating its model.tflite; whoever loses the race takes the next one.
        prefix = f"{self.name}/versions/"
        taken = {key[len(prefix) :].split("/")[0] for key in self.store.list(prefix)}
        number = max((int(v) for v in taken if v.isdigit()), default=0) + 1
        while True:
            version = format_version(number)
            try:
                self.store.put(
                    self._version_key(version, "model.tflite"),
                    files["model.tflite"],
                    if_none_match=True,
                )
                break
            except PreconditionFailed:
                number += 1
        # manifest.json last: its presence is what makes the version exist.
        for name in MODEL_FILES[1:]:
            self.store.put(self._version_key(version, name), files[name], if_none_match=True)
        return version

    def promote(
        self, version: str, *, reason: str = "promote", expected_etag: str | None = None
    ) -> dict[str, Any]:
        """Moves ``live`` to a published version after checking its stored files.

        Args:
            version: the version to make live.
            reason: recorded in the pointer.
            expected_etag: only move if the alias still has this ETag (what a comparison was
                made against); default: the ETag read just now.

        Returns:
            The new pointer.

        Raises:
            VersionNotFound: no such version.
            InvalidModel: its stored files fail ``verify_model_files``.
            AliasConflict: the alias moved meanwhile; it was left as it is.
        """
        version = format_version(version)
        verify_model_files(self.read_version(version))
        try:
            current, etag = self.read_live()
        except AliasNotFound:
            current, etag = None, None
        if expected_etag is not None and expected_etag != etag:
            raise AliasConflict(f"{LIVE_ALIAS} moved to {current and current['version']}")
        history = [] if current is None else [current["version"], *current.get("history", [])]
        history = [v for v in history if v != version][:HISTORY_LENGTH]
        return self._write_live(version, history, reason, etag)

    def rollback(self, *, reason: str = "rollback") -> dict[str, Any]:
        """Moves ``live`` back to the version that was live before it.

        Raises:
            AliasNotFound: nothing is live.
            RegistryError: there is no earlier version to go back to.
            AliasConflict: the alias moved meanwhile.
        """
        current, etag = self.read_live()
        history = current.get("history", [])
        if not history:
            raise RegistryError(f"{LIVE_ALIAS} = {current['version']} has no previous version")
        verify_model_files(self.read_version(history[0]))
        return self._write_live(history[0], history[1:], reason, etag)

    def _write_live(
        self, version: str, history: list[str], reason: str, etag: str | None
    ) -> dict[str, Any]:
        pointer = {
            "version": version,
            "previous": history[0] if history else None,
            "history": history,
            "updated_at": _now(),
            "reason": reason,
        }
        data = json.dumps(pointer, indent=2).encode()
        try:
            if etag is None:
                self.store.put(self._alias_key(LIVE_ALIAS), data, if_none_match=True)
            else:
                self.store.put(self._alias_key(LIVE_ALIAS), data, if_match=etag)
        except PreconditionFailed as exc:
            raise AliasConflict(f"{LIVE_ALIAS} was moved by someone else; not changed") from exc
        return pointer


def open_registry(uri: str, name: str) -> Registry:
    """Opens the registry at ``s3://bucket/prefix`` or a local folder path.

    Args:
        uri: where the registry lives (``MODEL_REGISTRY_URI``).
        name: the model name (``MODEL_NAME``).
    """
    return Registry(open_store(uri), name)


def _version_row(registry: Registry, version: str, live: dict[str, Any]) -> str:
    files = registry.read_version(version, names=("manifest.json", "metrics.json"))
    manifest, metrics = json.loads(files["manifest.json"]), json.loads(files["metrics.json"])
    # The retrain job's evaluation on the fixed test split, else train.py's own.
    evaluation = metrics.get("evaluation") or manifest.get("metrics") or {}
    gate = metrics.get("gate", {})
    marks = "live" if live.get("version") == version else ""
    marks = marks or ("previous" if live.get("previous") == version else "")

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, int | float) else "-"

    return (
        f"{version:>7}  {manifest.get('created_at', '-')[:19]:<19}  "
        f"{manifest.get('quantization', '-'):<8}  {fmt(evaluation.get('accuracy')):>8}  "
        f"{fmt(evaluation.get('macro_f1')):>8}  {str(gate.get('passed', '-')):<5}  "
        f"{marks}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m imgclf.registry [--uri U] [--name N] COMMAND ...``."""
    settings = ServeSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m imgclf.registry", description=__doc__)
    parser.add_argument("--uri", default=settings.model_registry_uri, help="MODEL_REGISTRY_URI")
    parser.add_argument("--name", default=settings.model_name, help="MODEL_NAME")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions with their metrics; marks live and previous")
    commands.add_parser("show", help="manifest + metrics of a version").add_argument("version")
    publish = commands.add_parser("publish", help="validate and publish a model directory")
    publish.add_argument("model_dir", type=Path)
    publish.add_argument("--images", type=Path, help="known images to predict on")
    publish.add_argument("--promote", action="store_true", help="also make it live")
    promote = commands.add_parser("promote", help="make a published version live")
    promote.add_argument("version")
    commands.add_parser("rollback", help="make the previous live version live again")
    verify = commands.add_parser("verify", help="check a model directory (load + predict)")
    verify.add_argument("model_dir", type=Path)
    verify.add_argument("--images", type=Path)
    args = parser.parse_args(argv)

    try:
        if args.command == "verify":
            print(json.dumps(verify_model_dir(args.model_dir, args.images)))
            return 0
        if not args.uri:
            parser.error("set --uri or MODEL_REGISTRY_URI")
        registry = open_registry(args.uri, args.name)
        if args.command == "list":
            try:
                live = registry.read_live()[0]
            except AliasNotFound:
                live = {}
            print(
                f"{'version':>7}  {'created_at':<19}  {'quant':<8}  {'accuracy':>8}  "
                f"{'macro_f1':>8}  {'gate':<5}  alias"
            )
            for version in registry.list_versions():
                print(_version_row(registry, version, live))
        elif args.command == "show":
            print(json.dumps(registry.describe(args.version), indent=2))
        elif args.command == "publish":
            version = registry.publish(args.model_dir, args.images)
            print(f"published {registry.uri} version {version}")
            if args.promote:
                print(json.dumps(registry.promote(version, reason="cli publish --promote")))
        elif args.command == "promote":
            print(json.dumps(registry.promote(args.version, reason="cli promote")))
        elif args.command == "rollback":
            print(json.dumps(registry.rollback(reason="cli rollback")))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
