"""The retraining job's embedding cache against moto's S3: download, upload, compaction, and two
real jobs on a transfer model, the second of which computes only the new images (slow).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import save_transfer_model
from imgclf import layout
from imgclf.pipeline import photo_data
from imgclf.pipeline.embeddings import EmbeddingCache, file_digest
from imgclf.registry import open_registry
from imgclf.retrain.ingest import seed_split, split_of, store_image
from imgclf.retrain.job import download_embeddings, run_job, upload_embeddings
from imgclf.retrain.launch import start_job
from imgclf.retrain.records import JobRecord
from imgclf.settings import RetrainSettings
from imgclf.storage import Store

MODEL = "content"
KEY = "v1-0123456789abcdef-224-crop_0.875_bicubic"
DIM = 8


class RecordingStore:
    """A real store that also remembers the writes and deletes made through it, in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.uri = store.uri
        self.calls: list[tuple[str, str]] = []

    def put(self, key: str, data: bytes, **conditions: Any) -> str:
        self.calls.append(("put", key))
        return self.store.put(key, data, **conditions)

    def delete(self, key: str, **conditions: Any) -> None:
        self.calls.append(("delete", key))
        self.store.delete(key, **conditions)

    def get(self, key: str, **conditions: Any) -> Any:
        return self.store.get(key, **conditions)

    def list(self, prefix: str) -> Iterator[str]:
        return self.store.list(prefix)

    def list_folders(self, prefix: str) -> list[str]:
        return self.store.list_folders(prefix)


def shard_keys(store: Store) -> list[str]:
    return list(store.list(layout.embeddings_prefix(MODEL)))


def add_rows(folder: Path, start: int, count: int) -> dict[str, np.ndarray]:
    """Writes one shard of ``count`` rows into ``folder`` (as a training run would)."""
    names = [file_digest(str(i).encode()) for i in range(start, start + count)]
    features = np.random.default_rng(start).normal(size=(count, DIM)).astype(np.float32)
    EmbeddingCache(folder, dim=DIM).add(names, features)
    return dict(zip(names, features, strict=True))


def test_shards_go_up_and_come_back_and_nothing_else_is_touched(
    new_bucket: Callable[[str], str], tmp_path: Path
) -> None:
    store = layout.data_store(new_bucket("data"))
    prefix = layout.embeddings_prefix(MODEL)
    # GIVEN a first job's shard uploaded, and objects under the prefix that are not shards
    first = tmp_path / "first"
    rows = add_rows(first / KEY, 0, 3)
    result = upload_embeddings(store, MODEL, first, downloaded=[])
    assert len(result["shards_uploaded"]) == 1 and result["compacted"] == {}
    store.put(f"{prefix}{KEY}/notes.txt", b"not a shard")
    store.put(f"{prefix}{KEY}/deeper/x.npz", b"not where shards are")
    store.put(f"{layout.embeddings_prefix('other')}{KEY}/x.npz", b"another model's")
    # WHEN the next job downloads the cache
    second = tmp_path / "second"
    downloaded = download_embeddings(store, MODEL, second)
    # THEN it has that shard alone, with every row
    assert downloaded == result["shards_uploaded"]
    found = EmbeddingCache(second / KEY, dim=DIM).lookup(list(rows))
    np.testing.assert_array_equal(found.features, np.stack(list(rows.values())))
    # AND what it downloaded is not uploaded again; only what training added is
    add_rows(second / KEY, 3, 2)
    again = upload_embeddings(store, MODEL, second, downloaded)
    assert len(again["shards_uploaded"]) == 1 and again["shards_uploaded"] != downloaded
    assert len([k for k in shard_keys(store) if k.endswith(".npz")]) == 3  # 2 shards + deeper/
    # AND an empty bucket gives an empty cache
    assert download_embeddings(store, "nothing-yet", tmp_path / "empty") == []


def test_many_shards_are_merged_first_then_removed(
    new_bucket: Callable[[str], str], tmp_path: Path
) -> None:
    store = RecordingStore(layout.data_store(new_bucket("data")))
    prefix = layout.embeddings_prefix(MODEL)
    # GIVEN eight shards in the bucket (one job each) and one that cannot be read
    expected: dict[str, np.ndarray] = {}
    for i in range(8):
        folder = tmp_path / f"job{i}"
        expected.update(add_rows(folder / KEY, 10 * i, 3))
        upload_embeddings(store, MODEL, folder, downloaded=[])
    store.put(f"{prefix}{KEY}/00000000-broken.npz", b"PK\x03\x04 cut short")
    # WHEN the next job adds a ninth readable one
    folder = tmp_path / "job"
    downloaded = download_embeddings(store, MODEL, folder)
    assert len(downloaded) == 9
    expected.update(add_rows(folder / KEY, 100, 2))
    store.calls.clear()
    result = upload_embeddings(store, MODEL, folder, downloaded)
    # THEN the nine readable shards became one, written before any of them was deleted
    merged = f"{prefix}{KEY}/{result['compacted'][KEY]['merged']}"
    assert result["compacted"][KEY]["removed"] == 9
    puts = [k for op, k in store.calls if op == "put"]
    deletes = [k for op, k in store.calls if op == "delete"]
    assert puts[-1] == merged and len(deletes) == 9
    assert store.calls == [("put", k) for k in puts] + [("delete", k) for k in deletes]
    assert sorted(shard_keys(store)) == sorted([merged, f"{prefix}{KEY}/00000000-broken.npz"])
    # AND the merged shard holds every row
    check = tmp_path / "check"
    download_embeddings(store, MODEL, check)
    cache = EmbeddingCache(check / KEY, dim=DIM)
    found = cache.lookup(list(expected))
    assert found.hits == len(expected) == 26
    np.testing.assert_array_equal(found.features, np.stack(list(expected.values())))
    assert [p.name for p, _ in cache.ignored] == ["00000000-broken.npz"]


