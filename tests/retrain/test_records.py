"""imgclf.retrain.records and the jobs command line, against moto's S3."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from helpers import ROOT
from imgclf import layout
from imgclf.retrain.lock import acquire_lock
from imgclf.retrain.records import JobRecord, JobStatus, list_jobs, read_job, write_job

MODEL = "scene"


def test_a_record_round_trips_with_its_status_typed(new_bucket: Callable[[str], str]) -> None:
    store = layout.data_store(new_bucket("data"))
    record = write_job(store, JobRecord(id="20260101T000000Z-aaaa", status=JobStatus.QUEUED))
    record = write_job(store, record, status=JobStatus.FAILED, error="boom", stage="train")
    again = read_job(store, record.id)
    assert again == record and again.status is JobStatus.FAILED and again.status.finished
    assert list_jobs(store) == [record.id]  # the lock and pending markers are not jobs
    assert JobRecord.from_json(b'{"id": "x", "status": "running", "future_field": 1}').id == "x"


def jobs_cli(bucket: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgclf.retrain", "--bucket", bucket, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
        check=True,
    )


@pytest.mark.slow
def test_the_jobs_command_says_what_is_pending_and_when_a_job_starts(
    new_bucket: Callable[[str], str],
) -> None:
    bucket = new_bucket("data")
    store = layout.data_store(bucket)
    # GIVEN no job yet and 3 new images
    for i in range(3):
        store.put(f"{layout.PENDING}scene/sea/{i}.jpg", b"")
    out = jobs_cli(bucket, "list", RETRAIN_MIN_NEW_IMAGES="5").stdout
    # THEN it prints its header, says there is no job, and counts what is pending
    assert out.splitlines()[0].split() == [
        "job",
        "model",
        "status",
        "backend",
        "version",
        "outcome",
    ]
    assert "(no training job yet)" in out
    assert "scene: 3 of 5 new images pending; a job starts at 5" in out
    # WHEN a job holds the lock, THEN the next one waits for it
    running = JobRecord(id="20260101T000000Z-bbbb", status=JobStatus.RUNNING, model=MODEL)
    write_job(store, running, stage="train")
    acquire_lock(store, MODEL, "20260101T000000Z-bbbb", ttl=60)
    out = jobs_cli(bucket, "list", RETRAIN_MIN_NEW_IMAGES="5").stdout
    assert out.splitlines()[1].split() == ["20260101T000000Z-bbbb", MODEL, "running", "-", "train"]
    assert "job 20260101T000000Z-bbbb is running" in out
    # AND a request is an object under incoming/_retrain/
    requested = jobs_cli(bucket, "request", "--model", MODEL, "--mode", "full").stdout
    assert f"incoming/_retrain/{MODEL}.json" in requested
    assert len(list(store.list(layout.TRIGGER_PREFIX))) == 1
