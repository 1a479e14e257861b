"""The model registry on both stores (moto's S3 server and a local folder): publish, alias, CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest

from helpers import ROOT
from imgclf import artifact
from imgclf import registry as reg
from imgclf.serving.model_holder import ModelHolder
from imgclf.settings import ServeSettings
from imgclf.storage import ObjectNotFound, PreconditionFailed, Store, open_store

BUNDLED = ROOT / "model" / "scene"


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same tests run against moto's S3 server and a local folder."""
    if request.param == "s3":
        bucket = request.getfixturevalue("new_bucket")("models")
        return open_store(f"s3://{bucket}/models")
    return open_store(str(tmp_path / "registry"))


@pytest.fixture
def registry(store: Store) -> reg.Registry:
    return reg.Registry(store, "scene")


def copy_model(tmp_path: Path, name: str = "candidate") -> Path:
    target = tmp_path / name
    shutil.copytree(BUNDLED, target)
    return target


def rewrite_manifest(model_dir: Path, **changes: Any) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.update(changes)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


# ---- the store's conditional requests ----------------------------------------------------------
def test_conditional_writes_and_reads(store: Store) -> None:
    # GIVEN a new key
    etag = store.put("a/b.json", b"1", if_none_match=True)
    # THEN a second create fails, a stale If-Match fails, and nothing changed
    with pytest.raises(PreconditionFailed):
        store.put("a/b.json", b"2", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("a/b.json", b"3", if_match='"0123"')
    assert store.get("a/b.json").data == b"1"
    # WHEN it is replaced with the right ETag
    new = store.put("a/b.json", b"4", if_match=etag)
    # THEN a conditional GET with the old ETag returns it, with the new one "unchanged"
    assert store.get("a/b.json", if_none_match=etag).data == b"4"
    assert store.get("a/b.json", if_none_match=new) is None
    with pytest.raises(PreconditionFailed):
        store.delete("a/b.json", if_match=etag)
    store.delete("a/b.json", if_match=new)
    with pytest.raises(ObjectNotFound):
        store.get("a/b.json")
    with pytest.raises(PreconditionFailed):
        store.put("a/b.json", b"5", if_match=new)  # If-Match on a missing key


def test_listing(store: Store) -> None:
    for key in ("train/sea/1.jpg", "train/forest/2.jpg", "train/forest/3.jpg", "test/sea/4.jpg"):
        store.put(key, b"x")
    assert list(store.list("train/forest/")) == ["train/forest/2.jpg", "train/forest/3.jpg"]
    assert len(list(store.list("train/"))) == 3
    assert store.list_folders("train/") == ["forest", "sea"]
    assert store.list_folders("nothing/") == []


def test_only_one_of_concurrent_creators_wins(store: Store) -> None:
    # GIVEN eight threads creating the same key at the same moment
    barrier, wins = threading.Barrier(8), []

    def create(i: int) -> None:
        barrier.wait()
        try:
            store.put("lock.json", str(i).encode(), if_none_match=True)
            wins.append(i)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN exactly one did, and its content is the one stored
    assert len(wins) == 1
    assert store.get("lock.json").data == str(wins[0]).encode()


# ---- publishing --------------------------------------------------------------------------------
def test_publish_promote_read(registry: reg.Registry) -> None:
    # GIVEN an empty registry
    with pytest.raises(reg.AliasNotFound):
        registry.read_live()
    # WHEN the bundled model is published twice
    assert registry.publish(BUNDLED) == "0001"
    assert registry.publish(BUNDLED, images_dir=None) == "0002"
    # THEN both versions are listed and hold every file unchanged
    assert registry.list_versions() == ["0001", "0002"]
    files = registry.read_version("2", names=artifact.MODEL_FILES)
    assert files == {n: (BUNDLED / n).read_bytes() for n in artifact.MODEL_FILES}
    assert "model.keras" not in registry.read_version("0001")  # serving does not need it
    assert artifact.verify_files(files).sha256 == hashlib.sha256(files["model.tflite"]).hexdigest()
    # WHEN 0001 is promoted
    pointer = registry.promote("0001", reason="first")
    live, etag = registry.read_live()
    assert live == pointer and live["version"] == "0001" and live["previous"] is None
    # THEN a conditional read with that ETag says "unchanged", until the alias moves
    assert registry.read_live(etag) == (None, etag)
    registry.promote("0002")
    moved, new_etag = registry.read_live(etag)
    assert moved["version"] == "0002" and moved["previous"] == "0001" and new_etag != etag
    assert registry.describe("0002")["live"] is True
    with pytest.raises(reg.VersionNotFound):
        registry.read_version("0003")
    with pytest.raises(reg.VersionNotFound):
        registry.read_version("../x")


def test_versions_are_immutable(registry: reg.Registry) -> None:
    registry.publish(BUNDLED)
    with pytest.raises(PreconditionFailed):
        registry.store.put("scene/versions/0001/model.tflite", b"other", if_none_match=True)


def test_rollback(registry: reg.Registry) -> None:
    for _ in range(3):
        registry.promote(registry.publish(BUNDLED))
    assert registry.read_live()[0]["history"] == ["0002", "0001"]
    # WHEN rolled back twice
    assert registry.rollback()["version"] == "0002"
    pointer = registry.rollback()
    # THEN live is the first version, and there is nothing before it
    assert pointer == registry.read_live()[0]
    assert pointer["version"] == "0001" and pointer["previous"] is None
    with pytest.raises(reg.RegistryError, match="no previous version"):
        registry.rollback()


def test_two_publishers_never_interleave(registry: reg.Registry) -> None:
    # GIVEN two publishers that read the same live alias
    registry.promote(registry.publish(BUNDLED))
    a, b = registry.publish(BUNDLED), registry.publish(BUNDLED)
    _, etag = registry.read_live()
    barrier, outcomes = threading.Barrier(2), {}

    def promote(version: str) -> None:
        barrier.wait()
        try:
            registry.promote(version, expected_etag=etag)
            outcomes[version] = "moved"
        except reg.AliasConflict:
            outcomes[version] = "conflict"

    threads = [threading.Thread(target=promote, args=(v,)) for v in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN exactly one moved the alias, and the alias names the winner with 0001 before it
    assert sorted(outcomes.values()) == ["conflict", "moved"]
    winner = next(v for v, o in outcomes.items() if o == "moved")
    assert registry.read_live()[0]["version"] == winner
    assert registry.read_live()[0]["previous"] == "0001"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda d: (d / "model.tflite").write_bytes(b"x" + (d / "model.tflite").read_bytes()),
            "sha256",
        ),
        (lambda d: (d / "labels.json").write_text('["a", "b"]'), "labels.json"),
        (lambda d: (d / "metrics.json").unlink(), "lacks metrics.json"),
    ],
    ids=["sha256-mismatch", "labels-differ", "missing-file"],
)
def test_publish_refuses_an_invalid_model(
    registry: reg.Registry, tmp_path: Path, tamper: Any, message: str
) -> None:
    candidate = copy_model(tmp_path)
    tamper(candidate)
    with pytest.raises(artifact.InvalidModel, match=message):
        registry.publish(candidate)
    assert registry.list_versions() == []