# ---- two real jobs on a transfer model ---------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes of real photo crops: 5 training and 2 test crops each, and as many more."""
    root = tmp_path_factory.mktemp("photos")
    photo_data.make_dataset(root / "first", train_per_class=5, test_per_class=2, seed=0)
    photo_data.make_dataset(root / "more", train_per_class=4, test_per_class=2, seed=1)
    return root


@pytest.fixture(scope="module")
def live_model(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transfer model converted (float16) as a first published version would be."""
    import convert

    trained = save_transfer_model(tmp_path_factory.mktemp("trained"), photos / "first")
    out = tmp_path_factory.mktemp("live")
    args = ["--model-dir", str(trained), "--data", str(photos / "first"), "--out", str(out)]
    assert convert.main([*args, "--quantization", "float16", "--name", MODEL]) == 0
    return out


def run_warm_job(store: Store, settings: RetrainSettings) -> JobRecord:
    live = open_registry(settings.model_registry_uri, MODEL).read_live()[0]["version"]
    return start_job(
        store,
        settings,
        model=MODEL,
        reason="test",
        mode="warm",
        live_version=live,
        run_in_process=lambda job_id: run_job(store, settings, job_id),
    )


@pytest.mark.slow
def test_the_second_job_computes_only_the_new_images(
    new_bucket: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    photos: Path,
    live_model: Path,
) -> None:
    # GIVEN a data bucket with 28 images of a live transfer model
    data, models = new_bucket("data"), new_bucket("models")
    store = layout.data_store(data)
    registry = open_registry(f"s3://{models}/models", MODEL)
    registry.promote(registry.publish(live_model))
    for name, value in {
        "DATA_BUCKET": data,
        "MODEL_REGISTRY_URI": f"s3://{models}/models",
        "RETRAIN_BACKEND": "lambda",
        "RETRAIN_TRAIN_ARGS": "--quick",
        "RETRAIN_QUANTIZATION": "float16",
        "RETRAIN_QUALITY_TOLERANCE": "1.0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = RetrainSettings.from_env()
    seed_split(store, photos / "first" / "train", layout.TRAIN, MODEL)
    seed_split(store, photos / "first" / "test", layout.TEST, MODEL)
    # WHEN a first job runs, with nothing cached
    first = run_warm_job(store, settings)
    # THEN it computed every image's features and left them in the bucket, as one shard
    assert first.status == "succeeded", first
    assert first.embedding_cache["shards_downloaded"] == 0
    assert (first.embedding_cache["cached"], first.embedding_cache["computed"]) == (0, 28)
    assert len(shard_keys(store)) == 1 == len(first.embedding_cache["shards_uploaded"])
    # AND it recorded how long each stage took
    assert list(first.stages) == ["snapshot", "train", "convert", "evaluate", "publish", "promote"]
    assert all(seconds >= 0 for seconds in first.stages.values())
    # WHEN 5 new images arrive (as ingestion stores them), and the next job runs
    new = sorted((photos / "more" / "train").glob("*/*.jpg"))[:5]
    for path in new:
        data_bytes = path.read_bytes()
        split = split_of(data_bytes)
        store_image(store, split, MODEL, path.parent.name, data_bytes, "jpg", pending=True)
    second = run_warm_job(store, settings)
    # THEN it read the first job's features and computed only those of the new images
    assert second.status == "succeeded", second
    cache = second.embedding_cache
    assert cache["shards_downloaded"] == 1
    assert (cache["images"], cache["cached"], cache["computed"]) == (33, 28, 5)
    assert cache["key"] == first.embedding_cache["key"] and cache["shards_ignored"] == []
    assert len(shard_keys(store)) == 2
    metrics = registry.describe(second.version)["metrics"]
    assert metrics["embedding_cache"]["computed"] == 5 and metrics["timings"]["fit_seconds"] >= 0
    assert registry.read_live()[0]["version"] == second.version == "0003"
    assert json.loads(json.dumps(second.to_dict()))["stages"]["train"] > 0
