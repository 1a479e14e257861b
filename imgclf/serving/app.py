"""The predict function's routes over its parts: settings, models, URL fetcher, logs, metrics.

``build_router`` wires them; ``lambda_func.py`` builds one router per execution environment, and
tests build their own from real parts (another model folder, another fetcher) with no patching.

Routes: ``POST /predict`` (the default model), ``POST /models/{name}/predict``, ``GET /models``,
``GET /models/{name}``, ``GET /model`` (the default model's description), ``GET /health``; the web
console's: ``GET /`` and ``GET /console/{file}`` (public files, ``static``), ``POST /uploads`` and
``GET /uploads/status`` (``uploads``), ``GET /jobs`` (``jobs``), ``GET /models/{name}/versions/
{version}``; and the admin writes (``auth.ADMIN_ROUTES``): ``POST /models/{name}/uploads``,
``POST /models/{name}/promote``, ``POST /models/{name}/rollback`` (``admin``), and feedback on
captured answers: ``POST /feedback``, ``GET /feedback``, ``POST /feedback/{request_id}/approve``
and ``/reject`` (``feedback``). Predict answers carry their request id, are captured as
CAPTURE_FRACTION says and emit per-model metrics (``capture``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from botocore.exceptions import BotoCoreError, ClientError

from imgclf.serving.admin import RegistryService
from imgclf.serving.capture import Capturer, ModelMetrics
from imgclf.serving.feedback import FeedbackService
from imgclf.serving.fetch import UrlFetcher
from imgclf.serving.http import Request, Router
from imgclf.serving.jobs import list_jobs, parse_jobs_query, retraining
from imgclf.serving.model_holder import ModelCatalog
from imgclf.serving.predict import answer, parse_model_version, parse_predict_request
from imgclf.serving.static import Console
from imgclf.serving.uploads import DataBucket, UploadService
from imgclf.settings import ServeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictService:
    """The routes over one model catalog."""

    settings: ServeSettings
    models: ModelCatalog
    fetcher: UrlFetcher
    # Where {"s3_key"} inputs are read (None: they are refused).
    bucket: DataBucket | None = None
    # Request ids, captures and per-model metrics (None: request ids only).
    capturer: Capturer | None = None

    def predict(self, request: Request) -> dict[str, Any]:
        """``POST /predict`` and ``POST /models/{name}/predict``: classifies the request's
        image(s) with the model's live (or pinned) version."""
        settings = self.settings
        read_upload = self.bucket.read_upload if self.bucket is not None else None
        parsed = parse_predict_request(request, settings.max_batch, read_upload)
        model = self.models.get(request.path_params.get("name"), parsed.model_version)
        wanted = self.capturer.wanted(request.request_id, parsed) if self.capturer else set()
        images: dict[int, bytes] = {}

        def keep(index: int, image: bytes) -> None:
            if index in wanted:
                images[index] = image

        body = answer(
            parsed,
            model,
            self.fetcher.fetch,
            settings.default_top_k,
            settings.image_limits,
            keep if wanted else None,
        )
        body["timing_ms"]["total"] = round((time.perf_counter() - request.received_at) * 1000, 3)
        if self.capturer is not None:
            self.capturer.finish(request, parsed, model, body, images)
        else:
            body["request_id"] = request.request_id
        return body

    def health(self, request: Request) -> dict[str, Any]:
        """``GET /health``: 200 with the default model, 503 when it is not loaded; a model that
        failed its last refresh and kept its previous version is named under ``problems``."""
        body: dict[str, Any] = {"status": "ok", "model": self.models.get().ref}
        problems = self.models.problems()
        if problems:
            body["problems"] = problems
        return body

    def model_info(self, request: Request) -> dict[str, Any]:
        """``GET /model``: the default model's live (or ``?model_version=``) description."""
        version = parse_model_version(request.query.get("model_version"))
        return self.models.get(None, version).describe()

    def list_models(self, request: Request) -> dict[str, Any]:
        """``GET /models``: every model, its live version, metrics and retraining state, the
        default first."""
        return {
            "default": self.models.default,
            "models": [self.summary(name) for name in self.models.names()],
        }

    def model_detail(self, request: Request) -> dict[str, Any]:
        """``GET /models/{name}``: one model's summary and its published versions."""
        name = request.path_params["name"]
        body = self.summary(name)
        body["versions"] = self.models.versions(name)
        return body

    def summary(self, name: str) -> dict[str, Any]:
        """A model's summary with ``retraining``: its pending images and the threshold that
        starts a job (None when the data bucket cannot be read: the rest still answers)."""
        body = self.models.summary(name)
        body["retraining"] = None
        if self.bucket is not None:
            try:
                body["retraining"] = retraining(self.bucket, name)
            except (BotoCoreError, ClientError) as exc:
                log.warning("cannot count %s's pending images: %s", name, exc)
        return body

    def list_jobs(self, request: Request) -> dict[str, Any]:
        """``GET /jobs?model=<name>[&limit=N]``: a model's retraining jobs, newest first."""
        if self.bucket is None:
            return {"jobs": [], "pending_images": 0}
        return list_jobs(self.bucket, *parse_jobs_query(request))


def build_router(
    settings: ServeSettings,
    logger: Logger,
    metrics: Metrics,
    *,
    models: ModelCatalog | None = None,
    fetcher: UrlFetcher | None = None,
    bucket: DataBucket | None = None,
) -> Router:
    """The predict function's router.

    Args:
        settings: the serving settings.
        logger: structured logs.
        metrics: embedded metrics.
        models: the model catalog (default: one built from ``settings``, loading the default
            model now).
        fetcher: the URL fetcher (default: one built from ``settings``).
        bucket: the data bucket (default: DATA_BUCKET through boto3's default client).

    Returns:
        The router whose ``handle(event, context)`` answers Lambda events.
    """
    bucket = bucket if bucket is not None else DataBucket(settings)
    model_metrics = ModelMetrics(
        metrics.namespace or settings.metrics_namespace, settings.service_name
    )
    service = PredictService(
        settings,
        models if models is not None else ModelCatalog(settings, logger),
        fetcher if fetcher is not None else UrlFetcher.from_settings(settings),
        bucket,
        Capturer(settings, model_metrics, logger),
    )
    feedback = FeedbackService(settings, service.models, bucket, model_metrics)
    uploads = UploadService(settings, bucket)
    registry = RegistryService(settings, service.models)
    console = Console()
    return Router(
        routes={
            "/": {"GET": console.index},
            "/console/{file}": {"GET": console.asset},
            "/predict": {"POST": service.predict},
            "/health": {"GET": service.health},
            "/model": {"GET": service.model_info},
            "/models": {"GET": service.list_models},
            "/models/{name}": {"GET": service.model_detail},
            "/models/{name}/predict": {"POST": service.predict},
            "/models/{name}/versions/{version}": {"GET": registry.version_detail},
            "/models/{name}/promote": {"POST": registry.promote},
            "/models/{name}/rollback": {"POST": registry.rollback},
            "/models/{name}/uploads": {"POST": uploads.create_training_uploads},
            "/uploads": {"POST": uploads.create_upload},
            "/uploads/status": {"GET": uploads.upload_status},
            "/jobs": {"GET": service.list_jobs},
            "/feedback": {"GET": feedback.list, "POST": feedback.submit},
            "/feedback/{request_id}/approve": {"POST": feedback.approve},
            "/feedback/{request_id}/reject": {"POST": feedback.reject},
        },
        logger=logger,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
    )
