"""Training jobs: when to start one, the lock that lets only one run, status records, backends.

In the data bucket::

    jobs/lock.json          {"job_id", "renewed_at", "expires_at"}: taken with If-None-Match,
                            renewed and released with If-Match; an expired lock is taken over with
                            If-Match on the expired copy, so a crashed job blocks others for at
                            most RETRAIN_LOCK_TTL_SECONDS
    jobs/<id>.json          the job's status record (queued, running + stage, succeeded, failed)
    jobs/pending/...        markers of images ingested since the last job (``imgclf.ingest``)

A job is launched on a backend: ``local`` (a separate process on this machine), ``lambda`` (in the
calling function, within its remaining time) or ``sagemaker`` (a training job running the same
entry point, ``python -m imgclf.retrain_job --job-id ID``, in the training image).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3

from imgclf.ingest import PENDING, TRAIN_MODES, TRIGGER_PREFIX
from imgclf.settings import (
    ENV_DATA_BUCKET,
    ENV_MODEL_NAME,
    ENV_MODEL_REGISTRY_URI,
    ENV_RETRAIN_LOCK_TTL_SECONDS,
    ENV_RETRAIN_QUALITY_TOLERANCE,
    ENV_RETRAIN_QUANTIZATION,
    ENV_RETRAIN_TRAIN_ARGS,
    PROJECT_ROOT,
    RetrainSettings,
)
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store, open_store

LOCK_KEY = "jobs/lock.json"
JOBS = "jobs/"
TERMINAL = ("succeeded", "failed")
# Where SageMaker puts the channels in the container (its File input mode).
SAGEMAKER_CHANNELS_DIR = "/opt/ml/input/data"
SAGEMAKER_MAX_RUNTIME_SECONDS = 6 * 3600


def now() -> float:
    """Seconds since the epoch (the lock's clock; jobs on other machines compare it too)."""
    return time.time()


def iso(seconds: float) -> str:
    """Formats epoch seconds as ISO 8601 UTC."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def new_job_id() -> str:
    """Returns a sortable, unique job id such as ``20260101T120000Z-1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


class LockLost(Exception):
    """The job no longer holds the lock (it expired and another job took it)."""


@dataclass
class Lock:
    """The job lock as its holder knows it: whose it is and the ETag of the copy it wrote."""

    store: Store
    job_id: str
    etag: str
    ttl: float
    # The job whose expired lock this one replaced (it stopped renewing it: it crashed).
    took_over_from: str | None = None

    def body(self) -> bytes:
        """The lock object's content: holder and expiry, from now."""
        t = now()
        return json.dumps(
            {"job_id": self.job_id, "renewed_at": iso(t), "expires_at": t + self.ttl}
        ).encode()

    def renew(self) -> None:
        """Pushes the expiry ``ttl`` seconds ahead.

        Raises:
            LockLost: the lock is no longer ours.
        """
        try:
            self.etag = self.store.put(LOCK_KEY, self.body(), if_match=self.etag)
        except PreconditionFailed as exc:
            raise LockLost(f"job {self.job_id} lost the lock") from exc

    def release(self) -> None:
        """Deletes the lock if it is still ours (if not, there is nothing to release)."""
        with contextlib.suppress(PreconditionFailed):
            self.store.delete(LOCK_KEY, if_match=self.etag)


def acquire_lock(store: Store, job_id: str, ttl: float) -> Lock | None:
    """Takes the job lock for ``job_id``: free, or held by a job whose lock expired.

    Returns:
        The lock, or None when another job holds it.
    """
    lock = Lock(store, job_id, "", ttl)
    for _ in range(3):
        try:
            lock.etag = store.put(LOCK_KEY, lock.body(), if_none_match=True)
            return lock
        except PreconditionFailed:
            pass
        try:
            current = store.get(LOCK_KEY)
        except ObjectNotFound:
            continue  # released between our two requests: try again
        holder = json.loads(current.data)
        if holder.get("expires_at", 0) > now():
            return None
        try:
            # Only replaces the expired copy we read: of two jobs taking over, one wins.
            lock.etag = store.put(LOCK_KEY, lock.body(), if_match=current.etag)
            lock.took_over_from = holder.get("job_id")
            return lock
        except PreconditionFailed:
            return None
    return None


def resume_lock(store: Store, job_id: str, ttl: float) -> Lock:
    """Returns the lock taken for ``job_id`` by whoever launched it, as the job's own.

    Raises:
        LockLost: the lock is free or held for another job.
    """
    try:
        current = store.get(LOCK_KEY)
    except ObjectNotFound as exc:
        raise LockLost(f"no lock is held for job {job_id}") from exc
    if json.loads(current.data).get("job_id") != job_id:
        raise LockLost(f"the lock is held for another job than {job_id}")
    lock = Lock(store, job_id, current.etag, ttl)
    lock.renew()
    return lock


class Heartbeat:
    """Renews a lock every third of its TTL from a thread, and remembers if it was lost."""

    def __init__(self, lock: Lock) -> None:
        self.lock = lock
        self.lost: LockLost | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lock.ttl / 3):
            try:
                self.lock.renew()
            except LockLost as exc:
                self.lost = exc
                return
            except Exception:  # noqa: BLE001 - a transient S3 error: try again next beat
                continue

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Renews now; raises ``LockLost`` if the lock is no longer ours."""
        if self.lost is not None:
            raise self.lost
        self.lock.renew()


def job_key(job_id: str) -> str:
    """Returns the key of a job's status record."""
    return f"{JOBS}{job_id}.json"


