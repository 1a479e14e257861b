"""Retraining jobs against moto's S3 server: lock, launch, backends, failures (no training here).

The tests that train for real are in test_jobs.py (marked slow).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from helpers import ROOT
from imgclf import layout
from imgclf.layout import PENDING, TEST, TRAIN
from imgclf.local.context import LambdaContext
from imgclf.registry import Registry, open_registry
from imgclf.retrain import launch, records
from imgclf.retrain.ingest import seed_data
from imgclf.retrain.job import WORKDIR_PREFIX, quality_gate, remove_stale_workdirs, run_job
from imgclf.retrain.lock import Heartbeat, LockLost, acquire_lock
from imgclf.settings import RetrainSettings
from imgclf.storage import Store

MODEL = "scene"


@dataclass
class Buckets:
    """A seeded data bucket and a registry whose live version is the bundled model."""

    store: Store
    registry: Registry
    settings: RetrainSettings


@pytest.fixture
def buckets(new_bucket: Any, sample_data: Path, monkeypatch: pytest.MonkeyPatch) -> Buckets:
    data, models = new_bucket("data"), new_bucket("models")
    store = layout.data_store(data)
    seed_data(store, sample_data, MODEL)
    registry = open_registry(f"s3://{models}/models", "scene")
    registry.promote(registry.publish(ROOT / "model" / "scene"))
    # Jobs started as processes read their settings from the environment, as in AWS.
    monkeypatch.setenv("DATA_BUCKET", data)
    monkeypatch.setenv("MODEL_REGISTRY_URI", f"s3://{models}/models")
    return Buckets(store, registry, RetrainSettings.from_env())


@pytest.fixture
def bare(new_bucket: Any) -> Store:
    """An empty data bucket."""
    return layout.data_store(new_bucket("data"))


# ---- the lock ------------------------------------------------------------------------------------
def test_one_lock_holder_at_a_time(bare: Store) -> None:
    store = bare
    first = acquire_lock(store, MODEL, "job-a", ttl=60)
    assert first is not None
    assert acquire_lock(store, MODEL, "job-b", ttl=60) is None
    first.renew()
    first.release()
    second = acquire_lock(store, MODEL, "job-b", ttl=60)
    assert second is not None and second.took_over_from is None
    # the old holder cannot release or renew what is no longer its lock
    first.release()
    with pytest.raises(LockLost):
        first.renew()
    assert json.loads(store.get(layout.lock_key(MODEL)).data)["job_id"] == "job-b"


def test_an_expired_lock_is_taken_over_once(bare: Store) -> None:
    # GIVEN a lock whose holder stopped renewing it
    crashed = acquire_lock(bare, MODEL, "crashed", ttl=0.5)
    assert crashed is not None
    time.sleep(0.6)
    # WHEN four jobs try to take it at once
    barrier, winners = threading.Barrier(4), []

    def take(i: int) -> None:
        barrier.wait()
        lock = acquire_lock(bare, MODEL, f"job-{i}", ttl=60)
        if lock is not None:
            winners.append(lock)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN exactly one did, knowing whose lock it replaced; the crashed holder lost it
    assert len(winners) == 1 and winners[0].took_over_from == "crashed"
    with pytest.raises(LockLost):
        crashed.renew()


def test_heartbeat_keeps_the_lock(bare: Store) -> None:
    lock = acquire_lock(bare, MODEL, "job", ttl=0.6)
    assert lock is not None
    with Heartbeat(lock) as heartbeat:
        time.sleep(1.5)  # more than twice the TTL
        assert acquire_lock(bare, MODEL, "other", ttl=60) is None
        heartbeat.check()
    lock.release()


# ---- starting jobs -------------------------------------------------------------------------------
def test_two_jobs_at_once_start_one(buckets: Buckets) -> None:
    barrier, results = threading.Barrier(2), []
    settings = replace(buckets.settings, backend="lambda")

    def start() -> None:
        barrier.wait()
        try:
            record = launch.start_job(
                buckets.store,
                settings,
                model=MODEL,
                reason="test",
                mode="warm",
                live_version="0001",
                # the "job" only reports back: this test is about who gets to start one
                run_in_process=lambda job_id: records.read_job(buckets.store, job_id),
            )
            results.append(record.id)
        except launch.LockHeld as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if isinstance(r, str)]
    skipped = [r for r in results if isinstance(r, launch.LockHeld)]
    assert len(started) == 1 and len(skipped) == 1
    assert started[0] in str(skipped[0])
    assert records.list_jobs(buckets.store) == started


@pytest.mark.slow
def test_a_job_that_fails_records_why_and_frees_the_lock(buckets: Buckets) -> None:
    # GIVEN a training step that fails (train.py refuses an unknown option)
    settings = replace(buckets.settings, backend="lambda", train_args=("--no-such-option",))
    record = launch.start_job(
        buckets.store,
        settings,
        model=MODEL,
        reason="test",
        mode="warm",
        live_version="0001",
        run_in_process=lambda job_id: run_job(buckets.store, settings, job_id),
    )
    # THEN the job failed in the train stage, nothing was published, and the lock is free
    assert record.status == "failed" and record.stage == "train"
    assert "imgclf.pipeline.training exited with code 2" in record.error
    assert records.read_job(buckets.store, record.id) == record
    assert buckets.registry.list_versions() == ["0001"]
    assert acquire_lock(buckets.store, MODEL, "next", ttl=60) is not None


def test_a_job_without_a_test_split_fails(buckets: Buckets) -> None:
    for key in list(buckets.store.list(TEST)):
        buckets.store.delete(key)
    record = launch.start_job(
        buckets.store,
        replace(buckets.settings, backend="lambda"),
        model=MODEL,
        reason="test",
        mode="warm",
        live_version="0001",
        run_in_process=lambda job_id: run_job(buckets.store, buckets.settings, job_id),
    )
    assert record.status == "failed" and "no test split" in record.error


def test_the_lambda_backend_stops_when_out_of_time(buckets: Buckets) -> None:
    settings = replace(buckets.settings, backend="lambda")
    context = LambdaContext("RetrainFunction", timeout_seconds=20)  # less than the margin
    record = launch.start_job(
        buckets.store,
        settings,
        model=MODEL,
        reason="test",
        mode="warm",
        live_version="0001",
        run_in_process=lambda job_id: run_job(
            buckets.store,
            settings,
            job_id,
            deadline=time.monotonic() + context.get_remaining_time_in_millis() / 1000,
        ),
    )
    assert record.status == "failed" and "out of time" in record.error
    assert acquire_lock(buckets.store, MODEL, "next", ttl=60) is not None


def test_pending_images_are_counted_up_to_the_threshold(bare: Store) -> None:
    for i in range(5):
        bare.put(f"{PENDING}scene/sea/{i}.jpg", b"")
    assert launch.count_pending(bare, MODEL, limit=3) == 3
    assert launch.count_pending(bare, MODEL, limit=50) == 5
    assert list(bare.list(TRAIN)) == []  # markers are not images


# ---- the quality gate ----------------------------------------------------------------------------
def test_quality_gate() -> None:
    live = {"accuracy": 0.80, "macro_f1": 0.70}
    assert quality_gate({"accuracy": 0.80, "macro_f1": 0.70}, live, 0.0)["passed"]
    assert quality_gate({"accuracy": 0.79, "macro_f1": 0.75}, live, 0.02)["passed"]
    worse = quality_gate({"accuracy": 0.79, "macro_f1": 0.75}, live, 0.0)
    assert not worse["passed"] and "accuracy" in worse["reason"]
    assert worse["deltas"] == {"accuracy": -0.01, "macro_f1": 0.05}
    assert quality_gate({"accuracy": 0.1, "macro_f1": 0.1}, None, 0.0)["passed"]


# ---- SageMaker -----------------------------------------------------------------------------------
SAGEMAKER = {
    "sagemaker_role_arn": "arn:aws:iam::123456789012:role/imgclf-training",
    "sagemaker_image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/imgclf-train:1",
    "sagemaker_instance_type": "ml.m5.2xlarge",
}


def test_sagemaker_request_is_valid_for_the_real_api(buckets: Buckets) -> None:
    settings = replace(buckets.settings, backend="sagemaker", **SAGEMAKER)
    request = launch.sagemaker_request(settings, MODEL, "20260101T000000Z-abcdef12", "0001")
    # Stubber validates the request against botocore's model of the real SageMaker API.
    client = boto3.client("sagemaker")
    with Stubber(client) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": "arn:x"}, request)
        client.create_training_job(**request)
        stub.assert_no_pending_responses()
    spec = request["AlgorithmSpecification"]
    assert spec["ContainerEntrypoint"] == ["python3", "-m", "imgclf.retrain.job"]
    assert spec["ContainerArguments"] == [
        "--job-id",
        "20260101T000000Z-abcdef12",
        "--channels",
        "/opt/ml/input/data",
    ]
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
    }
    registry_uri = settings.model_registry_uri
    assert channels == {
        "train": f"s3://{settings.data_bucket}/train/scene/",
        "test": f"s3://{settings.data_bucket}/test/scene/",
        "live": f"{registry_uri}/scene/versions/0001/",
    }
    assert request["Environment"]["DATA_BUCKET"] == settings.data_bucket
    assert request["Environment"]["MODEL_REGISTRY_URI"] == registry_uri
    with pytest.raises(ValueError, match="SAGEMAKER_IMAGE_URI"):
        launch.sagemaker_request(replace(settings, sagemaker_image_uri=""), MODEL, "x", None)


def test_the_sagemaker_backend_launches_a_training_job(buckets: Buckets) -> None:
    # GIVEN the sagemaker backend (moto's SageMaker accepts and records the training job)
    settings = replace(buckets.settings, backend="sagemaker", **SAGEMAKER)
    record = launch.start_job(
        buckets.store,
        settings,
        model=MODEL,
        reason="test",
        mode="warm",
        live_version="0001",
        run_in_process=lambda job_id: pytest.fail("the sagemaker backend runs nothing here"),
    )
    # THEN the job is queued with its training job's ARN, and holds the lock until it runs
    arn = record.launched["training_job_arn"]
    name = arn.rsplit("/", 1)[1]
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert described["AlgorithmSpecification"]["TrainingImage"] == SAGEMAKER["sagemaker_image_uri"]
    assert described["RoleArn"] == SAGEMAKER["sagemaker_role_arn"]
    assert record.status == "queued"
    assert json.loads(buckets.store.get(layout.lock_key(MODEL)).data)["job_id"] == record.id


def test_a_failed_launch_frees_the_lock(buckets: Buckets) -> None:
    settings = replace(buckets.settings, backend="sagemaker")  # no image or role configured
    with pytest.raises(ValueError):
        launch.start_job(
            buckets.store,
            settings,
            model=MODEL,
            reason="test",
            mode="warm",
            live_version="0001",
            run_in_process=lambda job_id: pytest.fail("not the lambda backend"),
        )
    [job_id] = records.list_jobs(buckets.store)
    assert records.read_job(buckets.store, job_id).status == "failed"
    assert acquire_lock(buckets.store, MODEL, "next", ttl=60) is not None


def test_scratch_folders_of_dead_jobs_are_removed(tmp_path: Path) -> None:
    # GIVEN the folder of a job whose process is gone, and one of a live process (this one)
    gone = tmp_path / f"{WORKDIR_PREFIX}{2**22 + 7}-abc"  # above the kernel's default pid_max
    gone.mkdir()
    (gone / "data").mkdir()
    mine = tmp_path / f"{WORKDIR_PREFIX}{os.getpid()}-def"
    mine.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    # WHEN the next job starts, THEN only the dead job's folder is gone
    assert remove_stale_workdirs(tmp_path) == [gone]
    assert not gone.exists() and mine.is_dir() and other.is_dir()


def test_without_the_training_stack_a_job_fails_with_what_to_install(
    buckets: Buckets, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an environment that lacks a module training needs (as `make run`'s first install does)
    monkeypatch.setattr(launch, "TRAINING_MODULES", ("imgclf_no_such_training_module",))
    record = launch.start_job(
        buckets.store,
        replace(buckets.settings, backend="local"),
        model=MODEL,
        reason="test",
        mode="warm",
        live_version="0001",
        run_in_process=lambda job_id: pytest.fail("nothing runs"),
    )
    # THEN the job is recorded as failed with the command that fixes it, and the lock is free
    assert record.status == "failed" and "make setup" in record.error
    assert records.read_job(buckets.store, record.id) == record
    assert acquire_lock(buckets.store, MODEL, "next", ttl=60) is not None
