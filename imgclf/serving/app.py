"""The predict function's routes over its parts: settings, model holder, URL fetcher, logs, metrics.

``build_router`` wires them; ``lambda_func.py`` builds one router per execution environment, and
tests build their own from real parts (another model folder, another fetcher) with no patching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics

from imgclf.serving.fetch import UrlFetcher
from imgclf.serving.http import Request, Router
from imgclf.serving.model_holder import ModelHolder
from imgclf.serving.predict import answer, parse_predict_request
from imgclf.settings import ServeSettings


@dataclass(frozen=True)
class PredictService:
    """``POST /predict``, ``GET /health`` and ``GET /model`` over one model holder."""

    settings: ServeSettings
    models: ModelHolder
    fetcher: UrlFetcher

    def predict(self, request: Request) -> dict[str, Any]:
        """``POST /predict``: classifies the request's image(s) with the live or pinned model."""
        settings = self.settings
        parsed = parse_predict_request(request, settings.max_batch)
        model = self.models.get(parsed.model_version)
        body = answer(
            parsed, model, self.fetcher.fetch, settings.default_top_k, settings.image_limits
        )
        body["timing_ms"]["total"] = round((time.perf_counter() - request.received_at) * 1000, 3)
        return body

    def health(self, request: Request) -> dict[str, Any]:
        """``GET /health``: 200 with the loaded model, 503 when none is loaded."""
        return {"status": "ok", "model": self.models.get().ref}

    def model_info(self, request: Request) -> dict[str, Any]:
        """``GET /model``: the live (or ``?model_version=`` pinned) model's description."""
        return self.models.get(request.query.get("model_version")).describe()


def build_router(
    settings: ServeSettings,
    logger: Logger,
    metrics: Metrics,
    *,
    models: ModelHolder | None = None,
    fetcher: UrlFetcher | None = None,
) -> Router:
    """The predict function's router.

    Args:
        settings: the serving settings.
        logger: structured logs.
        metrics: embedded metrics.
        models: the model holder (default: one built from ``settings``, loading the model now).
        fetcher: the URL fetcher (default: one built from ``settings``).

    Returns:
        The router whose ``handle(event, context)`` answers Lambda events.
    """
    service = PredictService(
        settings,
        models if models is not None else ModelHolder(settings, logger),
        fetcher if fetcher is not None else UrlFetcher.from_settings(settings),
    )
    return Router(
        routes={
            "/predict": {"POST": service.predict},
            "/health": {"GET": service.health},
            "/model": {"GET": service.model_info},
        },
        logger=logger,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
    )
