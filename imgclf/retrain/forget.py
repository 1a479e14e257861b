"""Forgetting an image: every copy and trace of it removed from the data bucket, and the models
trained on it retrained from scratch.

``python -m imgclf.registry forget <sha256>`` (the image's sha256: the name the data bucket
gives it) runs ``forget``, which, in this order:

1. deletes it from the training data: ``train/<model>/<class>/<sha256>.<ext>``,
   ``test/...`` and the ``jobs/pending/`` markers; a model whose ``train/`` held it is marked
   for retraining;
2. deletes uploads that are this image: keys under ``incoming/`` or ``uploads/`` that name the
   hash, and any other image there whose bytes hash to it (archives under ``incoming/`` are not
   opened: they are listed as unchecked);
3. deletes the captured image ``captures/images/<sha256>`` and marks each capture record that
   pointed to it (``extra.image_forgotten``: the time), so nobody takes the missing image for a
   lost one; the record keeps what was answered, not the image;
4. deletes the feedback records about it (``feedback/pending|approved|rejected/``);
5. rewrites each embedding shard (``embeddings/<model>/<key>/<shard>.npz``) that has its features
   as a new shard without that row (uploaded first, then the old one deleted); a shard that
   cannot be read is deleted (a job only ignores it: its images are computed again);
6. asks for a full retraining of each model trained on it: ``incoming/_retrain/<model>.json``
   ``{"mode": "full", "reason": "forgot <sha256>"}`` (a warm start would fine-tune the live
   model, which saw the image);
7. on S3, deletes the noncurrent versions of every key it deleted or replaced (the data bucket is
   versioned): this needs ``s3:ListBucketVersions`` and ``s3:DeleteObjectVersion``; without them
   the report says so and the lifecycle rule removes them within 30 days.

A job running meanwhile may have read the image already; the report names such jobs (their
model's lock is held): run ``forget`` again once they end. Published model versions trained on
the image stay in the registry until you remove them; the full retraining makes the next live
version one that never saw it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgclf import captures, feedback, layout
from imgclf.captures import Capture
from imgclf.pipeline.embeddings import SHARD_SUFFIX, EmbeddingCache
from imgclf.retrain.lock import lock_holder
from imgclf.storage import ObjectNotFound, S3Store, Store

SHA256 = captures.SHA256
# Large images to classify ({"s3_key"}), as imgclf.serving.uploads names the prefix.
UPLOADS_PREFIX = "uploads/"
# Uploads larger than this are not read to be hashed (the retrain function refuses them unread).
MAX_HASHED_BYTES = 200_000_000


@dataclass
class ForgetReport:
    """What ``forget`` did."""

    sha256: str
    deleted: list[str] = field(default_factory=list)
    marked: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)
    retrain: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)
    running_jobs: dict[str, str] = field(default_factory=dict)
    versions_purged: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "deleted": self.deleted,
            "marked": self.marked,
            "rewritten": self.rewritten,
            "retrain": self.retrain,
            "unchecked": self.unchecked,
            "running_jobs": self.running_jobs,
            "versions_purged": self.versions_purged,
            "problems": self.problems,
        }


def _stem(key: str) -> str:
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


def _forget_training_data(store: Store, sha256: str, report: ForgetReport) -> set[str]:
    """Deletes ``train/``, ``test/`` and pending markers; returns the models trained on it."""
    trained = set()
    for split in (layout.TRAIN, layout.TEST, layout.PENDING):
        for key in list(store.list(split)):
            parts = key[len(split) :].split("/")
            if len(parts) == 3 and _stem(key) == sha256:
                store.delete(key)
                report.deleted.append(key)
                if split == layout.TRAIN:
                    trained.add(parts[0])
    return trained


def _forget_uploads(store: Store, sha256: str, report: ForgetReport) -> None:
    """Deletes uploads (``incoming/``, ``uploads/``) that name the image or are its bytes."""
    for prefix in (layout.INCOMING, UPLOADS_PREFIX):
        for key in list(store.list(prefix)):
            if key.startswith(layout.TRIGGER_PREFIX):
                continue
            if sha256 in key.rsplit("/", 1)[-1]:
                store.delete(key)
                report.deleted.append(key)
                continue
            if key.lower().endswith(".zip"):
                report.unchecked.append(key)
                continue
            try:
                data = store.get(key).data  # type: ignore[union-attr]
            except ObjectNotFound:
                continue  # ingested meanwhile
            if len(data) <= MAX_HASHED_BYTES and hashlib.sha256(data).hexdigest() == sha256:
                store.delete(key)
                report.deleted.append(key)


def _forget_captures(store: Store, sha256: str, report: ForgetReport, when: str) -> None:
    """Deletes the captured image and marks the records that pointed to it."""
    image = captures.image_key(sha256)
    if any(key == image for key in store.list(image)):
        store.delete(image)
        report.deleted.append(image)
    for key in list(store.list(captures.RECORDS)):
        try:
            record = Capture.from_json(store.get(key).data)  # type: ignore[union-attr]
        except (ObjectNotFound, ValueError, TypeError, KeyError):
            continue
        if record.image_sha256 != sha256 or "image_forgotten" in record.extra:
            continue
        marked = replace(record, extra={**record.extra, "image_forgotten": when})
        store.put(key, marked.to_json())
        report.marked.append(key)


def _forget_feedback(store: Store, sha256: str, report: ForgetReport) -> None:
    """Deletes the feedback records about the image, whatever their state."""
    for key in list(store.list(feedback.FEEDBACK)):
        try:
            record = feedback.Feedback.from_json(store.get(key).data)  # type: ignore[union-attr]
        except (ObjectNotFound, ValueError, TypeError):
            continue
        if record.image_sha256 == sha256:
            store.delete(key)
            report.deleted.append(key)


def _forget_embeddings(store: Store, sha256: str, report: ForgetReport) -> set[str]:
    """Rewrites the shards that hold the image's features; returns the models they belong to."""
    models = set()
    with tempfile.TemporaryDirectory(prefix="imgclf-forget-") as scratch:
        for index, key in enumerate(list(store.list(layout.EMBEDDINGS))):
            parts = key[len(layout.EMBEDDINGS) :].split("/")
            if len(parts) != 3 or not key.endswith(SHARD_SUFFIX) or parts[2].startswith("."):
                continue
            model, cache_key, _ = parts
            try:
                data = store.get(key).data  # type: ignore[union-attr]
            except ObjectNotFound:
                continue  # merged meanwhile by a job
            work = Path(scratch) / str(index)
            work.mkdir()
            path = work / "shard.npz"
            path.write_bytes(data)
            shard = EmbeddingCache(work).read_shard(path)
            if shard is None:
                # Unreadable: a job ignores it, and it might hold the image: gone.
                store.delete(key)
                report.deleted.append(key)
                models.add(model)
                continue
            digests, features = shard
            keep = [i for i, digest in enumerate(digests) if digest != sha256]
            if len(keep) == len(digests):
                continue
            models.add(model)
            if keep:
                written = EmbeddingCache(work / "new").add(
                    [digests[i] for i in keep], features[keep]
                )
                assert written is not None
                new_key = f"{layout.embeddings_prefix(model)}{cache_key}/{written.name}"
                store.put(new_key, written.read_bytes(), if_none_match=True)
                report.rewritten.append(f"{key} -> {new_key}")
            else:
                report.rewritten.append(f"{key} -> (nothing left)")
            store.delete(key)
            report.deleted.append(key)
    return models


