"""What the predict path adds to an answer: its request id(s), a sampled capture, per-model metrics.

**Request ids.** Every answer carries ``request_id`` (API Gateway's request id, also in the
``x-request-id`` header). A batch's items are answers of their own: item ``i`` is
``<request id>-<i>`` (``results[i].request_id``), captured and given feedback under that id.

**Capture** (``CAPTURE_FRACTION``, default 0: images may be personal data). Whether an answer is
captured is decided by the hash of its id (``sampled``): the same id always gets the same answer,
and over many ids the share is the setting. A captured answer stores its image and record through
``imgclf.captures.write_capture`` (``captures/`` of DATA_BUCKET); an answer not sampled makes no
S3 call at all. A capture never fails a request: any error is logged, counted (``CaptureErrors``)
and the answer goes out as it is. Its client has short timeouts and one retry, so a slow S3 costs
a request a few seconds at worst, never the function's timeout.

**Metrics.** One CloudWatch embedded-metrics line per answered request, dimensions ``model`` and
``version`` (and Powertools' ``service``): ``ModelLatency`` (ms, the handler's time to the
answer), ``Top1Score`` (one value per answered image), ``LowConfidence`` (images whose top-1 score
is under LOW_CONFIDENCE_THRESHOLD), and with captures on ``Captures`` and ``CaptureErrors``.
Feedback adds ``Feedback``, ``FeedbackApproved`` and ``FeedbackRejected``
(``imgclf.serving.feedback``). Per-class counts are not metrics (too many dimensions): the
captures hold them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.config import Config

from imgclf.artifact import LoadedModel
from imgclf.captures import REQUEST_ID, Capture, write_capture
from imgclf.serving.http import Request
from imgclf.serving.predict import PredictRequest
from imgclf.settings import ServeSettings
from imgclf.storage import S3Store, Store

# A capture waits for S3 at most about (connect + read) x attempts; then it is an error.
CAPTURE_CLIENT_CONFIG = Config(
    signature_version="s3v4",
    connect_timeout=1,
    read_timeout=2,
    retries={"mode": "standard", "max_attempts": 2},
)


def sampled(request_id: str, fraction: float) -> bool:
    """Whether the answer ``request_id`` is captured: the first 8 bytes of its sha256, as a
    share of 2**64, fall under ``fraction`` (deterministic, uniform over ids)."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def item_ids(request_id: str, parsed: PredictRequest) -> list[str]:
    """The id of each answer: the request's for one image, ``<id>-<index>`` for a batch's."""
    if not parsed.batch:
        return [request_id]
    return [f"{request_id}-{index}" for index in range(len(parsed.sources))]


def input_kind(request: Request, kind: str) -> str:
    """``Capture.input_kind``: ``raw``, ``multipart``, ``base64``, ``url`` or ``s3_key``."""
    if kind == "bytes":
        return "multipart" if request.media_type == "multipart/form-data" else "raw"
    return kind


@dataclass(frozen=True)
class ModelMetrics:
    """Embedded metrics with the dimensions ``model`` and ``version``, one line per call."""

    namespace: str
    service: str

    def emit(
        self, ref: Mapping[str, Any], values: Mapping[str, tuple[MetricUnit, list[float]]]
    ) -> None:
        """Writes one EMF line: each metric with its values, for this model and version."""
        metrics = EphemeralMetrics(namespace=self.namespace, service=self.service)
        metrics.add_dimension(name="model", value=str(ref.get("name", "none")))
        metrics.add_dimension(name="version", value=str(ref.get("version", "none")))
        for name, (unit, points) in values.items():
            for point in points:
                metrics.add_metric(name=name, unit=unit, value=point)
        metrics.flush_metrics()


