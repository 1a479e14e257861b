"""The embedding cache (``imgclf.pipeline.embeddings``) and warm starts that use it.

The cache's own tests write real shards to a folder and read them back; the warm-start test runs
``train.py --warm-start --embedding-cache`` twice on a few real photo crops with the real
EfficientNet-Lite0 backbone, and checks that the second run computes only the new images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import train
from helpers import save_transfer_model
from imgclf.pipeline import photo_data
from imgclf.pipeline.data import load_split
from imgclf.pipeline.embeddings import (
    DIGEST_LENGTH,
    EmbeddingCache,
    cache_key,
    file_digest,
    weights_digest,
)
from imgclf.pipeline.training import pretrained_backbone
from imgclf.pipeline.transfer import FRAMING, activations
from imgclf.preprocess import CENTER_CROP, SQUASH

DIM = 4


def digests(count: int, start: int = 0) -> list[str]:
    return [file_digest(f"image {i}".encode()) for i in range(start, start + count)]


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, DIM)).astype(np.float32)


# ---- the cache on a folder ---------------------------------------------------------------------
def test_a_hit_reads_what_was_written_and_a_miss_is_reported(tmp_path: Path) -> None:
    # GIVEN three images' features written by one run
    names, features = digests(5), rows(3)
    shard = EmbeddingCache(tmp_path, dim=DIM).add(names[:3], features)
    assert shard is not None and shard.parent == tmp_path
    # WHEN the next run (a new process: a new cache object) asks for five
    found = EmbeddingCache(tmp_path, dim=DIM).lookup(names)
    # THEN the three are hits with their exact features, the two others misses
    assert found.found.tolist() == [True, True, True, False, False]
    assert (found.hits, found.misses) == (3, 2)
    np.testing.assert_array_equal(found.features, features)
    assert found.features.dtype == np.float32


def test_rows_already_cached_are_not_written_again(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, dim=DIM)
    names = digests(4)
    cache.add(names[:2], rows(2))
    assert cache.add(names[:2], rows(2, seed=1)) is None  # nothing new: no shard
    second = cache.add(names, rows(4, seed=2))  # two new, two known: only the new are written
    assert second is not None and len(list(tmp_path.glob("*.npz"))) == 2
    with np.load(second) as content:
        assert content["sha256"].tolist() == names[2:]
    # the first value of a digest wins: what was cached is never overwritten
    np.testing.assert_array_equal(EmbeddingCache(tmp_path).lookup(names[:2]).features, rows(2))


def test_the_key_changes_with_the_weights_the_resolution_and_the_framing() -> None:
    weights = [np.ones((3, 3), np.float32), np.zeros(3, np.float32)]
    changed = [weights[0].copy(), weights[1].copy()]
    changed[1][2] = 1e-7
    digest = weights_digest(weights)
    assert len(digest) == DIGEST_LENGTH and digest == weights_digest([w.copy() for w in weights])
    assert weights_digest(changed) != digest
    # the same values in another shape are other weights
    assert weights_digest([weights[0].reshape(9), weights[1]]) != digest
    key = cache_key(digest, 224, CENTER_CROP)
    assert key == cache_key(digest, 224, CENTER_CROP)
    assert key.endswith("-224-crop_0.875_bicubic") and "/" not in key
    others = {
        cache_key(weights_digest(changed), 224, CENTER_CROP),
        cache_key(digest, 240, CENTER_CROP),
        cache_key(digest, 224, SQUASH),
    }
    assert key not in others and len(others) == 3


def test_another_key_is_another_folder(tmp_path: Path) -> None:
    names = digests(2)
    key = cache_key(weights_digest([np.ones(2)]), 224, CENTER_CROP)
    EmbeddingCache(tmp_path / key, dim=DIM).add(names, rows(2))
    other = cache_key(weights_digest([np.zeros(2)]), 224, CENTER_CROP)
    assert EmbeddingCache(tmp_path / other, dim=DIM).lookup(names).hits == 0
    assert EmbeddingCache(tmp_path / key, dim=DIM).lookup(names).hits == 2


def test_a_corrupt_shard_is_ignored_and_its_images_computed_again(tmp_path: Path) -> None:
    # GIVEN a good shard, a truncated copy of one, and a file that is not a zip at all
    names = digests(6)
    cache = EmbeddingCache(tmp_path, dim=DIM)
    good = cache.add(names[:2], rows(2))
    other = cache.add(names[2:4], rows(2, seed=1))
    assert good is not None and other is not None
    other.write_bytes(other.read_bytes()[:100])
    (tmp_path / "zzz-garbage.npz").write_bytes(b"not an npz")
    # WHEN a run reads the cache
    reader = EmbeddingCache(tmp_path, dim=DIM)
    found = reader.lookup(names)
    # THEN the good shard's images are hits, the others misses, and the bad files are reported
    assert found.found.tolist() == [True, True, False, False, False, False]
    assert sorted(p.name for p, _ in reader.ignored) == sorted([other.name, "zzz-garbage.npz"])
    assert all("unreadable" in reason for _, reason in reader.ignored)
    # AND the recomputed features are written as a new shard next to them
    assert reader.add(names, rows(6, seed=2)) is not None
    assert EmbeddingCache(tmp_path, dim=DIM).lookup(names).hits == 6


def test_shards_whose_arrays_do_not_fit_are_ignored(tmp_path: Path) -> None:
    names = digests(3)
    np.savez(tmp_path / "a-wide.npz", sha256=np.array(names), features=np.ones((3, DIM + 1)))
    np.savez(tmp_path / "b-short.npz", sha256=np.array(names), features=np.ones((2, DIM)))
    np.savez(tmp_path / "c-nokey.npz", features=np.ones((3, DIM)))
    np.savez(tmp_path / "d-ints.npz", sha256=np.array(names), features=np.ones((3, DIM), int))
    np.savez(tmp_path / "e-numbers.npz", sha256=np.arange(3), features=np.ones((3, DIM)))
    # a usable shard with one row that is not finite: that row alone is left out
    features = np.ones((3, DIM), np.float32)
    features[1, 0] = np.nan
    np.savez(tmp_path / "f-good.npz", sha256=np.array(names), features=features)
    cache = EmbeddingCache(tmp_path, dim=DIM)
    assert cache.lookup(names).found.tolist() == [True, False, True]
    assert [p.name[0] for p, _ in cache.ignored] == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="features"):
        cache.add(names, np.ones((3, DIM + 1)))


def test_compaction_keeps_every_entry(tmp_path: Path) -> None:
    # GIVEN ten shards of three rows (the last one repeats a digest) and an unreadable one
    cache = EmbeddingCache(tmp_path, dim=DIM)
    expected: dict[str, np.ndarray] = {}
    for i in range(10):
        names = digests(3, start=3 * i)
        features = rows(3, seed=i)
        cache.add(names, features)
        expected.update(zip(names, features, strict=True))
    repeated = np.concatenate([rows(1, seed=99), rows(1, seed=100)])
    cache.add([digests(1)[0], digests(1, start=500)[0]], repeated)
    expected[digests(1, start=500)[0]] = repeated[1]
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    before = sorted(tmp_path.glob("*.npz"))
    assert len(before) == 12
    # WHEN it is compacted
    reader = EmbeddingCache(tmp_path, dim=DIM)
    result = reader.compact(above=8)
    # THEN one merged shard replaces the eleven readable ones; the unreadable one is left alone
    assert result is not None
    merged, removed = result
    assert len(removed) == 11 and merged not in removed
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == sorted([merged.name, "broken.npz"])
    # AND every entry is there, with the value it had
    again = EmbeddingCache(tmp_path, dim=DIM)
    found = again.lookup(list(expected))
    assert found.hits == len(expected) == 31
    np.testing.assert_array_equal(found.features, np.stack(list(expected.values())))
    # AND there is nothing more to do
    assert again.compact(above=8) is None


# ---- warm starts with the cache (real backbone, real photos) -----------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes of real photo crops: 4 training and 2 test crops each."""
    root = tmp_path_factory.mktemp("photos")
    photo_data.make_dataset(root, train_per_class=4, test_per_class=2, seed=0)
    return root


