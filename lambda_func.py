"""PredictFunction: image classification on LiteRT behind API Gateway (no TensorFlow anywhere).

Routes: ``POST /predict`` (image body, multipart, JSON url / base64, batches), ``GET /health``,
``GET /model``. Events: API Gateway HTTP API (2.0), REST API (1.0) and Lambda Function URLs.
The model is loaded (and warmed up) once per container, when this module is imported.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from imgclf.fetch import UrlFetcher
from imgclf.http import Request, Router
from imgclf.model_holder import ModelHolder
from imgclf.predict import answer, parse_predict_request
from imgclf.settings import ServeSettings

settings = ServeSettings.from_env()
logger = Logger(service=settings.service_name)  # LOG_LEVEL is read by Powertools itself
metrics = Metrics(namespace=settings.metrics_namespace)
fetcher = UrlFetcher.from_settings(settings)
models = ModelHolder(settings, logger)


def predict(request: Request) -> dict[str, Any]:
    """``POST /predict``: classifies the request's image(s) with the live or pinned model."""
    parsed = parse_predict_request(request, settings.max_batch)
    model = models.get(parsed.model_version)
    body = answer(parsed, model, fetcher.fetch, settings.default_top_k, settings.image_limits)
    body["timing_ms"]["total"] = round((time.perf_counter() - request.received_at) * 1000, 3)
    return body


def health(request: Request) -> dict[str, Any]:
    """``GET /health``: 200 with the loaded model, 503 when none is loaded."""
    return {"status": "ok", "model": models.get().ref}


def model_info(request: Request) -> dict[str, Any]:
    """``GET /model``: the live (or ``?model_version=`` pinned) model's description."""
    return models.get(request.query.get("model_version")).describe()


router = Router(
    routes={
        "/predict": {"POST": predict},
        "/health": {"GET": health},
        "/model": {"GET": model_info},
    },
    logger=logger,
    metrics=metrics,
    max_body_bytes=settings.max_body_bytes,
)


@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (API Gateway REST / HTTP API and Function URL events)."""
    return router.handle(event, context)
