"""RetrainFunction: S3 upload events -> ingestion -> (enough new data, or asked) a training job.

Every record of the event is handled; ``s3:TestEvent``, removals and keys outside ``incoming/`` are
ignored. Duplicate and out-of-order deliveries are harmless: ingestion is content-addressed, and
only one job runs at a time (``imgclf.retrain.lock``). The training stack is imported only when
the ``lambda`` backend runs a job in this function, so a cold start that only ingests stays light.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger

from imgclf import layout
from imgclf.registry import AliasNotFound, Registry, open_registry
from imgclf.retrain.ingest import ingest_upload, known_classes, uploads_from_event
from imgclf.retrain.launch import LockHeld, count_pending, start_job
from imgclf.retrain.records import JobRecord
from imgclf.settings import RetrainSettings
from imgclf.storage import Store

logger = Logger()
settings = RetrainSettings.from_env()
store = layout.data_store(settings.data_bucket)
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

        def run_here(job_id: str) -> JobRecord:
            from imgclf.retrain.job import run_job  # the training stack, for this backend only

            return run_job(store, registry, settings, job_id, deadline=deadline)

        try:
            answer["job"] = start_job(
                store,
                settings,
                reason="retrain requested" if triggers else f"{new_images} new images",
                mode="full" if any(t["mode"] == "full" for t in triggers) else "warm",
                live_version=live,
                run_in_process=run_here,
            ).to_dict()
        except LockHeld as exc:
            answer["job"] = {"skipped": str(exc)}
    logger.info("event handled", extra=answer)
    return answer


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The RetrainFunction entry point."""
    return handle(event, context, store, registry, settings)
