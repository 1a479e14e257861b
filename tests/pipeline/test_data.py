"""Data checks: the sample and photo generators and the folder-per-class loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from helpers import encode, scene_image
from imgclf.pipeline import photo_data
from imgclf.pipeline.data import (
    DatasetError,
    class_names,
    find_splits,
    load_split,
    source_name,
    stratified_split,
)
from imgclf.pipeline.sample_data import CLASSES, make_dataset
from imgclf.preprocess import CENTER_CROP, load_image


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_sample_data_has_the_intel_layout_and_classes(sample_data: Path) -> None:
    train, test = find_splits(sample_data)
    assert class_names(train) == list(CLASSES)
    assert class_names(test) == list(CLASSES)
    assert len(list((sample_data / "seg_pred").glob("*.jpg"))) == 3


def test_every_sample_file_decodes_at_150x150(sample_data: Path) -> None:
    # other tests may add folders of their own to the session's sample data
    files = [
        p
        for split in ("seg_train", "seg_test", "seg_pred")
        for p in (sample_data / split).rglob("*.jpg")
    ]
    assert len(files) == 6 * (12 + 4) + 3
    for path in files:
        assert load_image(path.read_bytes(), 150, 150).shape == (150, 150, 3)


def test_sample_data_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_dataset(tmp_path / name, 2, 1, 1, seed=7)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    make_dataset(tmp_path / "c", 2, 1, 1, seed=8)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_sample_classes_are_not_trivially_separable_by_mean_colour(sample_data: Path) -> None:
    # A nearest-mean-colour classifier must not solve the task: learning has to look at structure.
    train = load_split(find_splits(sample_data)[0], 32, 32)
    means = train.x.reshape(len(train.x), -1, 3).mean(axis=1)
    centroids = [means[train.y == k].mean(axis=0) for k in range(len(train.classes))]
    dist = ((means[:, None, :] - centroids) ** 2).sum(axis=-1)
    assert (dist.argmin(axis=1) == train.y).mean() < 0.9


def test_loader_skips_and_reports_files_that_do_not_decode(tmp_path: Path) -> None:
    for label in ("forest", "sea"):
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True)
        (folder / "ok.jpg").write_bytes(encode(scene_image(label)))
    (tmp_path / "train" / "sea" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train" / "sea" / "notes.txt").write_text("hello")
    data = load_split(tmp_path / "train", 64, 64)
    assert data.counts() == {"forest": 1, "sea": 1}
    assert sorted(p.name for p, _ in data.skipped) == ["broken.jpg", "notes.txt"]


def test_loader_refuses_an_empty_class(tmp_path: Path) -> None:
    (tmp_path / "forest").mkdir()
    (tmp_path / "forest" / "a.jpg").write_bytes(encode(scene_image("forest")))
    (tmp_path / "sea").mkdir()
    (tmp_path / "sea" / "broken.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="class 'sea' .* no usable image"):
        load_split(tmp_path, 64, 64)


def test_loader_refuses_a_single_class(tmp_path: Path) -> None:
    (tmp_path / "forest").mkdir()
    (tmp_path / "forest" / "a.jpg").write_bytes(encode(scene_image("forest")))
    with pytest.raises(DatasetError, match="needs 2"):
        load_split(tmp_path, 64, 64)


def test_test_split_with_an_unknown_class_is_refused(sample_data: Path) -> None:
    _, test = find_splits(sample_data)
    with pytest.raises(DatasetError, match="does not know"):
        load_split(test, 32, 32, classes=["forest", "sea"])


def test_kaggle_nested_layout_is_found(tmp_path: Path) -> None:
    for split in ("seg_train", "seg_test"):
        (tmp_path / split / split / "forest").mkdir(parents=True)
    train, test = find_splits(tmp_path)
    assert train == tmp_path / "seg_train" / "seg_train"
    assert test == tmp_path / "seg_test" / "seg_test"


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "seg_train").mkdir()
    with pytest.raises(DatasetError, match="test split"):
        find_splits(tmp_path)


def test_stratified_split_holds_out_each_class(sample_data: Path) -> None:
    data = load_split(find_splits(sample_data)[0], 32, 32)
    train, val = stratified_split(data, 0.25, seed=0)
    assert all(n == 3 for n in val.counts().values())
    assert all(n == 9 for n in train.counts().values())
    assert not set(map(str, train.files)) & set(map(str, val.files))


# ---- the real-photo dataset (imgclf.pipeline.photo_data) ---------------------------------------
@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    photo_data.make_dataset(root, train_per_class=12, test_per_class=4, seed=0)
    return root


def test_every_photo_class_has_crops_in_both_splits(photos: Path) -> None:
    train, test = find_splits(photos)
    assert class_names(train) == class_names(test) == list(photo_data.CLASSES)
    for split, per_class in ((train, 12), (test, 4)):
        for name in photo_data.CLASSES:
            assert len(list((split / name).glob("*.jpg"))) == per_class, (split, name)


def test_no_source_photo_feeds_both_splits(photos: Path) -> None:
    train, test = find_splits(photos)
    train_sources = {source_name(p) for p in train.rglob("*.jpg")}
    test_sources = {source_name(p) for p in test.rglob("*.jpg")}
    assert not train_sources & test_sources
    assert train_sources | test_sources == {s.name for s in photo_data.SOURCES}
    for label in photo_data.CLASSES:  # at least five photos per class, two of them for testing
        photos_of_class = {s.name for s in photo_data.SOURCES if s.label == label}
        assert len(photos_of_class) >= 5 and len(photos_of_class & test_sources) == 2


def test_every_photo_crop_decodes(photos: Path) -> None:
    for path in sorted(photos.rglob("*.jpg")):
        assert load_image(path.read_bytes(), 224, 224, framing=CENTER_CROP).shape == (224, 224, 3)


def test_photo_data_is_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        photo_data.make_dataset(tmp_path / name, 4, 2, seed=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_photo_data_replaces_only_a_dataset_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "train" / "mine").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a photo dataset"):
        photo_data.make_dataset(tmp_path, 4, 2, seed=0)
    assert (tmp_path / "train" / "mine").is_dir()


def test_validation_by_source_holds_out_whole_photos(photos: Path) -> None:
    data = load_split(find_splits(photos)[0], 32, 32)
    train, val = stratified_split(data, 0.2, seed=0, by_source=True)
    assert not {source_name(p) for p in train.files} & {source_name(p) for p in val.files}
    # one of the three or four training photos of each class
    assert {source_name(p) for p in val.files} and all(n > 0 for n in val.counts().values())
