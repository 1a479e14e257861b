"""The dataset each bundled model was trained on: ``config.data`` of its ``metrics.json``.

``train.py`` records the dataset under ``config.data`` in ``metrics.json``, relative to the project
root (``data/sample``, ``data/photos``). The benchmarks calibrate, gate and score each model on its
own dataset, never on one passed for all models: a model trained on real photos knows other classes
than one trained on the synthetic sample data. A model whose ``metrics.json`` records no dataset
(the pretrained ``imagenet``: no labelled data) has none.
"""

from __future__ import annotations

import json
from pathlib import Path

from imgclf import artifact
from imgclf.pipeline.data import DatasetError, find_splits
from imgclf.settings import PROJECT_ROOT

# The datasets the project builds, by their folder under the project root, and the make target
# that builds each (the Makefile's SAMPLE and PHOTOS).
SAMPLE = "data/sample"
PHOTOS = "data/photos"
MAKE_TARGETS = {SAMPLE: "sample-data", PHOTOS: "photo-data"}


class DatasetMissing(ValueError):
    """A dataset a benchmark needs is not there; the message says which make target builds it."""


def recorded_dataset(model_dir: Path) -> str | None:
    """``config.data`` of a model folder's ``metrics.json`` as written (None: none recorded)."""
    path = model_dir / artifact.METRICS
    if not path.is_file():
        return None
    data = (json.loads(path.read_text()).get("config") or {}).get("data")
    return str(data) if data else None


def dataset_folder(recorded: str, why: str, root: Path = PROJECT_ROOT) -> Path:
    """A dataset folder (``root / recorded``), checked to hold a train and a test split.

    Args:
        recorded: the folder as recorded, relative to ``root`` (``data/photos``).
        why: who needs it, for the error (``model/content was trained on it``).
        root: what ``recorded`` is relative to (the project root).

    Returns:
        The folder.

    Raises:
        DatasetMissing: the folder or one of its splits is missing; the message names the make
            target that builds it.
    """
    folder = root / recorded
    try:
        find_splits(folder)
    except DatasetError as exc:
        problem = str(exc) if folder.is_dir() else f"{folder} is missing"
        target = MAKE_TARGETS.get(Path(recorded).as_posix())
        how = (
            f"run `make {target}`"
            if target
            else "put the dataset there (`make sample-data` draws data/sample, "
            "`make photo-data` crops data/photos)"
        )
        raise DatasetMissing(f"{recorded} ({why}): {problem}; {how}") from None
    return folder


def model_dataset(model_dir: Path, root: Path = PROJECT_ROOT) -> Path | None:
    """The dataset folder a model was trained on (``config.data`` of its ``metrics.json``).

    Args:
        model_dir: the model folder (``model/<name>/``).
        root: what ``config.data`` is relative to (the project root).

    Returns:
        ``root / config.data``, or None when ``metrics.json`` records no dataset (pretrained).

    Raises:
        DatasetMissing: the recorded folder or one of its splits is missing.
    """
    recorded = recorded_dataset(model_dir)
    if recorded is None:
        return None
    why = f"model/{model_dir.name} was trained on it: config.data of its metrics.json"
    return dataset_folder(recorded, why, root)
