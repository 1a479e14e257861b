"""Draws a small, seeded 4-class dataset of crops from real photos shipped with installed packages.

    ROOT/train/<class>/<source>-<n>.jpg   ROOT/test/<class>/<source>-<n>.jpg   ROOT/sources.json

(``imgclf.pipeline.data.source_name`` reads the source back from a file name, and
``train.py --val-by-source`` holds out whole photos for validation with it.)

The synthetic sample data (``sample_data``) is fast and easy; this is the real-pixel counterpart:
every image is a random crop of one of 22 photographs bundled with scikit-image, scikit-learn and
matplotlib (no network), labelled by what the photo shows:

- ``object``: one thing close up (a cat, an espresso, a flower, a motorcycle, coins, a clock);
- ``scene``: people and places (an astronaut, a cameraman, Grace Hopper, a palace, a rocket pad);
- ``scientific``: imaged through an instrument (cells, stained tissue, a retina, microaneurysms,
  the Hubble deep field);
- ``surface``: a material or writing that fills the frame (brick, grass, gravel, the moon's
  surface, a printed page, handwriting).

Each class has at least five source photos. Test photos are drawn (seeded) per class and never
feed the train split, so the test score measures generalisation to a photo the model never saw,
not memory of one it did. Several sources are greyscale (all of ``surface``), so half of all crops
are turned to grey as well: otherwise "no colour" alone would say ``surface``. The same seed gives
byte-identical files, in a few seconds.

Usage: python -m imgclf.pipeline.photo_data --out data/photos [--train-per-class 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

# Crops are written at this side (square), above the largest model input (EfficientNet-Lite2 260
# after its 0.875 centre crop needs ~297; Lite0's 224 needs 256).
OUT_SIZE = 256
# A crop whose pixels vary less than this (the black around a retina, the empty slide around a
# cell) shows nothing of its class; another is drawn.
MIN_STD = 6.0
GREY_SHARE = 0.5


@dataclass(frozen=True)
class Source:
    """One photograph: its class, where it comes from, and how to load it as RGB uint8 arrays."""

    name: str
    label: str
    origin: str
    load: Callable[[], list[np.ndarray]]


def _skimage(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import skimage.data

        return [getattr(skimage.data, name)()]

    return load


def _stereo_motorcycle() -> list[np.ndarray]:
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    return [left, right]  # two views of one scene: one source, so both land in the same split


def _sklearn(filename: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        from sklearn.datasets import load_sample_images

        images = load_sample_images()
        index = [Path(f).name for f in images.filenames].index(filename)
        return [images.images[index]]

    return load


def _matplotlib(filename: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(filename) as file:
            return [np.asarray(Image.open(file).convert("RGB"))]

    return load


SK, SKL, MPL = (
    "scikit-image skimage.data",
    "scikit-learn load_sample_images",
    "matplotlib sample_data",
)
SOURCES: tuple[Source, ...] = (
    Source("chelsea", "object", f"{SK}.chelsea", _skimage("chelsea")),
    Source("coffee", "object", f"{SK}.coffee", _skimage("coffee")),
    Source("flower", "object", f"{SKL} flower.jpg", _sklearn("flower.jpg")),
    Source("motorcycle", "object", f"{SK}.stereo_motorcycle", _stereo_motorcycle),
    Source("coins", "object", f"{SK}.coins", _skimage("coins")),
    Source("clock", "object", f"{SK}.clock", _skimage("clock")),
    Source("astronaut", "scene", f"{SK}.astronaut", _skimage("astronaut")),
    Source("camera", "scene", f"{SK}.camera", _skimage("camera")),
    Source("grace_hopper", "scene", f"{MPL} grace_hopper.jpg", _matplotlib("grace_hopper.jpg")),
    Source("china", "scene", f"{SKL} china.jpg", _sklearn("china.jpg")),
    Source("rocket", "scene", f"{SK}.rocket", _skimage("rocket")),
    Source("cell", "scientific", f"{SK}.cell", _skimage("cell")),
    Source("ihc", "scientific", f"{SK}.immunohistochemistry", _skimage("immunohistochemistry")),
    Source("retina", "scientific", f"{SK}.retina", _skimage("retina")),
    Source("microaneurysms", "scientific", f"{SK}.microaneurysms", _skimage("microaneurysms")),
    Source("hubble", "scientific", f"{SK}.hubble_deep_field", _skimage("hubble_deep_field")),
    Source("brick", "surface", f"{SK}.brick", _skimage("brick")),
    Source("grass", "surface", f"{SK}.grass", _skimage("grass")),
    Source("gravel", "surface", f"{SK}.gravel", _skimage("gravel")),
    Source("moon", "surface", f"{SK}.moon", _skimage("moon")),
    Source("page", "surface", f"{SK}.page", _skimage("page")),
    Source("text", "surface", f"{SK}.text", _skimage("text")),
)
CLASSES = tuple(sorted({s.label for s in SOURCES}))


def _rgb(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    return image.convert("RGB") if image.mode != "RGB" else image


def split_sources(test_per_class: int, seed: int) -> dict[str, str]:
    """Chooses the test photos: ``test_per_class`` of each class, seeded; the rest train.

    Returns:
        Source name -> ``"train"`` or ``"test"``.
    """
    rng = np.random.default_rng(seed)
    split: dict[str, str] = {}
    for label in CLASSES:
        names = [s.name for s in SOURCES if s.label == label]
        test = set(rng.choice(names, size=test_per_class, replace=False).tolist())
        split.update({n: "test" if n in test else "train" for n in names})
    return split


def random_crop(views: list[Image.Image], rng: np.random.Generator) -> Image.Image:
    """One crop of a photo: a random view, a square of 35-100% of its shorter side, a random
    place, mirrored half the time, slightly relit, grey for ``GREY_SHARE`` of the crops, at
    ``OUT_SIZE``. Crops that show next to nothing (``MIN_STD``) are drawn again.
    """
    for _ in range(50):
        view = views[int(rng.integers(len(views)))]
        w, h = view.size
        side = float(rng.uniform(0.35, 1.0)) * min(w, h)
        left, top = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (left, top, left + side, top + side)
        crop = view.resize((OUT_SIZE, OUT_SIZE), Image.Resampling.LANCZOS, box=box)
        if float(np.asarray(crop.convert("L")).std()) >= MIN_STD:
            break
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.8, 1.2)))
    crop = ImageEnhance.Contrast(crop).enhance(float(rng.uniform(0.8, 1.2)))
    if rng.random() < GREY_SHARE:
        crop = crop.convert("L").convert("RGB")
    return crop


def make_dataset(
    out: Path, train_per_class: int, test_per_class: int, seed: int, test_sources: int = 2
) -> dict[str, int]:
    """Writes the dataset under ``out`` and returns the number of files per split.

    Args:
        out: the dataset root (created). A dataset written here before is replaced whole, so no
            crop of an earlier split's test photo is left in ``train/``.
        train_per_class: crops per class in ``train/``, shared evenly by the class's train photos.
        test_per_class: crops per class in ``test/``, shared evenly by its test photos.
        seed: the seed; the same seed and sizes give byte-identical files.
        test_sources: photos per class held out for the test split.

    Returns:
        ``{"train": n, "test": n}``.

    Raises:
        FileExistsError: ``out`` holds a ``train/`` or ``test/`` folder not written here.
    """
    for part in ("train", "test"):
        if (out / part).exists():
            if not (out / "sources.json").is_file():
                raise FileExistsError(
                    f"{out / part} exists and is not a photo dataset; not touched"
                )
            shutil.rmtree(out / part)
    split = split_sources(test_sources, seed)
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "test": 0}
    record: list[dict[str, str]] = []
    for label in CLASSES:
        for part, per_class in (("train", train_per_class), ("test", test_per_class)):
            sources = [s for s in SOURCES if s.label == label and split[s.name] == part]
            folder = out / part / label
            folder.mkdir(parents=True, exist_ok=True)
            for k, source in enumerate(sources):
                views = [_rgb(v) for v in source.load()]
                # The first photos take the remainder, so the class gets exactly per_class crops.
                share = per_class // len(sources) + (k < per_class % len(sources))
                for i in range(share):
                    crop = random_crop(views, rng)
                    quality = int(rng.integers(80, 96))
                    crop.save(folder / f"{source.name}-{i:04d}.jpg", quality=quality)
                    counts[part] += 1
                record.append(
                    {"source": source.name, "class": label, "split": part, "origin": source.origin}
                )
    (out / "sources.json").write_text(json.dumps(record, indent=2) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.pipeline.photo_data``: writes the dataset, returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.pipeline.photo_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/photos"), help="dataset root")
    parser.add_argument("--train-per-class", type=int, default=300, help="train crops per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="test crops per class")
    parser.add_argument("--test-sources", type=int, default=2, help="test photos per class")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    counts = make_dataset(
        args.out, args.train_per_class, args.test_per_class, args.seed, args.test_sources
    )
    print(f"wrote {counts} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
