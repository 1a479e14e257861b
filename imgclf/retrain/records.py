"""Job records: one typed record per training job (``jobs/<id>.json``), one writer at a time.

The launcher writes ``queued``; the job itself ``running`` (with its stage), then ``succeeded`` or
``failed``. A job whose lock expired while it was not finished is marked ``failed`` by the next one.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from imgclf import layout
from imgclf.storage import Store


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


def now() -> float:
    """Seconds since the epoch (the lock's clock; jobs on other machines compare it too)."""
    return time.time()


def iso(seconds: float) -> str:
    """Formats epoch seconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def new_job_id() -> str:
    """Returns a sortable, unique job id such as ``20260101T120000Z-1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class JobRecord:
    """``jobs/<id>.json``: what a job was asked to do, how far it got and how it ended."""

    id: str
    status: JobStatus
    # The model the job trains (its data under train/<model>/, its versions in the registry).
    model: str = ""
    reason: str = ""
    # warm (fine-tune the live model) or full (search from scratch).
    mode: str = "warm"
    backend: str = ""
    # The live version when the job was started (the sagemaker backend mounts it).
    live_version: str | None = None
    created_at: str = ""
    updated_at: str = ""
    launched: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    pid: int | None = None
    host: str | None = None
    stage: str | None = None
    # Images ingested since the last job when this one took its snapshot.
    pending: int | None = None
    warm_start: bool | None = None
    # Images per class, per split, in the snapshot.
    data: dict[str, Any] = field(default_factory=dict)
    # Seconds each stage took (snapshot, train, convert, evaluate, publish, promote), so far.
    stages: dict[str, float] = field(default_factory=dict)
    # What the embedding cache gave: shards downloaded and uploaded, images cached and computed.
    embedding_cache: dict[str, Any] = field(default_factory=dict)
    compared_with: str | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    promoted: bool | None = None
    note: str | None = None
    error: str | None = None
    finished_at: str | None = None

    @classmethod
    def from_json(cls, content: bytes) -> JobRecord:
        """Reads a record (fields this code does not know are left out)."""
        data = json.loads(content)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "status": JobStatus(data["status"])})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``jobs/<id>.json``."""
        return {**dataclasses.asdict(self), "status": str(self.status)}

    def replace(self, **changes: Any) -> JobRecord:
        """A copy with ``changes`` (not written: see ``write_job``)."""
        return dataclasses.replace(self, **changes)


def read_job(store: Store, job_id: str) -> JobRecord:
    """Returns a job's record.

    Raises:
        ObjectNotFound: no such job.
    """
    return JobRecord.from_json(store.get(layout.job_key(job_id)).data)


def write_job(store: Store, record: JobRecord, **changes: Any) -> JobRecord:
    """Writes a job's record with ``changes`` (only its one writer at a time writes it).

    Returns:
        The record as written.
    """
    record = record.replace(**changes, updated_at=iso(now()))
    body = json.dumps(record.to_dict(), indent=2, default=str).encode()
    store.put(layout.job_key(record.id), body)
    return record


def list_jobs(store: Store) -> list[str]:
    """Returns the job ids, oldest first."""
    prefix = layout.JOBS
    return sorted(
        key[len(prefix) : -len(".json")]
        for key in store.list(prefix)
        if key.endswith(".json") and "/" not in key[len(prefix) :]
    )
