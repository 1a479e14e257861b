"""Captured traffic: what serving stores of a sampled predict request, and how others read it.

The data bucket::

    captures/images/<sha256>                       the request's image, once per content
    captures/records/<model>/<YYYY-MM-DD>/<HHMMSSffffff>-<request id>.json
                                                   one record per captured answer (``Capture``)
    captures/requests/<request id>.json            the record's key, so a request id finds it

Serving writes them (``imgclf.serving.capture``); feedback, the canary rule, shadow reports and
the drift monitor read them through ``read_captures`` and ``find_capture``. Records are small
JSON documents: they hold no image, only its sha256, so forgetting an image deletes one object
and its records still say what was answered.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from imgclf.storage import ObjectNotFound, PreconditionFailed, Store

CAPTURES = "captures/"
IMAGES = f"{CAPTURES}images/"
RECORDS = f"{CAPTURES}records/"
REQUESTS = f"{CAPTURES}requests/"

# API Gateway's and Lambda's request ids, and the local gateway's: letters, digits, "-", "=".
REQUEST_ID = re.compile(r"[A-Za-z0-9=_-]{1,128}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Capture:
    """One captured answer.

    Attributes:
        request_id: the id every answer carries (``request_id``).
        time: when the request arrived, ISO 8601 UTC.
        model: the model's name.
        version: the version that answered (a canary's candidate, or the live one).
        predictions: the answer's top-k, ``[{"label", "score"}, ...]``, best first.
        latency_ms: the handler's time for the request.
        input_kind: how the image came (``raw``, ``multipart``, ``base64``, ``url``, ``s3_key``).
        image_sha256: the key of the image under ``captures/images/``.
        ood_score: the answer's out-of-distribution score (None when the version has none).
    """

    request_id: str
    time: str
    model: str
    version: str
    predictions: list[dict[str, Any]]
    latency_ms: float
    input_kind: str
    image_sha256: str
    ood_score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> dict[str, Any]:
        """The best class and its score."""
        return self.predictions[0]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Capture:
        """Reads a record (fields this code does not know go to ``extra``)."""
        raw = json.loads(data)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in raw.items() if k not in known and k != "extra"}
        return cls(
            **{k: raw[k] for k in known if k in raw}, extra={**raw.get("extra", {}), **extra}
        )


def parse_time(value: str) -> datetime:
    """An ISO 8601 time (``Capture.time``) as an aware UTC datetime."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def image_key(sha256: str) -> str:
    """``captures/images/<sha256>``."""
    return f"{IMAGES}{sha256}"


def record_key(capture: Capture) -> str:
    """``captures/records/<model>/<day>/<time>-<request id>.json``: listed in time order."""
    when = parse_time(capture.time)
    return f"{RECORDS}{capture.model}/{when:%Y-%m-%d}/{when:%H%M%S%f}-{capture.request_id}.json"


def request_key(request_id: str) -> str:
    """``captures/requests/<request id>.json``: where a request id's record key is kept."""
    return f"{REQUESTS}{request_id}.json"


def write_capture(store: Store, capture: Capture, image: bytes) -> None:
    """Stores the image (unless that content is stored already), the record and its index.

    Raises:
        StorageError, botocore errors: the store refused a write (the caller decides what a
            failed capture means; serving logs and counts it, and answers anyway).
    """
    with contextlib.suppress(PreconditionFailed):  # that content is stored already
        store.put(image_key(capture.image_sha256), image, if_none_match=True)
    record = record_key(capture)
    store.put(record, capture.to_json())
    store.put(request_key(capture.request_id), json.dumps({"record": record}).encode())


def find_capture(store: Store, request_id: str) -> Capture | None:
    """The capture of a request id, or None when that request was not captured."""
    if not REQUEST_ID.fullmatch(request_id):
        return None
    try:
        pointer = json.loads(store.get(request_key(request_id)).data)  # type: ignore[union-attr]
        return Capture.from_json(store.get(pointer["record"]).data)  # type: ignore[union-attr]
    except ObjectNotFound:
        return None


def read_captures(
    store: Store, model: str, since: timedelta | None = None, now: datetime | None = None
) -> Iterator[Capture]:
    """A model's captures, oldest first, of the last ``since`` (None: all of them).

    Unreadable records (a partial write, a hand edit) are skipped.
    """
    now = now or datetime.now(UTC)
    start = now - since if since is not None else None
    prefix = f"{RECORDS}{model}/"
    for day in sorted(store.list_folders(prefix)):
        if start is not None and day < f"{start:%Y-%m-%d}":
            continue
        for key in store.list(f"{prefix}{day}/"):
            try:
                capture = Capture.from_json(store.get(key).data)  # type: ignore[union-attr]
            except (ObjectNotFound, ValueError, TypeError, KeyError):
                continue
            if start is None or parse_time(capture.time) >= start:
                yield capture
