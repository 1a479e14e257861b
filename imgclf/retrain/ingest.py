"""Ingestion of uploads into the training data: validated, content-addressed, never lost.

Uploads arrive under ``incoming/<model>/`` (an image in a class folder, or a zip of class folders)
or as a retraining request ``incoming/_retrain/<model>[.json]``, and end as
``train/<model>/<class>/<sha256>.<ext>`` or ``test/<model>/...`` with a ``jobs/pending/`` marker,
or as a ``rejected/<id>.json`` record saying why (``imgclf.layout``). The first upload for a new
model name starts that model. An image's split is decided by its content hash (``split_of``): the
same image always lands in the same split, so it can never feed both training and evaluation.

Each image is decoded with ``imgclf.preprocess.load_image``, the function training and serving use.
An upload is deleted from ``incoming/`` only after it is stored or its rejection is recorded, and
only if it is still the object that was read (``If-Match``), so a re-upload is never lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote_plus

from PIL import Image

from imgclf import layout
from imgclf.errors import InvalidImage
from imgclf.layout import INCOMING, PENDING, REJECTED, TEST, TRAIN, TRIGGER_PREFIX
from imgclf.preprocess import IMAGE_SUFFIXES, load_image
from imgclf.settings import RetrainSettings
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store

SUFFIX_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
# Decoding at a small size is enough to prove the file decodes; training decodes it again.
VALIDATION_SIZE = 32
MAX_IMAGE_BYTES = 50_000_000
MAX_ZIP_ENTRIES = 20_000
MAX_TRIGGER_BYTES = 10_000
TRAIN_MODES = ("warm", "full")
# One image in TEST_SHARE goes to the held-out split (by its hash), the rest to training.
TEST_SHARE = 5


class Rejected(Exception):
    """An upload (or archive entry) that cannot be used, with a stable code and a reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class IngestResult:
    """What one incoming key turned into."""

    key: str
    model: str | None = None
    stored: list[str] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    trigger: dict[str, Any] | None = None
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready summary (for logs and the handler's answer)."""
        return {
            "key": self.key,
            "model": self.model,
            "stored": len(self.stored),
            "duplicates": self.duplicates,
            "rejected": [r["reason"] for r in self.rejected],
            "trigger": self.trigger,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Upload:
    """One object-created record of an S3 event."""

    key: str
    size: int | None


def uploads_from_event(event: dict[str, Any], bucket: str) -> tuple[list[Upload], list[str]]:
    """Picks the records to ingest from an S3 event notification.

    ``s3:TestEvent``, removals, other buckets and keys outside ``incoming/`` are left out. Keys
    arrive URL-encoded (a space as ``+``), so each is decoded with ``unquote_plus``.

    Args:
        event: the S3 event.
        bucket: the data bucket.

    Returns:
        ``(uploads, ignored)``: the uploads in event order (duplicates removed) and why each
        other record was ignored.
    """
    if event.get("Event") == "s3:TestEvent":
        return [], ["s3:TestEvent"]
    uploads: dict[str, Upload] = {}
    ignored = []
    for record in event.get("Records", []):
        name = str(record.get("eventName", ""))
        s3 = record.get("s3", {})
        key = unquote_plus(s3.get("object", {}).get("key", ""))
        if not name.startswith("ObjectCreated"):
            ignored.append(f"{name} {key}")
        elif s3.get("bucket", {}).get("name") != bucket:
            ignored.append(f"{key}: bucket {s3.get('bucket', {}).get('name')} is not {bucket}")
        elif not key.startswith(INCOMING) or key.endswith("/"):
            ignored.append(f"{key}: not an upload under {INCOMING}")
        else:
            uploads.setdefault(key, Upload(key, s3["object"].get("size")))
    return list(uploads.values()), ignored


def known_classes(store: Store, model: str) -> set[str]:
    """Returns the classes a model's data already has (folders of its train and test splits)."""
    return set(store.list_folders(layout.model_prefix(TRAIN, model))) | set(
        store.list_folders(layout.model_prefix(TEST, model))
    )


def split_of(data: bytes) -> str:
    """The split an image belongs to, by its content: ``test/`` for one in ``TEST_SHARE``."""
    return TEST if int(hashlib.sha256(data).hexdigest()[:8], 16) % TEST_SHARE == 0 else TRAIN


def check_name(kind: str, name: str) -> None:
    """Raises ``Rejected`` unless ``name`` is a valid model or class name (``layout.NAME``)."""
    if not layout.NAME.fullmatch(name):
        raise Rejected(
            f"invalid_{kind}",
            f"{kind} name {name!r} must be lowercase letters, digits, '-' or '_' (at most 63, "
            "not starting with '_' or '-')",
        )


def check_class(name: str, known: set[str], allow_new: bool) -> None:
    """Raises ``Rejected`` for an invalid class name, or a new one when new classes are refused."""
    check_name("class", name)
    if name not in known and not allow_new:
        raise Rejected(
            "unknown_class",
            f"class {name!r} is not one of {sorted(known)}; set RETRAIN_ALLOW_NEW_CLASSES=true "
            "to accept new classes",
        )


def validate_image(data: bytes, settings: RetrainSettings) -> str:
    """Decodes an image with the shared decoder.

    Returns:
        The file suffix of its real format (``jpg``, ``png``, ...), whatever its name said.

    Raises:
        Rejected: not a decodable image of an allowed format, or outside the limits.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise Rejected("too_large", f"image is {len(data)} bytes; the limit is {MAX_IMAGE_BYTES}")
    try:
        load_image(data, VALIDATION_SIZE, VALIDATION_SIZE, settings.image_limits)
    except InvalidImage as exc:
        raise Rejected(exc.code, exc.message) from exc
    with Image.open(io.BytesIO(data)) as img:
        return SUFFIX_OF_FORMAT[img.format]


def store_image(
    store: Store,
    split: str,
    model: str,
    class_name: str,
    data: bytes,
    suffix: str,
    *,
    pending: bool,
) -> tuple[str, bool]:
    """Stores an image under its content hash.

    Args:
        store: the data bucket.
        split: ``train/`` or ``test/``.
        model: the model it is data of.
        class_name: its (checked) class.
        data: the image bytes.
        suffix: from ``validate_image``.
        pending: also leave a marker counting it as new training data.

    Returns:
        ``(key, created)``; ``created`` is False when the same content was already there.
    """
    name = f"{model}/{class_name}/{hashlib.sha256(data).hexdigest()}.{suffix}"
    try:
        store.put(split + name, data, if_none_match=True)
    except PreconditionFailed:
        return split + name, False
    if pending:
        store.put(PENDING + name, b"")
    return split + name, True


def record_rejection(
    store: Store, key: str, etag: str, rejected: Rejected, entry: str | None = None
) -> dict[str, Any]:
    """Writes ``rejected/<id>.json`` (once per upload and entry, however often it is delivered).

    Returns:
        The record.
    """
    record = {
        "key": key,
        "etag": etag.strip('"'),
        "entry": entry,
        "code": rejected.code,
        "reason": rejected.reason,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    ident = hashlib.sha256(f"{key}\0{etag}\0{entry or ''}".encode()).hexdigest()[:32]
    # A redelivered event: the first record (and its time) stands.
    with contextlib.suppress(PreconditionFailed):
        store.put(
            f"{REJECTED}{ident}.json", json.dumps(record, indent=2).encode(), if_none_match=True
        )
    return record


def _zip_entries(data: bytes) -> Iterator[tuple[str, bytes | Rejected]]:
    """Yields ``(entry name, bytes or why not)`` for each file in an archive."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise Rejected("invalid_archive", f"not a readable zip archive: {exc}") from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_ZIP_ENTRIES:
            raise Rejected("too_many_entries", f"{len(infos)} entries; limit {MAX_ZIP_ENTRIES}")
        for info in infos:
            name = info.filename
            if info.file_size > MAX_IMAGE_BYTES:
                yield (
                    name,
                    Rejected("too_large", f"{info.file_size} bytes; limit {MAX_IMAGE_BYTES}"),
                )
                continue
            try:
                with archive.open(info) as member:
                    # The header's size may lie (a zip bomb): never read past the limit.
                    content = member.read(MAX_IMAGE_BYTES + 1)
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError) as exc:
                yield name, Rejected("invalid_entry", f"entry cannot be read: {exc}")
                continue
            if len(content) > MAX_IMAGE_BYTES:
                yield name, Rejected("too_large", f"entry inflates past {MAX_IMAGE_BYTES} bytes")
                continue
            yield name, content


def _entry_class(name: str) -> str:
    """The class of an archive entry ``[folders/]<class>/<file>``; rejects unsafe names."""
    path = PurePosixPath(name)
    if "\\" in name or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        raise Rejected("path_traversal", f"unsafe entry name {name!r}")
    if len(path.parts) < 2:
        raise Rejected("no_class", f"entry {name!r} is not in a class folder")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise Rejected("not_an_image", f"entry {name!r} is not an image file")
    return path.parts[-2]


class Catalog:
    """What ingestion needs to know of the models: their classes so far, and which take uploads.

    Classes are read from the data bucket once per model and grow as uploads add new ones.
    """

    def __init__(self, store: Store, served: set[str]) -> None:
        """Reads nothing yet.

        Args:
            store: the data bucket.
            served: the models the registry serves (a served model with no training data, such
                as the pretrained ``imagenet`` classifier, was not trained here: no uploads).
        """
        self.store = store
        self.served = served
        self._classes: dict[str, set[str]] = {}

    def classes(self, model: str) -> set[str]:
        """The classes a model's data has (mutable: accepted new classes are added)."""
        if model not in self._classes:
            self._classes[model] = known_classes(self.store, model)
        return self._classes[model]

    def check_model(self, model: str) -> None:
        """Raises ``Rejected`` for an invalid model name or one that takes no uploads."""
        check_name("model", model)
        if model in self.served and not self.classes(model):
            raise Rejected(
                "model_not_trainable",
                f"model {model!r} has no training data here (it was not trained from uploads); "
                "upload under a new model name to start a model of your own",
            )


def _store_upload(
    store: Store,
    model: str,
    class_name: str,
    data: bytes,
    settings: RetrainSettings,
    catalog: Catalog,
    result: IngestResult,
) -> None:
    """Checks and stores one image of ``model``/``class_name``, counting it in ``result``."""
    # A model that is not served yet is being started by its uploads: any class is welcome.
    allow_new = settings.allow_new_classes or model not in catalog.served
    check_class(class_name, catalog.classes(model), allow_new)
    suffix = validate_image(data, settings)
    key, created = store_image(store, split_of(data), model, class_name, data, suffix, pending=True)
    catalog.classes(model).add(class_name)
    if created:
        result.stored.append(key)
    else:
        result.duplicates += 1


def _ingest_archive(
    store: Store,
    result: IngestResult,
    etag: str,
    data: bytes,
    settings: RetrainSettings,
    catalog: Catalog,
) -> None:
    assert result.model is not None
    for entry, content in _zip_entries(data):
        try:
            if isinstance(content, Rejected):
                raise content
            _store_upload(
                store, result.model, _entry_class(entry), content, settings, catalog, result
            )
        except Rejected as rejected:
            result.rejected.append(record_rejection(store, result.key, etag, rejected, entry))


def _read_trigger(key: str, data: bytes, catalog: Catalog) -> dict[str, Any]:
    """``incoming/_retrain/<model>[.json]`` or ``incoming/_retrain/<model>/<any>``, with an
    optional JSON body ``{"mode": "warm" | "full"}``."""
    model = key[len(TRIGGER_PREFIX) :].split("/")[0].removesuffix(".json")
    catalog.check_model(model)
    if model not in catalog.served and not catalog.classes(model):
        raise Rejected("unknown_model", f"there is no model {model!r} to retrain")
    if len(data) > MAX_TRIGGER_BYTES:
        raise Rejected("invalid_trigger", f"a retrain request is at most {MAX_TRIGGER_BYTES} bytes")
    try:
        body = json.loads(data) if data.strip() else {}
    except ValueError as exc:
        raise Rejected("invalid_trigger", f"a retrain request body must be JSON: {exc}") from exc
    mode = body.get("mode", "warm") if isinstance(body, dict) else None
    if mode not in TRAIN_MODES:
        raise Rejected("invalid_trigger", f"mode must be one of {TRAIN_MODES}, got {mode!r}")
    return {"model": model, "mode": mode}


def ingest_upload(
    store: Store, upload: Upload, settings: RetrainSettings, catalog: Catalog
) -> IngestResult:
    """Ingests one ``incoming/`` key: stores it, or records why not; then removes the upload.

    Safe to repeat: a key already processed is gone (skipped), content already stored adds
    nothing, and a rejection is recorded once.

    Args:
        store: the data bucket.
        upload: the key (decoded) and, when the event gave it, its size.
        settings: class policy and limits.
        catalog: the models' classes (grows as new classes are accepted) and which take uploads.

    Returns:
        What the upload turned into.
    """
    result = IngestResult(upload.key)
    if upload.size is not None and upload.size > settings.max_upload_bytes:
        # Never downloaded: record why, and leave the object for whoever uploaded it to see.
        too_large = Rejected("too_large", f"{upload.size} bytes; limit {settings.max_upload_bytes}")
        result.rejected.append(record_rejection(store, upload.key, "", too_large))
        return result
    try:
        obj = store.get(upload.key)
    except ObjectNotFound:
        result.skipped = "already processed (the upload is gone)"
        return result
    try:
        if upload.key.startswith(TRIGGER_PREFIX):
            result.trigger = _read_trigger(upload.key, obj.data, catalog)
            result.model = result.trigger["model"]
        else:
            parts = upload.key[len(INCOMING) :].split("/")
            result.model = parts[0]
            if len(parts) == 2 and parts[1].lower().endswith(".zip"):
                catalog.check_model(parts[0])
                _ingest_archive(store, result, obj.etag, obj.data, settings, catalog)
            elif len(parts) == 3:
                catalog.check_model(parts[0])
                _store_upload(store, parts[0], parts[1], obj.data, settings, catalog, result)
            else:
                result.model = None
                raise Rejected(
                    "no_class",
                    f"expected {INCOMING}<model>/<class>/<file> or {INCOMING}<model>/<name>.zip, "
                    f"got {upload.key}",
                )
    except Rejected as rejected:
        result.rejected.append(record_rejection(store, upload.key, obj.etag, rejected))
    # Re-uploaded meanwhile (the ETag differs): the new object has its own event.
    with contextlib.suppress(PreconditionFailed):
        store.delete(upload.key, if_match=obj.etag)
    return result


def seed_split(store: Store, split_dir: Path, split: str, model: str) -> int:
    """Stores every image of a folder-per-class split directly (no ``incoming/``, no markers).

    For setting up a data bucket: a model's held-out ``test/`` split and its initial ``train/``.
    Files that do not decode are left out. Repeating it adds nothing.

    Args:
        store: the data bucket.
        split_dir: one folder of images per class (e.g. ``data/sample/seg_test``).
        split: ``train/`` or ``test/``.
        model: the model the data is for.

    Returns:
        The number of images stored (new or already there).
    """
    count = 0
    settings = RetrainSettings()
    for path in sorted(split_dir.glob("*/*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not layout.NAME.fullmatch(path.parent.name):
            continue
        data = path.read_bytes()
        try:
            suffix = validate_image(data, settings)
        except Rejected:
            continue
        store_image(store, split, model, path.parent.name, data, suffix, pending=False)
        count += 1
    return count


def seed_data(store: Store, root: Path, model: str) -> dict[str, int]:
    """Seeds a model's ``train/`` and ``test/`` from a dataset root in the Intel layout.

    Args:
        store: the data bucket.
        root: holds ``seg_train/<class>/`` and ``seg_test/<class>/``.
        model: the model the data is for.

    Returns:
        Images stored per split.
    """
    return {
        "train": seed_split(store, root / "seg_train", TRAIN, model),
        "test": seed_split(store, root / "seg_test", TEST, model),
    }
