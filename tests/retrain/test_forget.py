"""Forgetting an image: ``python -m imgclf.registry forget <sha256>`` against a versioned data
bucket in moto's S3 server, with the image in every place the data bucket can hold it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import pytest

from helpers import encode, scene_image
from imgclf import captures, feedback, layout
from imgclf.captures import Capture
from imgclf.pipeline.embeddings import EmbeddingCache
from imgclf.registry.__main__ import main as registry_main
from imgclf.retrain.forget import forget
from imgclf.retrain.ingest import store_image
from imgclf.storage import Store

CACHE_KEY = "v1-0123456789abcdef-224-crop_0.875_bicubic"


def shard_bytes(tmp: Path, digests: list[str], dim: int = 4) -> bytes:
    """One embedding shard (as ``EmbeddingCache`` writes it) with a row per digest."""
    folder = tmp / f"shard-{len(list(tmp.iterdir()))}"
    features = np.arange(len(digests) * dim, dtype=np.float32).reshape(len(digests), dim)
    path = EmbeddingCache(folder).add(digests, features)
    assert path is not None
    return path.read_bytes()


def capture_of(request_id: str, sha: str) -> Capture:
    return Capture(
        request_id=request_id,
        time="2026-12-04T10:00:00.000000+00:00",
        model="scene",
        version="0001",
        predictions=[{"label": "forest", "score": 0.9}],
        latency_ms=5.0,
        input_kind="raw",
        image_sha256=sha,
    )


def every_object(bucket: str) -> dict[str, bytes]:
    s3 = boto3.client("s3")
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


@pytest.fixture
def bucket(new_bucket: Callable[[str], str]) -> str:
    name = new_bucket("forget")
    boto3.client("s3").put_bucket_versioning(
        Bucket=name, VersioningConfiguration={"Status": "Enabled"}
    )
    return name


def test_a_forgotten_image_is_gone_from_every_prefix(
    bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store: Store = layout.data_store(bucket)
    image = encode(scene_image("forest", seed=21))
    other = encode(scene_image("sea", seed=22))
    sha, other_sha = (hashlib.sha256(x).hexdigest() for x in (image, other))
    # GIVEN the image in the training data of two models (train/ and a pending marker for scene)
    trained_key, _ = store_image(store, "train/", "scene", "forest", image, "jpg", pending=True)
    store_image(store, "test/", "content", "object", image, "jpg", pending=False)
    store_image(store, "train/", "scene", "sea", other, "jpg", pending=True)
    # ... uploads of it under any name, one naming its hash, an archive nobody can check cheaply
    store.put("incoming/scene/forest/holiday.jpg", image)
    store.put(f"incoming/scene/forest/20261204T100000Z-0123456789abcdef-{sha}.jpg", image)
    store.put("incoming/scene/keep.jpg", other)
    store.put("incoming/scene/photos.zip", b"PK\x05\x06" + b"\0" * 18)
    store.put("uploads/20261204T100000Z-0123456789abcdef.jpg", image)
    # ... captured twice, and feedback about it (another image's capture and feedback stay)
    captures.write_capture(store, capture_of("req-a", sha), image)
    captures.write_capture(store, capture_of("req-b", sha), image)
    captures.write_capture(store, capture_of("req-c", other_sha), other)
    feedback.submit(store, capture_of("req-a", sha), "forest")
    feedback.submit(store, capture_of("req-c", other_sha), "sea")
    # ... and its features in the embedding caches: a shard with others, one of its own
    prefix = layout.embeddings_prefix("scene") + CACHE_KEY
    store.put(
        f"{prefix}/20261201T000000000000Z-aaaaaaaa.npz", shard_bytes(tmp_path, [sha, other_sha])
    )
    store.put(f"{prefix}/20261202T000000000000Z-bbbbbbbb.npz", shard_bytes(tmp_path, [sha]))
    store.put(f"{prefix}/20261203T000000000000Z-cccccccc.npz", shard_bytes(tmp_path, [other_sha]))

    # WHEN it is forgotten, from the registry's command line
    assert registry_main(["forget", sha, "--bucket", bucket]) == 0
    printed = capsys.readouterr().out
    assert f"forgot {sha}" in printed and "incoming/_retrain/scene.json (full)" in printed
    assert "unchecked incoming/scene/photos.zip" in printed

    # THEN no object holds its bytes, and no key names it
    objects = every_object(bucket)
    assert not [k for k, data in objects.items() if data == image]
    assert not [k for k in objects if sha in k]
    # The other image is untouched everywhere.
    assert objects[f"train/scene/sea/{other_sha}.jpg"] == other
    assert objects["incoming/scene/keep.jpg"] == other
    assert objects[captures.image_key(other_sha)] == other
    assert "feedback/pending/req-c.json" in objects
    assert not any(k.startswith("feedback/") and "req-a" in k for k in objects)
    # The capture records stay, marked: they say what was answered, and that the image is gone.
    for request_id in ("req-a", "req-b"):
        record = captures.find_capture(store, request_id)
        assert record is not None and record.extra.get("image_forgotten")
    assert "image_forgotten" not in captures.find_capture(store, "req-c").extra
    # Every shard left holds only the other image's features.
    shards = [k for k in objects if k.startswith(layout.EMBEDDINGS)]
    assert len(shards) == 2
    for key in shards:
        with np.load(io.BytesIO(objects[key])) as shard:
            assert list(shard["sha256"]) == [other_sha]
    # The model trained on it retrains from scratch; the one only tested on it needs no job.
    trigger = json.loads(objects["incoming/_retrain/scene.json"])
    assert trigger == {"mode": "full", "reason": f"forgot {sha}"}
    assert "incoming/_retrain/content.json" not in objects
    # And the bucket's versions of what was deleted are gone too (only delete markers remain).
    versions = boto3.client("s3").list_object_versions(Bucket=bucket, Prefix=trained_key)
    assert versions.get("Versions", []) == []
    image_versions = boto3.client("s3").list_object_versions(
        Bucket=bucket, Prefix=captures.image_key(sha)
    )
    assert image_versions.get("Versions", []) == []

    # Forgetting it again finds nothing more to do.
    report = forget(store, sha)
    assert (report.deleted, report.marked, report.rewritten) == ([], [], [])


def test_forget_refuses_what_is_not_a_sha256(bucket: str) -> None:
    assert registry_main(["forget", "not-a-hash", "--bucket", bucket]) == 2
    with pytest.raises(ValueError, match="sha256"):
        forget(layout.data_store(bucket), "../train")
