"""Feedback: a corrected label for a captured answer, reviewed, then sent to training.

The data bucket::

    feedback/pending/<request id>.json     given, waiting for an admin (``submit``)
    feedback/approved/<request id>.json    approved: the image went to ``incoming_key``
    feedback/rejected/<request id>.json    rejected: never reaches training

One record per request id, whatever its state: ``submit`` creates the pending record with
``If-None-Match`` after checking that no decided one exists, so a second feedback for the same
answer is a conflict. ``approve`` copies the captured image (``imgclf.captures``) to
``incoming/<model>/<label>/feedback-<sha256>.<ext>``, where the retrain function ingests it like
any upload (``imgclf.retrain.ingest``: decoded again, stored under its hash in ``train/`` or
``test/``); the approved record is its provenance (which answer, which label, who, when, which
key), as ingestion keeps no object metadata. ``reject`` moves the record to ``rejected/``.

Serving's admin routes (``imgclf.serving.feedback``) and the command line
(``python -m imgclf.feedback``) both use these functions. Core: storage, layout and captures only
(Pillow names an image's format), so the serve image runs it.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from PIL import Image

from imgclf import captures, layout
from imgclf.captures import Capture
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store

FEEDBACK = "feedback/"
PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
STATUSES = (PENDING, APPROVED, REJECTED)
# The file name an approved image takes under incoming/<model>/<label>/.
INCOMING_NAME = "feedback-{sha256}.{suffix}"
SUFFIX_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
MAX_LIST = 1000


class FeedbackError(Exception):
    """Base of the errors below; ``code`` is the API's error code."""

    code = "feedback_error"


class NoCapture(FeedbackError):
    """The request id names no captured answer (never captured, expired, or not an id)."""

    code = "capture_not_found"


class FeedbackExists(FeedbackError):
    """That answer has feedback already (pending or decided)."""

    code = "feedback_exists"


class NotPending(FeedbackError):
    """No pending feedback for that request id: none at all, or ``decided`` already."""

    code = "feedback_not_found"

    def __init__(self, message: str, decided: str | None = None) -> None:
        super().__init__(message)
        self.decided = decided


class ImageGone(FeedbackError):
    """The captured image is no longer stored (expired, or forgotten)."""

    code = "capture_image_gone"


class NotTrainable(FeedbackError):
    """The model has no training data here: an approved image would be rejected by ingestion."""

    code = "model_not_trainable"


@dataclass(frozen=True)
class Feedback:
    """One feedback record.

    Attributes:
        request_id: the captured answer's id.
        label: the label the answer should have had.
        model, version: who answered.
        predicted, score: the answer's top-1 class and score.
        image_sha256: the captured image (``captures/images/<sha256>``).
        time: when the feedback was given (ISO 8601 UTC); ``by``: who gave it (a JWT ``sub``).
        status: ``pending``, ``approved`` or ``rejected``.
        decided_at, decided_by, reason: the review.
        incoming_key: where an approved image was put for ingestion.
    """

    request_id: str
    label: str
    model: str
    version: str
    predicted: str
    score: float
    image_sha256: str
    time: str
    by: str | None = None
    status: str = PENDING
    decided_at: str | None = None
    decided_by: str | None = None
    reason: str | None = None
    incoming_key: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Feedback:
        raw = json.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def feedback_key(status: str, request_id: str) -> str:
    """``feedback/<status>/<request id>.json``."""
    return f"{FEEDBACK}{status}/{request_id}.json"


def _exists(store: Store, key: str) -> bool:
    """Whether ``key`` exists, by a listing (a role that may list the prefix, not read 404s)."""
    return any(found == key for found in store.list(key))


def status_of(store: Store, request_id: str) -> str | None:
    """The state of a request id's feedback, or None when there is none."""
    for status in STATUSES:
        if _exists(store, feedback_key(status, request_id)):
            return status
    return None


def read_feedback(store: Store, status: str, request_id: str) -> Feedback:
    """One record.

    Raises:
        ObjectNotFound: none in that state.
    """
    return Feedback.from_json(store.get(feedback_key(status, request_id)).data)  # type: ignore[union-attr]


def submit(
    store: Store, capture: Capture, label: str, by: str | None = None, time: str | None = None
) -> Feedback:
    """Records a corrected label for a captured answer, pending review.

    The caller checks that ``label`` is a class of the model (serving: the live version's).

    Raises:
        FeedbackExists: the answer has feedback already.
    """
    if status_of(store, capture.request_id) is not None:
        raise FeedbackExists(f"request {capture.request_id} has feedback already")
    top1 = capture.top1 if capture.predictions else {"label": "", "score": 0.0}
    record = Feedback(
        request_id=capture.request_id,
        label=label,
        model=capture.model,
        version=capture.version,
        predicted=str(top1.get("label", "")),
        score=float(top1.get("score", 0.0)),
        image_sha256=capture.image_sha256,
        time=time or now_iso(),
        by=by,
    )
    try:
        store.put(feedback_key(PENDING, record.request_id), record.to_json(), if_none_match=True)
    except PreconditionFailed as exc:
        raise FeedbackExists(f"request {capture.request_id} has feedback already") from exc
    return record


