"""Folder-per-class image datasets (the Intel Image Classification layout and any other).

Every file goes through ``imgclf.preprocess.load_image``, the function serving uses, with the
model's framing, so training sees exactly the pixels the deployed model will see. Files that do
not decode are skipped and reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imgclf.errors import InvalidImage
from imgclf.preprocess import IMAGE_SUFFIXES, SQUASH, Framing, load_image

# Split folder names we recognise, in order of preference: Intel's names first.
TRAIN_NAMES = ("seg_train", "train")
TEST_NAMES = ("seg_test", "test")


class DatasetError(ValueError):
    """The dataset cannot be used as it is (the message says why and what to do)."""


@dataclass
class Dataset:
    """Decoded images of one split with integer labels indexing ``classes``."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # The sha256 (hex) of each file's bytes, aligned with ``files``: the embedding cache's key.
    digests: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Returns the number of images per class."""
        return {c: int((self.y == i).sum()) for i, c in enumerate(self.classes)}

    def subset(self, index: np.ndarray) -> Dataset:
        """Returns the images at ``index`` (same classes, no skipped list)."""
        return Dataset(
            self.x[index],
            self.y[index],
            self.classes,
            [self.files[i] for i in index],
            digests=[self.digests[i] for i in index] if self.digests else [],
        )


def _split_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        candidate = root / name
        if candidate.is_dir():
            # The Kaggle archive nests the split folder in itself: seg_train/seg_train/<class>.
            nested = candidate / name
            return nested if nested.is_dir() else candidate
    return None


def find_splits(root: Path) -> tuple[Path, Path]:
    """Finds the train and test folders of a dataset root.

    Args:
        root: a folder holding ``seg_train/`` and ``seg_test/`` (or ``train/`` and ``test/``).

    Returns:
        ``(train_dir, test_dir)``, each holding one folder per class.

    Raises:
        DatasetError: either split is missing.
    """
    train, test = _split_dir(root, TRAIN_NAMES), _split_dir(root, TEST_NAMES)
    if train is None or test is None:
        raise DatasetError(
            f"{root} must hold a train split ({' or '.join(TRAIN_NAMES)}) and a test split "
            f"({' or '.join(TEST_NAMES)}), each with one folder per class"
        )
    return train, test


def class_names(split_dir: Path) -> list[str]:
    """Returns the sorted class folder names of a split."""
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir} is not a folder")
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_split(
    split_dir: Path,
    height: int,
    width: int,
    classes: list[str] | None = None,
    framing: Framing = SQUASH,
) -> Dataset:
    """Decodes every image of a folder-per-class split.

    Args:
        split_dir: a folder with one subfolder of images per class.
        height: the model's input height.
        width: the model's input width.
        classes: the class list to use (for a test split, the training classes), where a class
            may have no images; default: the split's own folders, each of which must have one.
            A folder outside this list is an error.
        framing: how images become the model's square input (the model's, as serving frames).

    Returns:
        The decoded dataset, with the files that did not decode in ``skipped`` and the sha256 of
        each file that did in ``digests``.

    Raises:
        DatasetError: fewer than two classes, a class without a single usable image, or a class
            folder that the given ``classes`` do not know.
    """
    found = class_names(split_dir)
    require_every_class = classes is None
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(f"{split_dir} has class folders the model does not know: {unknown}")
    if len(classes) < 2:
        raise DatasetError(f"{split_dir} has {len(classes)} class folder(s); a classifier needs 2+")
    images: list[np.ndarray] = []
    labels: list[int] = []
    files: list[Path] = []
    digests: list[str] = []
    skipped: list[tuple[Path, str]] = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        paths = sorted(folder.iterdir()) if folder.is_dir() else []
        before = len(images)
        for path in paths:
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((path, f"not an image file suffix ({path.suffix or 'none'})"))
                continue
            data = path.read_bytes()
            try:
                images.append(load_image(data, height, width, framing=framing))
            except InvalidImage as exc:
                skipped.append((path, exc.message))
                continue
            labels.append(index)
            files.append(path)
            digests.append(hashlib.sha256(data).hexdigest())
        if require_every_class and len(images) == before:
            raise DatasetError(f"class '{name}' in {split_dir} has no usable image")
    x = np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)
    return Dataset(x, np.asarray(labels, dtype=np.int64), list(classes), files, skipped, digests)


def source_name(path: Path) -> str:
    """The source a file was cut from, by name: ``chelsea-0007.jpg`` -> ``chelsea``.

    Datasets of crops (``imgclf.pipeline.photo_data``) name each file ``<source>-<n>``; crops of
    one photo look alike, so a validation split that is to mean anything must keep them together.
    A name without ``-`` is a source of its own.
    """
    return path.stem.rsplit("-", 1)[0]


def stratified_split(
    data: Dataset, fraction: float, seed: int, by_source: bool = False
) -> tuple[Dataset, Dataset]:
    """Splits off ``fraction`` of each class (at least one image) as a validation set.

    Args:
        data: the split to divide.
        fraction: the share of each class to hold out.
        seed: the seed of the draw.
        by_source: hold out whole sources (``source_name``) rather than images: ``fraction`` of
            each class's sources, at least one when it has two or more. A validation image then
            comes from a photo the training images do not, as a test image does.

    Returns:
        ``(train, validation)``.
    """
    rng = np.random.default_rng(seed)
    val_index: list[int] = []
    for label in range(len(data.classes)):
        members = np.flatnonzero(data.y == label)
        if by_source:
            sources = np.array([source_name(data.files[i]) for i in members])
            names = np.unique(sources)
            rng.shuffle(names)
            take = max(1, round(len(names) * fraction)) if len(names) > 1 else 0
            val_index.extend(members[np.isin(sources, names[:take])].tolist())
            continue
        rng.shuffle(members)
        take = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        val_index.extend(members[:take].tolist())
    val = np.array(sorted(val_index), dtype=np.int64)
    train = np.setdiff1d(np.arange(len(data.y)), val)
    return data.subset(train), data.subset(val)
