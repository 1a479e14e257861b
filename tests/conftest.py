"""Shared fixtures: paths, the seeded sample dataset, and image bytes made with Pillow."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import make_sample_data  # noqa: E402


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encodes a Pillow image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def scene_image(
    label: str = "forest", seed: int = 0, size: tuple[int, int] | None = None
) -> Image.Image:
    """One drawn sample scene (150x150, or resized to ``size``)."""
    img = make_sample_data.draw_scene(label, np.random.default_rng(seed))
    return img.resize(size) if size else img


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded sample dataset (12 train / 4 test images per class)."""
    root = tmp_path_factory.mktemp("sample")
    make_sample_data.make_dataset(root, train_per_class=12, test_per_class=4, pred_count=3, seed=1)
    return root


@pytest.fixture
def jpeg_bytes() -> bytes:
    """A 150x150 JPEG of a forest scene."""
    return encode(scene_image("forest"))


# ---- the local stack (python -m imgclf.local) ---------------------------------------------------
@dataclass
class RunningStack:
    """A local stack a test started: its URLs, its process and its combined output."""

    process: subprocess.Popen[bytes]
    api_url: str
    endpoint: str
    static_url: str
    log_path: Path

    def log(self) -> str:
        """Everything the stack and its children printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signals the stack and returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


def free_port() -> int:
    """A port nobody listens on right now (never 3000 or 5000)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stack(
    log_path: Path, data_dir: Path, workers: int = 2, env: dict[str, str] | None = None
) -> RunningStack:
    """Starts ``python -m imgclf.local`` on free ports; returns once it printed its banner."""
    ports = {name: free_port() for name in ("--port", "--s3-port", "--static-port")}
    args = [arg for name, port in ports.items() for arg in (name, str(port))]
    command = [sys.executable, "-m", "imgclf.local", *args, f"--workers={workers}"]
    # Uploads in the tests must reach the retrain handler without starting a training run.
    env = {**os.environ, "RETRAIN_MIN_NEW_IMAGES": "100000", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, f"--data-dir={data_dir}"], cwd=ROOT, stdout=log, stderr=log, env=env
        )
    stack = RunningStack(
        process,
        api_url=f"http://127.0.0.1:{ports['--port']}",
        endpoint=f"http://127.0.0.1:{ports['--s3-port']}",
        static_url=f"http://127.0.0.1:{ports['--static-port']}",
        log_path=log_path,
    )
    deadline = time.monotonic() + 180
    while "Local stack ready" not in stack.log():
        if process.poll() is not None or time.monotonic() > deadline:
            stack.stop(signal.SIGKILL)
            raise RuntimeError(f"the local stack did not start:\n{stack.log()[-5000:]}")
        time.sleep(0.2)
    return stack


@pytest.fixture(scope="session")
def local_stack(
    sample_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """One local stack (2 workers) shared by the tests that talk to it; serves ``sample_data``."""
    stack = start_stack(tmp_path_factory.mktemp("stack") / "stack.log", sample_data)
    yield stack
    stack.stop()


# ---- moto's server on loopback (S3, SageMaker): registry, ingestion and retraining tests -------
@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server (all its services) on a free loopback port; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Points boto3 (in this process and its children) at moto, with dummy credentials."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint


@pytest.fixture
def new_bucket(aws_env: str) -> Callable[[str], str]:
    """Creates a bucket with a unique name in moto (``new_bucket("data")``) and returns its name."""

    def create(purpose: str) -> str:
        name = f"test-{purpose}-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=name)
        return name

    return create


def load_event(name: str) -> dict[str, Any]:
    """Loads one event of events/ (generated with ``sam local generate-event``)."""
    return json.loads((ROOT / "events" / f"{name}.json").read_text())


def s3_put_event(bucket: str, key: str, etag: str, size: int) -> dict[str, Any]:
    """The event S3 sends for a PUT (events/s3_put.json), the key URL-encoded as S3 does it."""
    event = load_event("s3_put")
    record = event["Records"][0]["s3"]
    record["object"].update(key=quote_plus(key, safe="/"), eTag=etag.strip('"'), size=size)
    record["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    return event


def upload(bucket: str, key: str, data: bytes) -> dict[str, Any]:
    """Uploads an object (to wherever boto3 points) and returns the S3 event announcing it."""
    etag = boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
    return s3_put_event(bucket, key, etag, len(data))


# ---- the deploy tools of .venv-sam (SAM CLI, cfn-lint, hadolint), run offline ------------------
def run_deploy_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs ``.venv-sam/bin/<name> ARGS`` from the repository root without AWS credentials.

    Fails the test, saying how to install them, when the tools are missing.
    """
    tool = ROOT / ".venv-sam" / "bin" / name
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run `make .venv-sam/.installed`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(SAM_CLI_TELEMETRY="0", AWS_EC2_METADATA_DISABLED="true")
    return subprocess.run(
        [str(tool), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