def _pending(store: Store, request_id: str) -> tuple[Feedback, str]:
    """The pending record and its ETag.

    Raises:
        NotPending: there is none (it may have been decided already: the message says).
    """
    if not captures.REQUEST_ID.fullmatch(request_id):
        raise NotPending(f"{request_id!r} is not a request id")
    key = feedback_key(PENDING, request_id)
    # Listed first: a role that may list feedback/ but whose GET of a missing key is a 403.
    found = None
    if _exists(store, key):
        with contextlib.suppress(ObjectNotFound):
            found = store.get(key)
    if found is None:
        status = status_of(store, request_id)
        said = f"it was {status} already" if status else "there is none"
        raise NotPending(f"no pending feedback for request {request_id}: {said}", status)
    return Feedback.from_json(found.data), found.etag


def model_classes(store: Store, model: str) -> set[str]:
    """The classes a model's training data has (``train/<model>/``, ``test/<model>/``)."""
    return set(store.list_folders(layout.model_prefix(layout.TRAIN, model))) | set(
        store.list_folders(layout.model_prefix(layout.TEST, model))
    )


def image_suffix(image: bytes) -> str:
    """The file suffix of an image's real format (``jpg``, ``png``, ...)."""
    with Image.open(io.BytesIO(image), formats=list(SUFFIX_OF_FORMAT)) as opened:
        return SUFFIX_OF_FORMAT[str(opened.format)]


def _decide(store: Store, record: Feedback, etag: str) -> Feedback:
    """Writes the decided record, then removes the pending one (if it is still the one read)."""
    try:
        store.put(
            feedback_key(record.status, record.request_id), record.to_json(), if_none_match=True
        )
    except PreconditionFailed as exc:
        raise NotPending(
            f"request {record.request_id} was {record.status} meanwhile", record.status
        ) from exc
    with contextlib.suppress(PreconditionFailed):
        store.delete(feedback_key(PENDING, record.request_id), if_match=etag)
    return record


def approve(store: Store, request_id: str, by: str | None = None) -> Feedback:
    """Sends a pending feedback's image to ingestion under its corrected label.

    Raises:
        NotPending: no pending feedback for that id.
        NotTrainable: the model has no training data here (it takes no uploads).
        ImageGone: the captured image expired or was forgotten (reject the feedback instead).
    """
    record, etag = _pending(store, request_id)
    if not model_classes(store, record.model):
        raise NotTrainable(
            f"model {record.model} has no training data here (it was not trained from uploads), "
            "so ingestion would refuse the image: reject this feedback or keep it pending"
        )
    try:
        image = store.get(captures.image_key(record.image_sha256)).data  # type: ignore[union-attr]
    except ObjectNotFound:
        raise ImageGone(
            f"the image of request {request_id} is no longer stored (captures expire, and "
            "forgotten images are deleted): reject this feedback"
        ) from None
    name = INCOMING_NAME.format(sha256=record.image_sha256, suffix=image_suffix(image))
    key = f"{layout.INCOMING}{record.model}/{record.label}/{name}"
    store.put(key, image)
    decided = replace(
        record, status=APPROVED, decided_at=now_iso(), decided_by=by, incoming_key=key
    )
    return _decide(store, decided, etag)


def reject(
    store: Store, request_id: str, by: str | None = None, reason: str | None = None
) -> Feedback:
    """Moves a pending feedback to ``rejected/``: its image never reaches training.

    Raises:
        NotPending: no pending feedback for that id.
    """
    record, etag = _pending(store, request_id)
    decided = replace(record, status=REJECTED, decided_at=now_iso(), decided_by=by, reason=reason)
    return _decide(store, decided, etag)


def list_feedback(
    store: Store, status: str = PENDING, model: str | None = None, limit: int = 100
) -> Iterator[Feedback]:
    """Records in one state, oldest key first (request ids have no order: sort by ``time``).

    Unreadable records are skipped.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}")
    count = 0
    for key in store.list(f"{FEEDBACK}{status}/"):
        if count >= limit:
            return
        try:
            record = Feedback.from_json(store.get(key).data)  # type: ignore[union-attr]
        except (ObjectNotFound, ValueError, TypeError):
            continue
        if model is None or record.model == model:
            count += 1
            yield record


def to_dict(record: Feedback) -> dict[str, Any]:
    return asdict(record)
