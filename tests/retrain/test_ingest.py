"""Ingestion of uploads (moto's S3 server): events, content addressing, rejections, archives.

Each test uploads real objects to a fresh bucket and hands the retrain handler the S3 event that
the upload would send (events/s3_put.json with the key, size and ETag filled in).
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

import retrain_handler
from helpers import ROOT, encode, load_event, scene_image, upload
from imgclf import layout
from imgclf.layout import PENDING, TEST
from imgclf.local.context import LambdaContext
from imgclf.pipeline.sample_data import CLASSES
from imgclf.registry import Registry, list_models, open_registry
from imgclf.retrain.ingest import seed_data, seed_split, split_of, uploads_from_event
from imgclf.settings import RetrainSettings
from imgclf.storage import Store, open_store

MODEL = "scene"


@pytest.fixture
def bucket(new_bucket: Any, sample_data: Path) -> str:
    """A data bucket with the sample test split (which defines the known classes)."""
    name = new_bucket("data")
    assert seed_split(layout.data_store(name), sample_data / "seg_test", TEST, MODEL) == 24
    return name


@pytest.fixture
def store(bucket: str) -> Store:
    return layout.data_store(bucket)


def settings_for(bucket: str, **changes: Any) -> RetrainSettings:
    # No job starts in these tests: they are about ingestion.
    return RetrainSettings(data_bucket=bucket, min_new_images=1_000_000, **changes)


def handle(event: dict[str, Any], settings: RetrainSettings, tmp_path: Path) -> dict[str, Any]:
    """The retrain handler over the bucket, with a registry that serves the scene model."""
    store = layout.data_store(settings.data_bucket)
    registry_store = open_store(str(tmp_path / "registry"))
    if MODEL not in list_models(registry_store):
        registry = Registry(registry_store, MODEL)
        registry.promote(registry.publish(ROOT / "model" / MODEL))
    context = LambdaContext("RetrainFunction", 900)
    return retrain_handler.handle(event, context, store, registry_store, settings)


def keys(store: Store, prefix: str) -> list[str]:
    return list(store.list(prefix))


def data_keys(store: Store, class_name: str, model: str = MODEL) -> list[str]:
    """A class's images in both splits (an image's hash decides which)."""
    return [
        k for split in ("train/", "test/") for k in keys(store, f"{split}{model}/{class_name}/")
    ]


def rejections(store: Store) -> list[dict[str, Any]]:
    return [json.loads(store.get(k).data) for k in store.list("rejected/")]


# ---- events --------------------------------------------------------------------------------------
def test_events_pick_uploads_and_decode_keys() -> None:
    put, bucket = load_event("s3_put"), "imgclf-data"
    # sam encodes a space as %20, S3 itself as '+': both decode to the same key
    plus = copy.deepcopy(put)
    plus["Records"][0]["s3"]["object"]["key"] = "incoming/scene/forest/my+photo+%281%29.jpg"
    outside = copy.deepcopy(put)
    outside["Records"][0]["s3"]["object"]["key"] = "train/forest/x.jpg"
    foreign = copy.deepcopy(put)
    foreign["Records"][0]["s3"]["bucket"]["name"] = "someone-else"
    event = {
        "Records": [
            *put["Records"],
            *plus["Records"],
            *load_event("s3_delete")["Records"],
            *outside["Records"],
            *foreign["Records"],
            *load_event("s3_put_retrain")["Records"],
        ]
    }
    uploads, ignored = uploads_from_event(event, bucket)
    assert [u.key for u in uploads] == [
        "incoming/scene/forest/my photo (1).jpg",
        "incoming/_retrain/scene.json",
    ]
    assert len(ignored) == 3
    assert uploads_from_event(load_event("s3_test_event"), bucket) == ([], ["s3:TestEvent"])


# ---- images --------------------------------------------------------------------------------------
def test_an_upload_is_stored_once(bucket: str, store: Store, tmp_path: Path) -> None:
    settings = settings_for(bucket)
    data = encode(scene_image("forest", seed=5))
    # WHEN an image with a name that needs URL encoding is uploaded
    event = upload(bucket, "incoming/scene/forest/my photo (1).jpg", data)
    answer = handle(event, settings, tmp_path)
    # THEN it is stored under its content hash, counted as new, and the upload is gone
    assert answer["uploads"][0]["stored"] == 1 and answer["uploads"][0]["model"] == MODEL
    new = [k for k in data_keys(store, "forest") if store.get(k).data == data]
    assert len(new) == 1 and new[0].endswith(".jpg")
    assert new[0].startswith(split_of(data))
    assert keys(store, PENDING) == [PENDING + new[0].split("/", 1)[1]]
    assert keys(store, "incoming/") == []
    # WHEN the same event is delivered again, and the same bytes are uploaded under another name
    assert handle(event, settings, tmp_path)["uploads"][0]["skipped"]
    again = handle(upload(bucket, "incoming/scene/forest/copy.jpg", data), settings, tmp_path)
    # THEN nothing is added
    assert again["uploads"][0]["duplicates"] == 1
    assert len(new) == 1 and len(keys(store, PENDING)) == 1
    assert keys(store, "incoming/") == [] and rejections(store) == []


def test_the_real_format_names_the_file(bucket: str, store: Store, tmp_path: Path) -> None:
    png = encode(scene_image("sea", seed=9), "PNG")
    handle(upload(bucket, "incoming/scene/sea/photo.jpg", png), settings_for(bucket), tmp_path)
    assert [k for k in keys(store, PENDING)][0].endswith(".png")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (encode(scene_image("forest"))[:400], "invalid_image"),
        (b"this is not an image", "invalid_image"),
        (encode(scene_image("forest"), "TIFF"), "unsupported_media_type"),
        (encode(scene_image("forest", size=(8, 8))), "image_too_small"),
    ],
    ids=["truncated-jpeg", "text", "tiff", "too-small"],
)
def test_a_bad_image_is_rejected_with_a_reason(
    bucket: str, store: Store, tmp_path: Path, data: bytes, code: str
) -> None:
    answer = handle(
        upload(bucket, "incoming/scene/forest/bad.jpg", data), settings_for(bucket), tmp_path
    )
    assert answer["uploads"][0]["stored"] == 0
    [record] = rejections(store)
    assert record["key"] == "incoming/scene/forest/bad.jpg" and record["code"] == code
    assert record["reason"] and record["time"]
    assert keys(store, "incoming/") == [] and keys(store, PENDING) == []


def test_classes(bucket: str, store: Store, tmp_path: Path) -> None:
    data = encode(scene_image("forest", seed=3))
    # GIVEN new classes refused (the default)
    handle(upload(bucket, "incoming/scene/desert/a.jpg", data), settings_for(bucket), tmp_path)
    handle(upload(bucket, "incoming/scene/Forest/a.jpg", data), settings_for(bucket), tmp_path)
    handle(upload(bucket, "incoming/scene/a.jpg", data), settings_for(bucket), tmp_path)
    codes = sorted(r["code"] for r in rejections(store))
    assert codes == ["invalid_class", "no_class", "unknown_class"]
    assert "RETRAIN_ALLOW_NEW_CLASSES" in next(
        r["reason"] for r in rejections(store) if r["code"] == "unknown_class"
    )
    # WHEN new classes are allowed
    allowed = settings_for(bucket, allow_new_classes=True)
    handle(upload(bucket, "incoming/scene/desert/a.jpg", data), allowed, tmp_path)
    assert len(data_keys(store, "desert")) == 1


def test_every_record_of_an_event_is_handled(bucket: str, store: Store, tmp_path: Path) -> None:
    events = [
        upload(bucket, f"incoming/scene/{c}/{i}.jpg", encode(scene_image(c, seed=100 + i)))
        for i, c in enumerate(("sea", "street", "glacier"))
    ]
    event = {"Records": [r for e in events for r in e["Records"]] * 2}  # and each one twice
    answer = handle(event, settings_for(bucket), tmp_path)
    assert [u["stored"] for u in answer["uploads"]] == [1, 1, 1]
    assert len(keys(store, PENDING)) == 3


def test_out_of_order_deliveries(bucket: str, store: Store, tmp_path: Path) -> None:
    # GIVEN a key uploaded twice before its events arrive, newest event first
    first = upload(bucket, "incoming/scene/sea/x.jpg", encode(scene_image("sea", seed=1)))
    newest_data = encode(scene_image("sea", seed=2))
    second = upload(bucket, "incoming/scene/sea/x.jpg", newest_data)
    handle(second, settings_for(bucket), tmp_path)
    handle(first, settings_for(bucket), tmp_path)
    # THEN the content S3 holds is stored once, and the stale event changes nothing
    [marker] = keys(store, PENDING)
    assert store.get(split_of(newest_data) + marker[len(PENDING) :]).data == newest_data
    assert keys(store, "incoming/") == []


def test_too_large_an_upload_is_rejected_unread(bucket: str, store: Store, tmp_path: Path) -> None:
    event = upload(bucket, "incoming/scene/sea/huge.jpg", encode(scene_image("sea")))
    handle(event, settings_for(bucket, max_upload_bytes=1000), tmp_path)
    [record] = rejections(store)
    assert record["code"] == "too_large"
    # never read, so never stored; left where it is for whoever uploaded it
    assert keys(store, "train/") == []
    assert keys(store, "incoming/") == ["incoming/scene/sea/huge.jpg"]


def test_seeding_is_idempotent(new_bucket: Any, sample_data: Path) -> None:
    store = layout.data_store(new_bucket("data"))
    assert seed_data(store, sample_data, MODEL) == {"train": 72, "test": 24}
    assert seed_data(store, sample_data, MODEL) == {"train": 72, "test": 24}
    assert len(keys(store, "")) == 96 and store.list_folders("test/scene/") == sorted(CLASSES)


# ---- archives ------------------------------------------------------------------------------------
def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            # writestr keeps the name as given (ZipFile.write would sanitise it)
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def test_a_zip_of_class_folders(bucket: str, store: Store, tmp_path: Path) -> None:
    good = {
        "forest/a.jpg": encode(scene_image("forest", seed=11)),
        "sea/b.png": encode(scene_image("sea", seed=12), "PNG"),
        "batch/street/c.jpg": encode(scene_image("street", seed=13)),
    }
    bad = {
        "../../evil.jpg": good["forest/a.jpg"],
        "forest/../../../etc/cron.jpg": encode(scene_image("forest", seed=14)),
        "/abs/forest/x.jpg": encode(scene_image("forest", seed=15)),
        "loose.jpg": encode(scene_image("forest", seed=16)),
        "forest/readme.txt": b"hello",
        "forest/broken.jpg": b"\xff\xd8\xff garbage",
        "desert/d.jpg": encode(scene_image("forest", seed=17)),
    }
    event = upload(bucket, "incoming/scene/batch 1.zip", make_zip({**good, **bad}))
    answer = handle(event, settings_for(bucket), tmp_path)
    # THEN the good entries are stored, every bad one has its reason, nothing lands elsewhere
    assert answer["uploads"][0]["stored"] == 3
    by_entry = {r["entry"]: r["code"] for r in rejections(store)}
    assert by_entry == {
        "../../evil.jpg": "path_traversal",
        "forest/../../../etc/cron.jpg": "path_traversal",
        "/abs/forest/x.jpg": "path_traversal",
        "loose.jpg": "no_class",
        "forest/readme.txt": "not_an_image",
        "forest/broken.jpg": "invalid_image",
        "desert/d.jpg": "unknown_class",
    }
    prefixes = ("train/", "test/", "rejected/", PENDING)
    all_keys = keys(store, "")
    assert all(k.startswith(prefixes) for k in all_keys), all_keys
    assert len(keys(store, PENDING)) == 3
    # a redelivery adds nothing (the archive is gone) and a re-upload only duplicates
    handle(event, settings_for(bucket), tmp_path)
    again = handle(
        upload(bucket, "incoming/scene/again.zip", make_zip(good)), settings_for(bucket), tmp_path
    )
    assert again["uploads"][0]["duplicates"] == 3 and len(keys(store, "")) == len(all_keys)


def test_a_file_that_is_not_a_zip(bucket: str, store: Store, tmp_path: Path) -> None:
    handle(
        upload(bucket, "incoming/scene/x.zip", b"PK\x03\x04 not really"),
        settings_for(bucket),
        tmp_path,
    )
    assert [r["code"] for r in rejections(store)] == ["invalid_archive"]


# ---- the Lambda entry point ---------------------------------------------------------------------
def test_lambda_handler(
    bucket: str, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATA_BUCKET", bucket)
    monkeypatch.setenv("MODEL_REGISTRY_URI", str(tmp_path / "registry"))
    monkeypatch.setenv("RETRAIN_MIN_NEW_IMAGES", "1000")
    handler = importlib.reload(retrain_handler)
    event = upload(bucket, "incoming/scene/glacier/a b.jpg", encode(scene_image("glacier", seed=8)))
    answer = handler.lambda_handler(event, LambdaContext("RetrainFunction", 900))
    assert answer["uploads"][0]["stored"] == 1 and "jobs" not in answer
    assert handler.lambda_handler(
        load_event("s3_test_event"), LambdaContext("RetrainFunction", 900)
    )["ignored"] == ["s3:TestEvent"]


# ---- models --------------------------------------------------------------------------------------
def test_a_first_upload_starts_a_model_with_a_stable_held_out_split(
    bucket: str, store: Store, tmp_path: Path
) -> None:
    # GIVEN a model name nobody has used, WHEN twenty images of two classes are uploaded
    images = {
        f"{c}-{i}": encode(scene_image(c, seed=300 + i))
        for c in ("sea", "street")
        for i in range(10)
    }
    for name, data in images.items():
        label = name.split("-")[0]
        handle(
            upload(bucket, f"incoming/my-dogs/{label}/{name}.jpg", data),
            settings_for(bucket),
            tmp_path,
        )
    # THEN every image is stored under the new model, in the split its content decides
    stored = keys(store, "train/my-dogs/") + keys(store, "test/my-dogs/")
    assert len(stored) == 20 and rejections(store) == []
    for data in images.values():
        [key] = [k for k in stored if store.get(k).data == data]
        assert key.startswith(split_of(data) + "my-dogs/")
    assert {k.split("/")[0] for k in stored} == {"train", "test"}  # 20 images: both splits used
    assert len(keys(store, f"{PENDING}my-dogs/")) == 20


def test_a_served_model_with_no_training_data_takes_no_uploads(
    bucket: str, store: Store, tmp_path: Path
) -> None:
    # GIVEN the registry serves a pretrained model that was not trained from this bucket
    registry = open_registry(str(tmp_path / "registry"), "imagenet")
    registry.promote(registry.publish(ROOT / "model" / "scene"))
    data = encode(scene_image("sea", seed=4))
    answer = handle(
        upload(bucket, "incoming/imagenet/tabby/a.jpg", data), settings_for(bucket), tmp_path
    )
    assert answer["uploads"][0]["stored"] == 0
    assert [r["code"] for r in rejections(store)] == ["model_not_trainable"]
    handle(upload(bucket, "incoming/_bad/a/b.jpg", data), settings_for(bucket), tmp_path)
    assert sorted(r["code"] for r in rejections(store)) == ["invalid_model", "model_not_trainable"]
