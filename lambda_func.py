"""PredictFunction: image classification on LiteRT behind API Gateway (no TensorFlow anywhere).

Routes: ``POST /predict`` (image body, multipart, JSON url / base64, batches), ``GET /health``,
``GET /model``. Events: API Gateway HTTP API (2.0), REST API (1.0) and Lambda Function URLs.
The model is loaded (and warmed up) once per execution environment, when this module is imported;
the routes themselves are in ``imgclf.serving.app``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics

from imgclf.serving.app import build_router
from imgclf.settings import ServeSettings

settings = ServeSettings.from_env()
logger = Logger(service=settings.service_name)  # LOG_LEVEL is read by Powertools itself
metrics = Metrics(namespace=settings.metrics_namespace)
router = build_router(settings, logger, metrics)


@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (API Gateway REST / HTTP API and Function URL events)."""
    return router.handle(event, context)