@dataclass
class Capturer:
    """Request ids, captures and per-model metrics of the predict route.

    Attributes:
        settings: CAPTURE_FRACTION, LOW_CONFIDENCE_THRESHOLD and DATA_BUCKET.
        metrics: where the per-model metrics go.
        logger: where capture failures are logged.
        store_factory: opens the data bucket on the first capture (default: DATA_BUCKET with
            ``CAPTURE_CLIENT_CONFIG``).
    """

    settings: ServeSettings
    metrics: ModelMetrics
    logger: Logger
    store_factory: Callable[[], Store] | None = None
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        """The data bucket, opened on first use (a function that never captures never opens it)."""
        if self._store is None:
            if self.store_factory is not None:
                self._store = self.store_factory()
            else:
                client = boto3.client("s3", config=CAPTURE_CLIENT_CONFIG)
                self._store = S3Store(self.settings.data_bucket, client=client)
        return self._store

    def wanted(self, request_id: str, parsed: PredictRequest) -> set[int]:
        """The indices of the images to keep for a capture (none when nothing is sampled)."""
        fraction = self.settings.capture_fraction
        return {i for i, id_ in enumerate(item_ids(request_id, parsed)) if sampled(id_, fraction)}

    def finish(
        self,
        request: Request,
        parsed: PredictRequest,
        model: LoadedModel,
        body: dict[str, Any],
        images: Mapping[int, bytes],
    ) -> None:
        """Adds the request ids to an answer, captures the sampled images, emits the metrics.

        Never raises for a capture: a failed one is logged and counted.

        Args:
            request: the HTTP request.
            parsed: what it asked for.
            model: the version that answered.
            body: the answer (``timing_ms.total`` set); gets ``request_id`` (and each batch
                item its own).
            images: the sampled images that were read, by index (``wanted``).
        """
        ids = item_ids(request.request_id, parsed)
        body["request_id"] = request.request_id
        answers = body["results"] if parsed.batch else [body]
        if parsed.batch:
            for item, id_ in zip(answers, ids, strict=True):
                item["request_id"] = id_
        latency_ms = float(body["timing_ms"].get("total", 0.0))
        scores = [a["predictions"][0]["score"] for a in answers if a.get("predictions")]
        threshold = self.settings.low_confidence_threshold
        values: dict[str, tuple[MetricUnit, list[float]]] = {
            "ModelLatency": (MetricUnit.Milliseconds, [latency_ms]),
            "Top1Score": (MetricUnit.NoUnit, scores),
            "LowConfidence": (MetricUnit.Count, [sum(1 for s in scores if s < threshold)]),
        }
        if self.settings.capture_fraction > 0:
            stored = errors = 0
            when = datetime.now(UTC).isoformat(timespec="microseconds")
            for index, image in sorted(images.items()):
                answer = answers[index]
                if not answer.get("predictions"):
                    continue  # an item that failed: nothing was answered
                kind = input_kind(request, parsed.sources[index].kind)
                ood = answer.get("ood")
                capture = Capture(
                    request_id=ids[index],
                    time=when,
                    model=model.name,
                    version=model.version,
                    predictions=answer["predictions"],
                    latency_ms=round(latency_ms, 3),
                    input_kind=kind,
                    image_sha256=hashlib.sha256(image).hexdigest(),
                    ood_score=ood.get("score") if isinstance(ood, Mapping) else None,
                )
                if self._write(capture, image):
                    stored += 1
                else:
                    errors += 1
            values["Captures"] = (MetricUnit.Count, [stored])
            values["CaptureErrors"] = (MetricUnit.Count, [errors])
        self.metrics.emit(model.ref, values)

    def _write(self, capture: Capture, image: bytes) -> bool:
        """Stores one capture; False (logged) when it could not be stored."""
        started = time.perf_counter()
        try:
            if not REQUEST_ID.fullmatch(capture.request_id):
                raise ValueError(f"request id {capture.request_id!r} cannot name a capture")
            write_capture(self.store, capture, image)
        except Exception as exc:  # noqa: BLE001 - a capture never fails the answer
            self.logger.warning(
                "capture failed",
                extra={
                    "capture_id": capture.request_id,
                    "error": f"{type(exc).__name__}: {exc}",
                    "capture_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            return False
        return True
