"""The serving container's model holder against a real local-folder registry (imgclf.registry).

Versions are published with ``Registry.publish`` from the bundled model/; faults (a corrupted
file, an alias naming a missing version) are written straight into the folder, as a broken
bucket would present them.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_lambda_powertools import Logger

import lambda_func
from helpers import handle, load_event, picture, with_json, with_query
from imgclf import registry
from imgclf.errors import ModelUnavailable, NotFound
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.serving.model_holder import ModelCatalog, ModelHolder
from imgclf.settings import PROJECT_ROOT, ServeSettings

NAME = "scene"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry folder with versions 0001-0003 (all the bundled model) and no alias."""
    root = tmp_path_factory.mktemp("registry")
    reg = registry.open_registry(str(root), NAME)
    for _ in range(3):
        reg.publish(PROJECT_ROOT / "model" / "scene")
    return root


@pytest.fixture
def root(published: Path, tmp_path: Path) -> Path:
    """This test's own copy of the registry folder."""
    copy = tmp_path / "registry"
    shutil.copytree(published, copy)
    return copy


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Setup:
    settings: ServeSettings
    holder: ModelHolder
    registry: registry.Registry
    clock: Clock
    logs: io.StringIO


def make_holder(root: Path, live: str | None = "0001", cache_size: int = 1) -> Setup:
    reg = registry.open_registry(str(root), NAME)
    if live:
        reg.promote(live)
    settings = ServeSettings(
        model_name=NAME,
        model_registry_uri=str(root),
        model_refresh_seconds=60,
        model_cache_size=cache_size,
    )
    logs = io.StringIO()
    logger = Logger(service=f"test-{uuid.uuid4().hex}", stream=logs)
    clock = Clock()
    return Setup(settings, ModelHolder(settings, logger, clock), reg, clock, logs)


def corrupt(root: Path, version: str) -> None:
    path = root / NAME / "versions" / version / "model.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def set_alias(root: Path, version: str) -> None:
    """Points live at ``version`` without the registry's checks (a broken or hand-edited alias)."""
    path = root / NAME / "aliases" / "live.json"
    path.write_text(json.dumps({"version": version, "previous": None, "history": []}))


def test_cold_start_serves_the_live_version(root: Path) -> None:
    s = make_holder(root, live="0002")
    model = s.holder.get()
    assert model.ref == {"name": NAME, "version": "0002"}
    assert (
        model.describe()["sha256"]
        == json.loads((root / NAME / "versions/0002/manifest.json").read_text())["sha256"]
    )


def test_refresh_follows_the_alias_at_most_every_refresh_seconds(root: Path) -> None:
    s = make_holder(root)
    first = s.holder.get()
    # WHEN the alias moves
    s.registry.promote("0002")
    # THEN nothing changes before MODEL_REFRESH_SECONDS
    s.clock.now += 59
    assert s.holder.get() is first
    # AND the new version is served after it
    s.clock.now += 2
    second = s.holder.get()
    assert second.version == "0002"
    # AND an unchanged alias (same ETag) keeps the very same loaded model
    s.clock.now += 61
    assert s.holder.get() is second


def test_a_failed_refresh_keeps_the_last_good_model(root: Path) -> None:
    s = make_holder(root)
    good = s.holder.get()
    # GIVEN an alias moved to a version whose model file is corrupted
    corrupt(root, "0002")
    set_alias(root, "0002")
    s.clock.now += 61
    # THEN the last good model stays
    assert s.holder.get() is good
    # WHEN the file is repaired (the alias unchanged), the next refresh retries and loads it
    corrupt(root, "0002")  # flips the same bit back
    s.clock.now += 61
    repaired = s.holder.get()
    assert repaired.version == "0002"
    # AND an alias naming a missing version keeps the current model too
    set_alias(root, "0099")
    s.clock.now += 61
    assert s.holder.get() is repaired
    records = [json.loads(line) for line in s.logs.getvalue().splitlines()]
    failures = [r for r in records if r["message"] == "model refresh failed"]
    assert [r["kept_version"] for r in failures] == ["0001", "0002"]
    assert "sha256" in failures[0]["exception"]


def test_pinned_versions_use_a_small_lru_cache(root: Path) -> None:
    s = make_holder(root, cache_size=1)
    live = s.holder.get()
    assert s.holder.get("1") is live and s.holder.get("0001") is live
    two = s.holder.get("0002")
    assert two.version == "0002" and s.holder.get("2") is two
    assert s.holder.get("0003").version == "0003"  # evicts 0002 (cache of one)
    assert s.holder.get("0002") is not two
    for unknown in ("0042", "abc", "0"):
        with pytest.raises(NotFound):
            s.holder.get(unknown)


def test_a_corrupt_pinned_version_is_503(root: Path) -> None:
    corrupt(root, "0002")
    s = make_holder(root)
    with pytest.raises(ModelUnavailable):
        s.holder.get("0002")
    assert s.holder.get().version == "0001"


def test_no_live_alias_is_503_until_one_is_set(root: Path) -> None:
    s = make_holder(root, live=None)
    with pytest.raises(ModelUnavailable):
        s.holder.get()
    s.registry.promote("0003")
    s.clock.now += 61
    assert s.holder.get().version == "0003"


@pytest.fixture
def registry_router(root: Path) -> Iterator[Router]:
    """The predict function's router over a holder that follows the test's registry."""
    s = make_holder(root, live="0003")
    models = ModelCatalog(s.settings, lambda_func.logger)
    yield build_router(s.settings, lambda_func.logger, lambda_func.metrics, models=models)


def test_the_handler_serves_the_registry_and_pinned_versions(registry_router: Router) -> None:
    router = registry_router
    response = handle(router, load_event("health_http_api"))
    assert json.loads(response["body"])["model"] == {"name": NAME, "version": "0003"}
    event = with_query(load_event("predict_http_api_jpeg"), model_version="0002")
    body = json.loads(handle(router, event)["body"])
    assert body["model"]["version"] == "0002" and len(body["predictions"]) == 3
    image = base64.b64encode(picture()).decode()
    event = with_json(
        load_event("predict_rest_api_json_image"), {"image": image, "model_version": 2}
    )
    body = json.loads(handle(router, event)["body"])
    assert body["model"]["version"] == "0002"
    event = with_query(load_event("model_rest_api"), model_version="0042")
    response = handle(router, event)
    assert response["statusCode"] == 404
