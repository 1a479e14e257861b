"""Shared fixtures: the seeded sample dataset, image bytes, the local stack, moto's server.

Plain helpers are in ``helpers.py`` (``tests/`` is on the import path, see pyproject.toml).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from helpers import RunningStack, encode, scene_image, start_stack
from imgclf.pipeline import sample_data as sample_data_module


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded sample dataset (12 train / 4 test images per class)."""
    root = tmp_path_factory.mktemp("sample")
    sample_data_module.make_dataset(
        root, train_per_class=12, test_per_class=4, pred_count=3, seed=1
    )
    return root


@pytest.fixture
def jpeg_bytes() -> bytes:
    """A 150x150 JPEG of a forest scene."""
    return encode(scene_image("forest"))


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