@pytest.fixture(scope="module")
def transfer_model(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transfer model as a search saves it (the frozen Lite0 backbone, a head)."""
    return save_transfer_model(tmp_path_factory.mktemp("transfer"), photos, epochs=1)


def warm_start(data: Path, model: Path, out: Path, cache: Path | None) -> dict:
    argv = ["--data", str(data), "--out", str(out), "--warm-start", str(model / "model.keras")]
    argv += ["--epochs", "1", *(["--embedding-cache", str(cache)] if cache else [])]
    assert train.main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_a_warm_start_with_the_cache_computes_only_the_new_images(
    photos: Path, transfer_model: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    data = tmp_path / "data"
    shutil.copytree(photos, data)
    # GIVEN a first warm start with an empty cache: every image (16 train + 8 test) is computed
    first = warm_start(data, transfer_model, tmp_path / "first", cache)["embedding_cache"]
    assert first["used"] is True
    assert (first["images"], first["cached"], first["computed"]) == (24, 0, 24)
    key_folder = cache / first["key"]
    assert [p.name for p in key_folder.glob("*.npz")] == [first["new_shard"]]
    # WHEN three new images arrive (two for training, one for testing), and one is renamed
    object_test = sorted((photos / "test" / "object").glob("*.jpg"))
    for split, source in (("train", object_test[0]), ("train", object_test[1])):
        shutil.copy(source, data / split / "scene" / f"new-{source.name}")
    photo_data.make_dataset(tmp_path / "more", 4, 2, seed=1)
    extra = sorted((tmp_path / "more" / "test" / "surface").glob("*.jpg"))[0]
    shutil.copy(extra, data / "test" / "surface" / "extra.jpg")
    renamed = sorted((data / "train" / "object").glob("*.jpg"))[0]
    renamed.rename(renamed.with_name("renamed.jpg"))  # same bytes: still a hit
    # THEN the second warm start computes only what it has not seen: the extra test image (the
    # two copies into train/ are crops it has seen, in test/)
    second = warm_start(data, transfer_model, tmp_path / "second", cache)
    recorded = second["embedding_cache"]
    assert (recorded["images"], recorded["cached"], recorded["computed"]) == (27, 26, 1)
    assert recorded["key"] == first["key"] and recorded["shards_read"] == 1
    assert len(list(key_folder.glob("*.npz"))) == 2
    assert set(second["timings"]) >= {"load_seconds", "embedding_seconds", "fit_seconds"}
    # AND what the cache holds is what the backbone computes
    test = load_split(data / "test", 224, 224, second["classes"], framing=FRAMING)
    backbone = pretrained_backbone(keras.models.load_model(transfer_model / "model.keras"))
    assert backbone is not None
    found = EmbeddingCache(key_folder, dim=backbone.output_shape[-1]).lookup(test.digests)
    assert found.hits == 9
    np.testing.assert_allclose(found.features, activations(backbone, test.x), atol=1e-4)
    # AND a corrupt shard costs a recomputation, not the run
    for shard in key_folder.glob("*.npz"):
        shard.write_bytes(b"broken")
    third = warm_start(data, transfer_model, tmp_path / "third", cache)["embedding_cache"]
    assert (third["cached"], third["computed"]) == (0, 27) and len(third["shards_ignored"]) == 2