def _purge_versions(store: Store, keys: list[str], report: ForgetReport) -> None:
    """Deletes the noncurrent versions of ``keys`` (a versioned S3 bucket keeps what was deleted
    or overwritten); the current one (a delete marker, or a marked record) stays."""
    if not isinstance(store, S3Store) or not keys:
        return
    client = store.client
    try:
        for key in keys:
            full = store.prefix + key
            pages = client.get_paginator("list_object_versions").paginate(
                Bucket=store.bucket, Prefix=full
            )
            for page in pages:
                for item in page.get("Versions", []):
                    if item["Key"] != full or item.get("IsLatest"):
                        continue
                    client.delete_object(Bucket=store.bucket, Key=full, VersionId=item["VersionId"])
                    report.versions_purged += 1
    except Exception as exc:  # noqa: BLE001 - the current objects are gone already: report it
        report.problems.append(
            f"noncurrent versions not purged ({type(exc).__name__}: {exc}); the lifecycle rule "
            "expires them within 30 days"
        )


def forget(store: Store, sha256: str, *, purge_versions: bool = True) -> ForgetReport:
    """Removes an image everywhere in the data bucket (see the module docstring).

    Args:
        store: the data bucket.
        sha256: the image's sha256 (64 lowercase hex digits).
        purge_versions: also delete the noncurrent versions S3 keeps of what was deleted.

    Returns:
        What was deleted, marked, rewritten and requested.

    Raises:
        ValueError: not a sha256.
    """
    if not SHA256.fullmatch(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
    report = ForgetReport(sha256)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    trained = _forget_training_data(store, sha256, report)
    _forget_uploads(store, sha256, report)
    _forget_captures(store, sha256, report, when)
    _forget_feedback(store, sha256, report)
    cached = _forget_embeddings(store, sha256, report)
    for model in sorted(trained | cached):
        holder = lock_holder(store, model)
        if holder:
            report.running_jobs[model] = holder
    for model in sorted(trained):
        key = f"{layout.TRIGGER_PREFIX}{model}.json"
        body = {"mode": "full", "reason": f"forgot {sha256}"}
        store.put(key, json.dumps(body).encode())
        report.retrain[model] = key
    if purge_versions:
        _purge_versions(store, report.deleted + report.marked, report)
    return report


def format_report(report: ForgetReport) -> str:
    """The report as lines for a terminal."""
    lines = [f"forgot {report.sha256}:"]
    lines += [f"  deleted   {key}" for key in report.deleted]
    lines += [f"  marked    {key} (image_forgotten)" for key in report.marked]
    lines += [f"  rewrote   {item}" for item in report.rewritten]
    lines += [f"  retrain   {model}: {key} (full)" for model, key in report.retrain.items()]
    lines += [f"  unchecked {key} (an archive: not opened)" for key in report.unchecked]
    lines += [
        f"  WARNING   job {job} of {model} is running: run forget again once it ends"
        for model, job in report.running_jobs.items()
    ]
    lines += [f"  WARNING   {problem}" for problem in report.problems]
    if report.versions_purged:
        lines.append(f"  purged    {report.versions_purged} stored versions")
    if len(lines) == 1:
        lines.append("  (the data bucket holds nothing of it)")
    return "\n".join(lines)
