"""RetrainFunction: S3 upload events -> ingestion -> (enough new data, or asked) a training job.

Every record of the event is handled; ``s3:TestEvent``, removals and keys outside ``incoming/`` are
ignored. Uploads name their model (``incoming/<model>/<class>/<file>``); each model whose new images
reach RETRAIN_MIN_NEW_IMAGES, or that was asked for (``incoming/_retrain/<model>``), gets a job.
Duplicate and out-of-order deliveries are harmless: ingestion is content-addressed, and only one
job per model runs at a time (``imgclf.retrain.lock``). The training stack is imported only when
the ``lambda`` backend runs a job in this function, so a cold start that only ingests stays light.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger

from imgclf import layout
from imgclf.registry import AliasNotFound, Registry, list_models
from imgclf.retrain.ingest import Catalog, IngestResult, ingest_upload, uploads_from_event
from imgclf.retrain.launch import LockHeld, count_pending, start_job
from imgclf.retrain.records import JobRecord
from imgclf.settings import RetrainSettings
from imgclf.storage import Store, open_store

logger = Logger()
settings = RetrainSettings.from_env()
store = layout.data_store(settings.data_bucket)
registry_store = open_store(settings.model_registry_uri)


def _job_for(
    model: str,
    results: list[IngestResult],
    context: Any,
    store: Store,
    registry_store: Store,
    settings: RetrainSettings,
) -> dict[str, Any] | None:
    """Starts a job for ``model`` if one is due: asked for, or enough new images."""
    triggers = [r.trigger for r in results if r.trigger and r.model == model]
    new_images = count_pending(store, model, settings.min_new_images)
    if not triggers and new_images < settings.min_new_images:
        return None
    try:
        live = Registry(registry_store, model).read_live()[0]["version"]
    except AliasNotFound:
        live = None
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000

    def run_here(job_id: str) -> JobRecord:
        from imgclf.retrain.job import run_job  # the training stack, for this backend only

        return run_job(store, settings, job_id, deadline=deadline)

    try:
        return start_job(
            store,
            settings,
            model=model,
            reason="retrain requested" if triggers else f"{new_images} new images",
            mode="full" if any(t["mode"] == "full" for t in triggers) else "warm",
            live_version=live,
            run_in_process=run_here,
        ).to_dict()
    except LockHeld as exc:
        return {"skipped": str(exc)}


def handle(
    event: dict[str, Any],
    context: Any,
    store: Store,
    registry_store: Store,
    settings: RetrainSettings,
) -> dict[str, Any]:
    """Ingests the event's uploads and starts a job for each model that is due.

    Args:
        event: an S3 event notification.
        context: the Lambda context (its remaining time bounds the lambda backend).
        store: the data bucket.
        registry_store: the model registry's store.
        settings: the retrain settings.

    Returns:
        What each upload became, the ignored records, and the jobs started (by model).
    """
    uploads, ignored = uploads_from_event(event, settings.data_bucket)
    catalog = Catalog(store, set(list_models(registry_store)) if uploads else set())
    results = [ingest_upload(store, upload, settings, catalog) for upload in uploads]
    for result in results:
        for rejection in result.rejected:
            logger.warning("upload rejected", extra=rejection)
    answer: dict[str, Any] = {"uploads": [r.as_dict() for r in results], "ignored": ignored}
    models = sorted({r.model for r in results if r.model and (r.stored or r.trigger)})
    jobs = {m: _job_for(m, results, context, store, registry_store, settings) for m in models}
    jobs = {m: job for m, job in jobs.items() if job is not None}
    if jobs:
        answer["jobs"] = jobs
    logger.info("event handled", extra=answer)
    return answer


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The RetrainFunction entry point."""
    return handle(event, context, store, registry_store, settings)
