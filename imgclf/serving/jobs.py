"""``GET /jobs?model=``: the retraining jobs of a model, newest first, as their records say.

Each job writes its record (``jobs/<id>.json``, ``imgclf.retrain.records``) as it goes: ``queued``,
``running`` with the stage it is in (snapshot, train, convert, evaluate, publish, promote), then
``succeeded`` (with the version it published and whether it went live) or ``failed`` (with the
error). Serving reads them as JSON: the serve image has no retraining code.
"""

from __future__ import annotations

import json
import re
from typing import Any

from imgclf import layout
from imgclf.errors import BadRequest
from imgclf.serving.http import Request
from imgclf.serving.uploads import DataBucket

DEFAULT_LIMIT = 5
MAX_LIMIT = 50
# Records read at most per request while looking for a model's jobs (ids sort by start time).
MAX_READS = 100
# What a record holds that is no client's business (where the job ran).
PRIVATE_FIELDS = ("pid", "host", "launched")


def list_jobs(bucket: DataBucket, model: str, limit: int) -> dict[str, Any]:
    """A model's newest jobs and how many ingested images wait for the next one.

    Args:
        bucket: the data bucket.
        model: the model's name.
        limit: how many jobs at most.

    Returns:
        ``{"model", "jobs": [record, ...], "pending_images", "retrain_threshold"}``.
    """
    client, name = bucket.client, bucket.bucket
    ids: list[str] = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=name, Prefix=layout.JOBS, Delimiter="/"
    )
    for page in pages:
        ids += [
            item["Key"][len(layout.JOBS) : -len(".json")]
            for item in page.get("Contents", [])
            if item["Key"].endswith(".json")
        ]
    jobs = []
    for job_id in sorted(ids, reverse=True)[:MAX_READS]:
        key = layout.job_key(job_id)
        record = json.loads(client.get_object(Bucket=name, Key=key)["Body"].read())
        if record.get("model") == model:
            jobs.append({k: v for k, v in record.items() if k not in PRIVATE_FIELDS})
            if len(jobs) == limit:
                break
    return {"model": model, "jobs": jobs, **retraining(bucket, model)}


def retraining(bucket: DataBucket, model: str) -> dict[str, int]:
    """How many ingested images of a model wait for its next job, and how many start one.

    Returns:
        ``{"pending_images", "retrain_threshold"}`` (RETRAIN_MIN_NEW_IMAGES).
    """
    pending = 0
    pages = bucket.client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket.bucket, Prefix=layout.model_prefix(layout.PENDING, model)
    )
    for page in pages:
        pending += len(page.get("Contents", []))
    return {"pending_images": pending, "retrain_threshold": bucket.settings.retrain_min_new_images}


def parse_jobs_query(request: Request) -> tuple[str, int]:
    """``?model=<name>[&limit=N]`` of ``GET /jobs``.

    Raises:
        BadRequest: no valid model name, or a limit outside 1..MAX_LIMIT.
    """
    model = request.query.get("model", "")
    if not layout.NAME.fullmatch(model):
        raise BadRequest("name a model: /jobs?model=<name>", code="invalid_parameter")
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if not re.fullmatch(r"[0-9]{1,2}", raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1 to {MAX_LIMIT}", code="invalid_parameter")
    return model, int(raw)
