"""End to end through the local stack: uploads -> retraining -> a new version the gateway serves.

A client sends ``POST /predict`` the whole time and must never see a failure, while the live
alias moves forward (a retrained version), back (``registry rollback``) and, by hand, to a model
file corrupted in the bucket (which serving must refuse, keeping its last good model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
import requests

from helpers import ROOT, RunningStack, encode, scene_image, start_stack
from imgclf.pipeline.sample_data import CLASSES
from imgclf.registry import Registry
from imgclf.storage import S3Store

pytestmark = pytest.mark.slow
REFRESH_SECONDS = 2.0
# Time for a request to reach each of the gateway's workers after the alias moved.
SERVE_SLACK_SECONDS = 3.0


@dataclass
class Hammer:
    """A client sending the scene model's predict requests in a loop; remembers every answer."""

    url: str
    image: bytes
    answers: list[tuple[float, int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    r = session.post(
                        f"{self.url}/models/scene/predict",
                        data=self.image,
                        headers={"content-type": "image/jpeg"},
                        timeout=30,
                    )
                    version = r.json().get("model", {}).get("version", "")
                    self.answers.append((time.monotonic(), r.status_code, version))
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except (requests.RequestException, ValueError) as exc:
                    self.failures.append(repr(exc))
                time.sleep(0.02)  # ~40 requests/s: leaves the two cores to the training job

    def first_served(self, version: str, after: float) -> float:
        """When the first answer from ``version`` came, after ``after``."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = [t for t, _, v in list(self.answers) if v == version and t >= after]
            if seen:
                return seen[0]
            time.sleep(0.1)
        raise AssertionError(f"version {version} was never served")

    def versions_since(self, since: float) -> set[str]:
        return {v for t, _, v in list(self.answers) if t >= since}

    def last_served(self, version: str, after: float) -> float:
        """When the last answer from ``version`` came, after ``after`` (``after`` if none)."""
        return max(
            (t for t, _, v in list(self.answers) if v == version and t >= after), default=after
        )


@pytest.fixture
def stack(sample_data: Path, tmp_path: Path) -> Iterator[RunningStack]:
    env = {
        "MODEL_REFRESH_SECONDS": str(REFRESH_SECONDS),
        "RETRAIN_MIN_NEW_IMAGES": str(len(CLASSES)),
        "RETRAIN_TRAIN_ARGS": "--quick",
        "RETRAIN_QUALITY_TOLERANCE": "1.0",
    }
    running = start_stack(tmp_path / "stack.log", sample_data, env=env)
    yield running
    running.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_uploads_retrain_and_serve_a_new_version(stack: RunningStack) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    registry = Registry(S3Store("imgclf-models", "models", client=s3), "scene")
    cli_env = {
        **os.environ,
        "AWS_ENDPOINT_URL": stack.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MODEL_REGISTRY_URI": "s3://imgclf-models/models",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imgclf.registry", "--name", "scene", *args],
            cwd=ROOT,
            env=cli_env,
            capture_output=True,
            text=True,
            check=False,
        )

    hammer = Hammer(stack.api_url, encode(scene_image("forest", seed=42)))
    thread = threading.Thread(target=hammer.run, daemon=True)
    thread.start()
    try:
        hammer.first_served("0001", after=0)
        # WHEN one labelled image per class is uploaded (enough new images for a job)
        uploaded = time.monotonic()
        for i, label in enumerate(CLASSES):
            data = encode(scene_image(label, seed=900 + i))
            s3.put_object(
                Bucket="imgclf-data", Key=f"incoming/scene/{label}/upload {i}.jpg", Body=data
            )
        # THEN a job publishes 0002 and moves live, and the gateway serves it within the interval
        published = wait_until(
            lambda: registry.read_live()[0]["version"] == "0002", 300, "version 0002 to go live"
        )
        served = hammer.first_served("0002", after=uploaded)
        assert served - published <= REFRESH_SECONDS + SERVE_SLACK_SECONDS
        [job_key] = [
            o["Key"] for o in s3.list_objects_v2(Bucket="imgclf-data", Prefix="jobs/2")["Contents"]
        ]
        job = json.loads(s3.get_object(Bucket="imgclf-data", Key=job_key)["Body"].read())
        assert job["status"] == "succeeded" and job["backend"] == "local" and job["promoted"]
        print(
            f"\nupload -> live: {published - uploaded:.1f} s; live -> served: "
            f"{served - published:.1f} s; job: {job['reason']}"
        )

        # WHEN rolled back by hand, THEN 0001 is served again
        rolled = cli("rollback")
        assert rolled.returncode == 0, rolled.stderr
        back = time.monotonic()
        hammer.first_served("0001", after=back)
        settled = time.monotonic() + REFRESH_SECONDS + SERVE_SLACK_SECONDS
        wait_until(lambda: time.monotonic() > settled, 30, "the workers to settle")
        # AND no worker answered with the old version longer than the refresh interval (plus the
        # time a request takes to reach each worker) after the alias moved back
        assert (
            hammer.last_served("0002", after=back) - back <= REFRESH_SECONDS + SERVE_SLACK_SECONDS
        )

        # WHEN 0002's model file is corrupted in the bucket and the alias is forced onto it
        key = "models/scene/versions/0002/model.tflite"
        corrupt = bytearray(s3.get_object(Bucket="imgclf-models", Key=key)["Body"].read())
        corrupt[len(corrupt) // 2] ^= 0xFF
        s3.put_object(Bucket="imgclf-models", Key=key, Body=bytes(corrupt))
        refused = cli("promote", "0002")
        assert refused.returncode == 1 and "sha256" in refused.stderr
        forced = time.monotonic()
        s3.put_object(
            Bucket="imgclf-models",
            Key="models/scene/aliases/live.json",
            Body=json.dumps({"version": "0002", "previous": "0001"}).encode(),
        )
        # THEN serving refuses it and keeps answering with 0001
        later = time.monotonic() + 3 * REFRESH_SECONDS
        wait_until(lambda: time.monotonic() > later, 30, "three refresh intervals")
        assert hammer.versions_since(forced) == {"0001"}
        assert "model refresh failed" in stack.log()
        # AND /health says which model failed its refresh and what it kept serving
        problems = requests.get(f"{stack.api_url}/health", timeout=10).json()["problems"]
        assert "serving 0001" in problems["scene"] and "sha256" in problems["scene"]
    finally:
        hammer.stop.set()
        thread.join()
    # AND the client never saw a failure, through every move of the alias
    assert hammer.failures == []
    assert len(hammer.answers) > 100