def test_publish_refuses_a_file_that_is_not_tflite(registry: reg.Registry, tmp_path: Path) -> None:
    # GIVEN a manifest whose sha256 is right for a file that is not a flatbuffer
    candidate = copy_model(tmp_path)
    data = b"<html>not a model</html>"
    (candidate / "model.tflite").write_bytes(data)
    rewrite_manifest(candidate, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    with pytest.raises(artifact.InvalidModel, match="not a TFLite flatbuffer"):
        registry.publish(candidate)
    assert registry.list_versions() == []


def test_publish_refuses_a_model_that_does_not_load(registry: reg.Registry, tmp_path: Path) -> None:
    # GIVEN a truncated flatbuffer that passes the cheap checks (hash, identifier)
    candidate = copy_model(tmp_path)
    data = (candidate / "model.tflite").read_bytes()[:4096]
    (candidate / "model.tflite").write_bytes(data)
    rewrite_manifest(candidate, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    # THEN the check in a separate process refuses it
    with pytest.raises(artifact.InvalidModel, match="separate process"):
        registry.publish(candidate)
    assert registry.list_versions() == []


def test_publish_refuses_a_spec_that_differs_from_the_manifest(
    registry: reg.Registry, tmp_path: Path
) -> None:
    candidate = copy_model(tmp_path)
    manifest = json.loads((candidate / "manifest.json").read_text())
    rewrite_manifest(candidate, input={**manifest["input"], "shape": [1, 224, 224, 3]})
    with pytest.raises(artifact.InvalidModel, match="input shape"):
        registry.publish(candidate)


def test_verify_predicts_on_known_images(sample_data: Path) -> None:
    report = artifact.verify_dir(BUNDLED, sample_data / "seg_test")
    assert report["checked_images"] == artifact.CHECK_IMAGES
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["sha256"] == artifact.verify_files(artifact.read_dir(BUNDLED)).sha256


class CrashingStore:
    """A store whose process "dies" (raises) on the n-th write: a publisher crashing half way."""

    def __init__(self, store: Store, writes: int) -> None:
        self.store, self.writes, self.uri = store, writes, store.uri

    def put(self, key: str, data: bytes, **kwargs: Any) -> str:
        self.writes -= 1
        if self.writes < 0:
            raise ConnectionError("the publisher died")
        return self.store.put(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_publisher_that_dies_half_way_leaves_no_version(registry: reg.Registry) -> None:
    # GIVEN a live version 0001
    registry.promote(registry.publish(BUNDLED))
    live = registry.read_live()
    # WHEN a publisher dies after writing 2 of a version's 5 files
    crashing = reg.Registry(CrashingStore(registry.store, writes=2), "scene")
    with pytest.raises(ConnectionError):
        crashing.publish(BUNDLED)
    # THEN that version does not exist, live is untouched, and the next publish skips its number
    assert registry.list_versions() == ["0001"]
    with pytest.raises(reg.VersionNotFound):
        registry.read_version("0002")
    assert registry.read_live() == live
    assert registry.publish(BUNDLED) == "0003"


def test_a_corrupt_file_in_the_bucket_is_refused(
    registry: reg.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN 0001 live in a serving container, and 0002 whose model.tflite was corrupted in place
    registry.promote(registry.publish(BUNDLED))
    registry.publish(BUNDLED)
    key = "scene/versions/0002/model.tflite"
    corrupt = bytearray(registry.store.get(key).data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    registry.store.put(key, bytes(corrupt))
    settings = ServeSettings(
        model_registry_uri=registry.store.uri,
        model_name="scene",
        model_refresh_seconds=0.0,
        model_cache_size=1,
    )
    holder = ModelHolder(settings, logger=logging.getLogger("serving"))
    assert holder.get().version == "0001"
    # THEN promoting it is refused, and the alias stays
    with pytest.raises(artifact.InvalidModel, match="sha256"):
        registry.promote("0002")
    assert registry.read_live()[0]["version"] == "0001"
    # WHEN the alias is pointed at it anyway (by hand, bypassing the registry)
    _, etag = registry.read_live()
    registry.store.put(
        "scene/aliases/live.json", json.dumps({"version": "0002", "previous": "0001"}).encode()
    )
    assert registry.read_live(etag)[0]["version"] == "0002"
    # THEN serving refuses the file and keeps answering with its last good model
    assert holder.get().version == "0001"
    assert "model refresh failed" in caplog.messages


# ---- the command line ----------------------------------------------------------------------------
def cli(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgclf.registry", "--uri", uri, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ,
        check=False,
    )


@pytest.mark.slow
def test_cli(new_bucket: Any) -> None:
    uri = f"s3://{new_bucket('models')}/models"
    # publish + promote, publish, list, show, promote, rollback
    assert "version 0001" in cli(uri, "publish", str(BUNDLED), "--promote").stdout
    assert "version 0002" in cli(uri, "publish", str(BUNDLED)).stdout
    rows = cli(uri, "list").stdout.splitlines()
    assert rows[1].split()[0] == "0001" and rows[1].split()[-1] == "live"
    assert rows[2].split()[0] == "0002" and rows[2].split()[-1] != "live"
    accuracy = json.loads((BUNDLED / "manifest.json").read_text())["metrics"]["accuracy"]
    assert f"{accuracy:.4f}" in rows[1]
    shown = json.loads(cli(uri, "show", "2").stdout)
    assert shown["version"] == "0002" and shown["live"] is False
    assert json.loads(cli(uri, "promote", "2").stdout)["version"] == "0002"
    assert json.loads(cli(uri, "rollback").stdout)["version"] == "0001"
    # errors are one line on stderr and exit code 1
    missing = cli(uri, "promote", "9")
    assert missing.returncode == 1 and "no version 0009" in missing.stderr
    # two versions of 5 files + ood.npz each, and the alias
    assert boto3.client("s3").list_objects_v2(Bucket=uri.split("/")[2])["KeyCount"] == 13
