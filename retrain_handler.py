"""RetrainFunction: S3 upload events -> ingestion -> (enough new data, or asked) a training job.

Every record of the event is handled; ``s3:TestEvent``, removals and keys outside ``incoming/`` are
ignored. Duplicate and out-of-order deliveries are harmless: ingestion is content-addressed, and
only one job runs at a time (``imgclf.jobs``).
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger

from imgclf.ingest import ingest_upload, known_classes, uploads_from_event
from imgclf.jobs import count_pending, start_job
from imgclf.registry import AliasNotFound, Registry, open_registry
from imgclf.retrain_job import run_job
from imgclf.settings import RetrainSettings
from imgclf.storage import Store, open_store

logger = Logger()
settings = RetrainSettings.from_env()
store = open_store(f"s3://{settings.data_bucket}")
registry = open_registry(settings.model_registry_uri, settings.model_name)


def handle(
    event: dict[str, Any],
    context: Any,
    store: Store,
    registry: Registry,
    settings: RetrainSettings,
) -> dict[str, Any]:
    """Ingests the event's uploads and starts a job when one is due.

    Args:
        event: an S3 event notification.
        context: the Lambda context (its remaining time bounds the lambda backend).
        store: the data bucket.
        registry: the model registry.
        settings: the retrain settings.

    Returns:
        What each upload became, the ignored records, and the job started (if any).
    """
    uploads, ignored = uploads_from_event(event, settings.data_bucket)
    known = known_classes(store) if uploads else set()
    results = [ingest_upload(store, upload, settings, known) for upload in uploads]
    for result in results:
        for rejection in result.rejected:
            logger.warning("upload rejected", extra=rejection)
    triggers = [r.trigger for r in results if r.trigger]
    new_images = count_pending(store, settings.min_new_images) if uploads else 0
    answer: dict[str, Any] = {"uploads": [r.as_dict() for r in results], "ignored": ignored}
    if triggers or new_images >= settings.min_new_images:
        try:
            live = registry.read_live()[0]["version"]
        except AliasNotFound:
            live = None
        deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
        answer["job"] = start_job(
            store,
            settings,
            reason="retrain requested" if triggers else f"{new_images} new images",
            mode="full" if any(t["mode"] == "full" for t in triggers) else "warm",
            live_version=live,
            run_in_process=lambda job_id: run_job(
                store, registry, settings, job_id, deadline=deadline
            ),
        )
    logger.info("event handled", extra=answer)
    return answer


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The RetrainFunction entry point."""
    return handle(event, context, store, registry, settings)
