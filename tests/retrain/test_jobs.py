"""Retraining for real on tiny data (moto's S3 server, train.py --quick, convert.py): slow.

Uploads go through ``retrain_handler.handle`` with the S3 events they produce; the job runs in
this process (the lambda backend) or as a separate process (the local backend).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import retrain_handler
from helpers import ROOT, encode, scene_image, upload
from imgclf import artifact, layout
from imgclf.layout import PENDING, TEST
from imgclf.local.context import LambdaContext
from imgclf.pipeline.sample_data import CLASSES
from imgclf.registry import open_registry
from imgclf.retrain.ingest import seed_data, seed_split
from imgclf.retrain.launch import sagemaker_request
from imgclf.retrain.records import JobRecord, list_jobs, read_job
from imgclf.settings import RetrainSettings
from imgclf.storage import ObjectNotFound, open_store

MODEL = "scene"
pytestmark = pytest.mark.slow
JOB_TIMEOUT_SECONDS = 240


@pytest.fixture
def setup(new_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Makes the buckets and the environment a retrain function (and its jobs) would have."""

    def make(**env: str) -> tuple[str, Any, Any]:
        data, models = new_bucket("data"), new_bucket("models")
        registry = open_registry(f"s3://{models}/models", "scene")
        registry.promote(registry.publish(ROOT / "model" / "scene"))
        for name, value in {
            "DATA_BUCKET": data,
            "MODEL_REGISTRY_URI": f"s3://{models}/models",
            "RETRAIN_TRAIN_ARGS": "--quick",
            **env,
        }.items():
            monkeypatch.setenv(name, value)
        return data, layout.data_store(data), registry

    return make


def handle(event: dict[str, Any]) -> dict[str, Any]:
    """Invokes the retrain handler as Lambda would, with settings from the environment."""
    settings = RetrainSettings.from_env()
    store = layout.data_store(settings.data_bucket)
    registry_store = open_store(settings.model_registry_uri)
    return retrain_handler.handle(
        event, LambdaContext("RetrainFunction", 900), store, registry_store, settings
    )


def wait_for_job(store: Any, job_id: str, until: Callable[[JobRecord], bool]) -> JobRecord:
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        record = read_job(store, job_id)
        if until(record):
            return record
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not get there: {read_job(store, job_id)}")