def read_job(store: Store, job_id: str) -> dict[str, Any]:
    """Returns a job's status record.

    Raises:
        ObjectNotFound: no such job.
    """
    return json.loads(store.get(job_key(job_id)).data)


def write_job(store: Store, record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Updates a job's status record (only its one writer at a time writes it).

    Returns:
        The new record.
    """
    record = {**record, **changes, "updated_at": iso(now())}
    store.put(job_key(record["id"]), json.dumps(record, indent=2, default=str).encode())
    return record


def list_jobs(store: Store) -> list[str]:
    """Returns the job ids, oldest first."""
    return sorted(
        key[len(JOBS) : -len(".json")]
        for key in store.list(JOBS)
        if key.endswith(".json") and "/" not in key[len(JOBS) :] and key != LOCK_KEY
    )


def count_pending(store: Store, limit: int) -> int:
    """Counts the images ingested since the last job, up to ``limit`` (enough to decide)."""
    return sum(1 for _ in itertools.islice(store.list(PENDING), limit))


def sagemaker_request(
    settings: RetrainSettings, job_id: str, live_version: str | None
) -> dict[str, Any]:
    """Builds the CreateTrainingJob request that runs ``imgclf.retrain_job`` in the training image.

    Channels: ``train`` and ``test`` (the data bucket's splits) and, to warm-start from, ``live``
    (the live version's folder in the model bucket). The job finds them under
    ``/opt/ml/input/data/<channel>`` and still reads and writes its status, lock and registry
    through S3 as every backend does.

    Args:
        settings: bucket names, registry, image, role and instance type.
        job_id: the job to run.
        live_version: the version to warm-start from (None: no ``live`` channel).

    Returns:
        Keyword arguments for ``boto3.client("sagemaker").create_training_job``.

    Raises:
        ValueError: SAGEMAKER_IMAGE_URI, SAGEMAKER_ROLE_ARN or MODEL_REGISTRY_URI is not set.
    """
    if not (settings.sagemaker_image_uri and settings.sagemaker_role_arn):
        raise ValueError("the sagemaker backend needs SAGEMAKER_IMAGE_URI and SAGEMAKER_ROLE_ARN")
    if not settings.model_registry_uri.startswith("s3://"):
        raise ValueError("the sagemaker backend needs an s3:// MODEL_REGISTRY_URI")

    def channel(name: str, uri: str) -> dict[str, Any]:
        source = {
            "S3DataType": "S3Prefix",
            "S3Uri": uri,
            "S3DataDistributionType": "FullyReplicated",
        }
        return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "InputMode": "File"}

    data = f"s3://{settings.data_bucket}"
    channels = [channel("train", f"{data}/train/"), channel("test", f"{data}/test/")]
    if live_version is not None:
        registry = settings.model_registry_uri.rstrip("/")
        channels.append(
            channel("live", f"{registry}/{settings.model_name}/versions/{live_version}/")
        )
    name = re.sub(r"[^a-zA-Z0-9-]", "-", f"imgclf-{settings.model_name}-{job_id}")[:63]
    return {
        "TrainingJobName": name,
        "RoleArn": settings.sagemaker_role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": settings.sagemaker_image_uri,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python3", "-m", "imgclf.retrain_job"],
            "ContainerArguments": ["--job-id", job_id, "--channels", SAGEMAKER_CHANNELS_DIR],
        },
        "InputDataConfig": channels,
        # The job publishes to the registry itself; SageMaker's own output (empty) goes here.
        "OutputDataConfig": {"S3OutputPath": f"{data}/{JOBS}sagemaker/"},
        "ResourceConfig": {
            "InstanceType": settings.sagemaker_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": SAGEMAKER_MAX_RUNTIME_SECONDS},
        "Environment": {
            ENV_DATA_BUCKET: settings.data_bucket,
            ENV_MODEL_REGISTRY_URI: settings.model_registry_uri,
            ENV_MODEL_NAME: settings.model_name,
            ENV_RETRAIN_QUALITY_TOLERANCE: str(settings.quality_tolerance),
            ENV_RETRAIN_LOCK_TTL_SECONDS: str(settings.lock_ttl_seconds),
            ENV_RETRAIN_TRAIN_ARGS: " ".join(settings.train_args),
            ENV_RETRAIN_QUANTIZATION: settings.quantization,
        },
        "Tags": [{"Key": "imgclf:job-id", "Value": job_id}],
    }


def launch(
    store: Store,
    settings: RetrainSettings,
    record: dict[str, Any],
    run_in_process: Callable[[str], dict[str, Any]],
    sagemaker: Any = None,
) -> dict[str, Any]:
    """Starts a job whose lock is taken and whose record says ``queued``, on the set backend.

    Args:
        store: the data bucket.
        settings: which backend, and its settings.
        record: the job's status record.
        run_in_process: runs the job here and returns its final record (the lambda backend).
        sagemaker: a boto3 SageMaker client (default: a new one).

    Returns:
        The job's record after the launch.
    """
    job_id = record["id"]
    if settings.backend == "local":
        # Same process group as the caller: stopping the local stack stops the job too.
        command = [sys.executable, "-m", "imgclf.retrain_job", "--job-id", job_id]
        process = subprocess.Popen(command, cwd=PROJECT_ROOT)
        return write_job(store, record, launched={"backend": "local", "pid": process.pid})
    if settings.backend == "lambda":
        return run_in_process(job_id)
    request = sagemaker_request(settings, job_id, record.get("live_version"))
    client = sagemaker or boto3.client("sagemaker")
    answer = client.create_training_job(**request)
    return write_job(
        store,
        record,
        launched={"backend": "sagemaker", "training_job_arn": answer["TrainingJobArn"]},
    )


def start_job(
    store: Store,
    settings: RetrainSettings,
    *,
    reason: str,
    mode: str,
    live_version: str | None,
    run_in_process: Callable[[str], dict[str, Any]],
) -> dict[str, Any]:
    """Takes the lock, records a new job and launches it; or says which job holds the lock.

    Args:
        store: the data bucket.
        settings: backend, lock TTL and the rest.
        reason: why the job starts (recorded).
        mode: ``warm`` (fine-tune the live model) or ``full`` (search from scratch).
        live_version: the live version now (recorded; the sagemaker backend mounts it).
        run_in_process: the lambda backend's way of running the job.

    Returns:
        The job's record, or ``{"skipped": ...}`` when another job holds the lock.
    """
    job_id = new_job_id()
    lock = acquire_lock(store, job_id, settings.lock_ttl_seconds)
    if lock is None:
        try:
            holder = json.loads(store.get(LOCK_KEY).data).get("job_id")
        except ObjectNotFound:
            holder = None  # released just now; the next event will start a job
        return {"skipped": f"job {holder} holds the lock"}
    if lock.took_over_from:
        try:
            crashed = read_job(store, lock.took_over_from)
            if crashed.get("status") not in TERMINAL:
                write_job(store, crashed, status="failed", error="abandoned: its lock expired")
        except ObjectNotFound:
            pass
    record = write_job(
        store,
        {
            "id": job_id,
            "status": "queued",
            "reason": reason,
            "mode": mode,
            "backend": settings.backend,
            "live_version": live_version,
            "created_at": iso(now()),
        },
    )
    try:
        return launch(store, settings, record, run_in_process)
    except Exception as exc:
        # Nothing runs: free the lock now rather than when it expires, and say why.
        lock.release()
        write_job(store, record, status="failed", error=f"launch failed: {exc}")
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m imgclf.jobs list | request [--mode warm|full]``."""
    settings = RetrainSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m imgclf.jobs", description=__doc__)
    parser.add_argument("--bucket", default=settings.data_bucket, help="DATA_BUCKET")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every job with its status, version and outcome")
    request = commands.add_parser("request", help="ask for a retraining (via incoming/_retrain/)")
    request.add_argument("--mode", choices=TRAIN_MODES, default="warm")
    args = parser.parse_args(argv)
    store = open_store(f"s3://{args.bucket}")
    if args.command == "request":
        key = f"{TRIGGER_PREFIX}{new_job_id()}.json"
        store.put(key, json.dumps({"mode": args.mode}).encode())
        print(f"requested: s3://{args.bucket}/{key}")
        return 0
    for job_id in list_jobs(store):
        record = read_job(store, job_id)
        outcome = record.get("note") or record.get("error") or record.get("stage") or ""
        print(
            f"{job_id}  {record['status']:<9}  {record.get('backend', ''):<9}  "
            f"{record.get('version') or '-':>7}  {outcome}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
