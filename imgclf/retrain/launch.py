"""Starting a training job: whether one is due, the lock, the record, and the backend that runs it.

Backends: ``local`` (a separate process on this machine: the local stack), ``lambda`` (in the
calling function, within its remaining time) or ``sagemaker`` (a training job running the same entry
point, ``python -m imgclf.retrain.job --job-id ID``, in the training image). Whichever runs it, the
job itself is ``imgclf.retrain.job``.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import boto3

from imgclf import layout
from imgclf.retrain.lock import acquire_lock, lock_holder
from imgclf.retrain.records import JobRecord, JobStatus, iso, new_job_id, now, read_job, write_job
from imgclf.settings import (
    ENV_DATA_BUCKET,
    ENV_MODEL_REGISTRY_URI,
    ENV_RETRAIN_LOCK_TTL_SECONDS,
    ENV_RETRAIN_QUALITY_TOLERANCE,
    ENV_RETRAIN_QUANTIZATION,
    ENV_RETRAIN_TRAIN_ARGS,
    PROJECT_ROOT,
    RetrainSettings,
)
from imgclf.storage import ObjectNotFound, Store

# The module every backend runs.
JOB_MODULE = "imgclf.retrain.job"
# Where SageMaker puts the channels in the container (its File input mode).
SAGEMAKER_CHANNELS_DIR = "/opt/ml/input/data"
SAGEMAKER_MAX_RUNTIME_SECONDS = 6 * 3600


# What a job imports that the serving set (and so `make run`'s first install) does not have.
TRAINING_MODULES = ("tensorflow", "keras_tuner", "sklearn", "matplotlib")


class LockHeld(Exception):
    """Another job holds the lock; no job was started."""


class CannotLaunch(Exception):
    """The backend cannot run a job here; the job is recorded as failed with this reason."""


def missing_training_stack() -> list[str]:
    """The training modules this environment lacks (empty where a job can run here)."""
    return [m for m in TRAINING_MODULES if importlib.util.find_spec(m) is None]


def count_pending(store: Store, model: str, limit: int) -> int:
    """Counts a model's images ingested since its last job, up to ``limit`` (enough to decide)."""
    pending = store.list(layout.model_prefix(layout.PENDING, model))
    return sum(1 for _ in itertools.islice(pending, limit))


def sagemaker_request(
    settings: RetrainSettings, model: str, job_id: str, live_version: str | None
) -> dict[str, Any]:
    """Builds the CreateTrainingJob request that runs ``imgclf.retrain.job`` in the training image.

    Channels: ``train`` and ``test`` (the data bucket's splits) and, to warm-start from, ``live``
    (the live version's folder in the model bucket). The job finds them under
    ``/opt/ml/input/data/<channel>`` and still reads and writes its status, lock and registry
    through S3 as every backend does.

    Args:
        settings: bucket names, registry, image, role and instance type.
        model: the model the job trains.
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

    bucket = settings.data_bucket
    channels = [
        channel("train", layout.bucket_uri(bucket, layout.model_prefix(layout.TRAIN, model))),
        channel("test", layout.bucket_uri(bucket, layout.model_prefix(layout.TEST, model))),
    ]
    if live_version is not None:
        registry = settings.model_registry_uri.rstrip("/")
        version = layout.version_key(model, live_version)
        channels.append(channel("live", f"{registry}/{version}"))
    name = re.sub(r"[^a-zA-Z0-9-]", "-", f"imgclf-{model}-{job_id}")[:63]
    return {
        "TrainingJobName": name,
        "RoleArn": settings.sagemaker_role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": settings.sagemaker_image_uri,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["python3", "-m", JOB_MODULE],
            "ContainerArguments": ["--job-id", job_id, "--channels", SAGEMAKER_CHANNELS_DIR],
        },
        "InputDataConfig": channels,
        # The job publishes to the registry itself; SageMaker's own output (empty) goes here.
        "OutputDataConfig": {"S3OutputPath": layout.bucket_uri(bucket, layout.SAGEMAKER_OUTPUT)},
        "ResourceConfig": {
            "InstanceType": settings.sagemaker_instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": SAGEMAKER_MAX_RUNTIME_SECONDS},
        "Environment": {
            ENV_DATA_BUCKET: settings.data_bucket,
            ENV_MODEL_REGISTRY_URI: settings.model_registry_uri,
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
    record: JobRecord,
    run_in_process: Callable[[str], JobRecord],
    sagemaker: Any = None,
) -> JobRecord:
    """Starts a job whose lock is taken and whose record says ``queued``, on the set backend.

    Args:
        store: the data bucket.
        settings: which backend, and its settings.
        record: the job's record.
        run_in_process: runs the job here and returns its final record (the lambda backend).
        sagemaker: a boto3 SageMaker client (default: a new one).

    Returns:
        The job's record after the launch.
    """
    missing = missing_training_stack() if settings.backend in ("local", "lambda") else []
    if missing:
        # A clear record rather than a job process that dies on its first import.
        raise CannotLaunch(
            f"the training stack is not installed here (no {', '.join(missing)}): "
            "`make setup` installs it (pip install -r requirements.txt)"
        )
    if settings.backend == "local":
        # Same process group as the caller: stopping the local stack stops the job too.
        command = [sys.executable, "-m", JOB_MODULE, "--job-id", record.id]
        process = subprocess.Popen(command, cwd=PROJECT_ROOT)
        return write_job(store, record, launched={"backend": "local", "pid": process.pid})
    if settings.backend == "lambda":
        return run_in_process(record.id)
    request = sagemaker_request(settings, record.model, record.id, record.live_version)
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
    model: str,
    reason: str,
    mode: str,
    live_version: str | None,
    run_in_process: Callable[[str], JobRecord],
) -> JobRecord:
    """Takes the lock, records a new job and launches it.

    Args:
        store: the data bucket.
        settings: backend, lock TTL and the rest.
        model: the model to train.
        reason: why the job starts (recorded).
        mode: ``warm`` (fine-tune the live model) or ``full`` (search from scratch).
        live_version: the live version now (recorded; the sagemaker backend mounts it).
        run_in_process: the lambda backend's way of running the job.

    Returns:
        The job's record.

    Raises:
        LockHeld: another job holds the lock.
    """
    job_id = new_job_id()
    lock = acquire_lock(store, model, job_id, settings.lock_ttl_seconds)
    if lock is None:
        raise LockHeld(f"job {lock_holder(store, model)} holds the lock of model {model}")
    if lock.took_over_from:
        try:
            crashed = read_job(store, lock.took_over_from)
            if not crashed.status.finished:
                write_job(
                    store, crashed, status=JobStatus.FAILED, error="abandoned: its lock expired"
                )
        except ObjectNotFound:
            pass
    record = write_job(
        store,
        JobRecord(
            id=job_id,
            status=JobStatus.QUEUED,
            model=model,
            reason=reason,
            mode=mode,
            backend=settings.backend,
            live_version=live_version,
            created_at=iso(now()),
        ),
    )
    try:
        return launch(store, settings, record, run_in_process)
    except CannotLaunch as exc:
        lock.release()
        return write_job(
            store, record, status=JobStatus.FAILED, error=str(exc), finished_at=iso(now())
        )
    except Exception as exc:
        # Nothing runs: free the lock now rather than when it expires, and say why.
        lock.release()
        write_job(store, record, status=JobStatus.FAILED, error=f"launch failed: {exc}")
        raise