def wait_until_gone(store: Any, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            store.get(key)
        except ObjectNotFound:
            return
        time.sleep(0.2)
    raise AssertionError(f"{key} is still there after {timeout} s")


def test_new_images_publish_a_live_version(setup: Callable[..., Any], sample_data: Path) -> None:
    # GIVEN a data bucket with the sample data, and a job due after 6 new images
    bucket, store, registry = setup(
        RETRAIN_BACKEND="lambda", RETRAIN_MIN_NEW_IMAGES="6", RETRAIN_QUALITY_TOLERANCE="1.0"
    )
    seed_data(store, sample_data, MODEL)
    # WHEN one new image per class is uploaded
    answers = [
        handle(upload(bucket, f"incoming/scene/{c}/new.jpg", encode(scene_image(c, seed=500 + i))))
        for i, c in enumerate(CLASSES)
    ]
    # THEN the sixth upload started a job, which published version 0002 and made it live
    assert [("jobs" in a) for a in answers] == [False] * 5 + [True]
    record = answers[-1]["jobs"][MODEL]
    assert record["status"] == "succeeded", record
    assert record["version"] == "0002" and record["promoted"] is True
    assert record["warm_start"] is True
    # the sample's 12 + 4 sea images and the new one, in the split its hash chose
    assert sum(record["data"][split].get("sea", 0) for split in record["data"]) == 17
    live = registry.read_live()[0]
    assert (live["version"], live["previous"]) == ("0002", "0001")
    metrics = registry.describe("0002")["metrics"]
    assert metrics["gate"]["passed"] and metrics["job"]["id"] == record["id"]
    assert metrics["evaluation"]["count"] == 24  # the whole fixed test split
    assert metrics["live_evaluation"]["version"] == "0001"
    assert list(store.list(PENDING)) == []  # what the job trained on is no longer "new"
    # AND a rollback makes 0001 live again
    assert registry.rollback()["version"] == "0001"


def test_a_worse_model_is_not_promoted(setup: Callable[..., Any], sample_data: Path) -> None:
    # GIVEN a quality gate with no tolerance, and training data whose labels are all wrong
    bucket, store, registry = setup(
        RETRAIN_BACKEND="lambda", RETRAIN_QUALITY_TOLERANCE="0", RETRAIN_MIN_NEW_IMAGES="1000"
    )
    seed_split(store, sample_data / "seg_test", TEST, MODEL)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, label in enumerate(CLASSES):
            wrong = CLASSES[(i + 1) % len(CLASSES)]
            for path in sorted((sample_data / "seg_train" / label).iterdir()):
                archive.write(path, f"{wrong}/{path.name}")
    answer = handle(upload(bucket, "incoming/scene/mislabelled.zip", buffer.getvalue()))
    assert answer["uploads"][0]["stored"] == 72 and "jobs" not in answer
    # WHEN a full retraining is requested
    answer = handle(upload(bucket, "incoming/_retrain/scene.json", b'{"mode": "full"}'))
    record = answer["jobs"][MODEL]
    # THEN the model is published with its evaluation, but live stays where it was
    assert record["status"] == "succeeded", record
    assert record["warm_start"] is False and record["promoted"] is False
    assert registry.list_versions() == ["0001", "0002"]
    assert registry.read_live()[0]["version"] == "0001"
    gate = registry.describe("0002")["metrics"]["gate"]
    assert gate["passed"] is False and "< live" in gate["reason"]
    assert gate["deltas"]["accuracy"] < 0
    assert record["note"] == f"not promoted: {gate['reason']}"


def children_of(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(c) for t in tasks for c in (t / "children").read_text().split()]


def test_one_job_at_a_time_and_a_crash(setup: Callable[..., Any], sample_data: Path) -> None:
    # GIVEN jobs that run as separate processes, with a short lock TTL
    bucket, store, registry = setup(
        RETRAIN_BACKEND="local", RETRAIN_LOCK_TTL_SECONDS="3", RETRAIN_QUALITY_TOLERANCE="1.0"
    )
    seed_data(store, sample_data, MODEL)
    # WHEN two retrain requests arrive at the same moment
    events = [upload(bucket, f"incoming/_retrain/scene/{n}.json", b"") for n in ("a", "b")]
    barrier, answers = threading.Barrier(2), []

    def deliver(event: dict[str, Any]) -> None:
        barrier.wait()
        answers.append(handle(event))

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN one job starts and the other request finds it running
    started = [a["jobs"][MODEL] for a in answers if "id" in a["jobs"][MODEL]]
    assert len(started) == 1 and sum("skipped" in a["jobs"][MODEL] for a in answers) == 1
    job_id = started[0]["id"]
    # WHEN the job's process dies half way through training
    record = wait_for_job(store, job_id, lambda r: r.stage == "train")
    victims = [record.pid, *children_of(record.pid)]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(record.pid, 0)  # our child (the local backend): reap it
    # THEN nothing is published, and the lock expires rather than blocking forever
    assert registry.list_versions() == ["0001"]
    time.sleep(3.5)
    answer = handle(upload(bucket, "incoming/_retrain/scene.json", b""))
    assert "id" in answer["jobs"][MODEL], answer
    assert read_job(store, job_id).status == "failed"
    assert "lock expired" in read_job(store, job_id).error
    # AND the next job runs to the end and publishes the next version
    done = wait_for_job(store, answer["jobs"][MODEL]["id"], lambda r: r.status.finished)
    assert done.status == "succeeded" and done.version == "0002", done
    assert registry.read_live()[0]["version"] == "0002"
    # released by the job (just after it wrote its final record)
    wait_until_gone(store, layout.lock_key(MODEL))
    assert (
        json.loads(store.get(layout.job_key(answer["jobs"][MODEL]["id"])).data)["promoted"] is True
    )


def test_the_sagemaker_entry_point_with_channels(
    setup: Callable[..., Any], sample_data: Path, tmp_path: Path
) -> None:
    # GIVEN a job launched on the sagemaker backend (moto's SageMaker records it; nothing runs)
    bucket, store, registry = setup(
        RETRAIN_BACKEND="sagemaker",
        RETRAIN_QUALITY_TOLERANCE="1.0",
        SAGEMAKER_ROLE_ARN="arn:aws:iam::123456789012:role/imgclf-training",
        SAGEMAKER_IMAGE_URI="123456789012.dkr.ecr.us-east-1.amazonaws.com/imgclf-train:1",
    )
    seed_data(store, sample_data, MODEL)
    answer = handle(upload(bucket, "incoming/_retrain/scene.json", b""))
    request = answer["jobs"][MODEL]
    assert request["status"] == "queued" and "training_job_arn" in request["launched"]
    # WHEN the container runs its entry point with the channels SageMaker would have mounted
    channels = tmp_path / "channels"
    for channel, prefix in (("train", "train/scene/"), ("test", "test/scene/")):
        for key in store.list(prefix):
            path = channels / channel / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.get(key).data)
    (channels / "live").mkdir()
    for name, data in registry.read_version("0001", names=artifact.MODEL_FILES).items():
        (channels / "live" / name).write_bytes(data)
    spec = sagemaker_request(RetrainSettings.from_env(), MODEL, request["id"], "0001")
    command = [
        *spec["AlgorithmSpecification"]["ContainerEntrypoint"],
        *spec["AlgorithmSpecification"]["ContainerArguments"],
    ]
    # Here, this virtualenv's python is the image's python3, and tmp_path holds the channels.
    assert command[0] == "python3"
    command[0] = sys.executable
    command[command.index("/opt/ml/input/data")] = str(channels)
    run = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, **spec["Environment"]},
        timeout=JOB_TIMEOUT_SECONDS,
        check=False,
    )
    # THEN it ran the same job: version 0002 is published and live, the lock is free
    record = read_job(store, request["id"])
    assert run.returncode == 0 and record.status == "succeeded", record
    assert record.version == "0002" and registry.read_live()[0]["version"] == "0002"
    with pytest.raises(ObjectNotFound):
        store.get(layout.lock_key(MODEL))


def test_uploads_during_a_job_start_a_follow_up_job(
    setup: Callable[..., Any], sample_data: Path
) -> None:
    # GIVEN jobs that run inside the retrain function, due after 6 new images
    bucket, store, registry = setup(
        RETRAIN_BACKEND="lambda", RETRAIN_MIN_NEW_IMAGES="6", RETRAIN_QUALITY_TOLERANCE="1.0"
    )
    seed_data(store, sample_data, MODEL)
    first = [
        upload(bucket, f"incoming/scene/{c}/a.jpg", encode(scene_image(c, seed=600 + i)))
        for i, c in enumerate(CLASSES)
    ]
    late: list[dict[str, Any]] = []

    def upload_while_training() -> None:
        # WHEN six more images arrive while that job trains (their events find the lock taken)
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            jobs = [read_job(store, j) for j in list_jobs(store)]
            if any(j.stage == "train" for j in jobs):
                break
            time.sleep(0.2)
        for i, c in enumerate(CLASSES):
            data = encode(scene_image(c, seed=700 + i))
            late.append(handle(upload(bucket, f"incoming/scene/{c}/b.jpg", data)))

    thread = threading.Thread(target=upload_while_training)
    thread.start()
    answers = [handle(event) for event in first]
    thread.join()
    # THEN the late uploads started nothing themselves, and a follow-up job trained on them
    assert [a.get("jobs", {}).get(MODEL, {}).get("skipped") is not None for a in late][-1]
    records = [read_job(store, j) for j in list_jobs(store)]
    assert [r.status for r in records] == ["succeeded", "succeeded"], records
    assert records[1].reason.startswith(f"follow-up of {records[0].id}")
    assert answers[-1]["jobs"][MODEL]["id"] == records[0].id
    assert registry.list_versions() == ["0001", "0002", "0003"]
    assert registry.read_live()[0]["version"] == "0003"
    assert list(store.list(layout.model_prefix(PENDING, MODEL))) == []
