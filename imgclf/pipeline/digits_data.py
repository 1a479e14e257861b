"""Writes scikit-learn's scanned handwritten digits as an image dataset: data unlike photos.

    ROOT/train/<digit>/<n>.png   ROOT/test/<digit>/<n>.png

1,797 scans of 8x8 pixels (16 grey levels), upscaled to 64x64 without smoothing, split 75/25
stratified (1,347 train, 450 test). ImageNet features fit these poorly, which is why training
lets its search choose between a pretrained backbone and the from-scratch network: this is the
dataset that checks that choice (README "Training pipeline"). Ships with scikit-learn; no network.

Usage: python -m imgclf.pipeline.digits_data --out data/digits [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SCALE = 8  # 8x8 -> 64x64


def make_dataset(out: Path, seed: int = 0, limit: int | None = None) -> dict[str, int]:
    """Writes the dataset under ``out`` and returns the number of files per split.

    Args:
        out: the dataset root (created; files of the same names are overwritten).
        seed: the seed of the stratified split.
        limit: keep only the first ``limit`` scans (tests); all 1,797 by default.

    Returns:
        ``{"train": n, "test": n}``.
    """
    digits = load_digits()
    images, labels = digits.images[:limit], digits.target[:limit]
    index = np.arange(len(labels))
    train, test = train_test_split(index, test_size=0.25, stratify=labels, random_state=seed)
    counts = {"train": 0, "test": 0}
    for part, members in (("train", train), ("test", test)):
        for i in sorted(members):
            folder = out / part / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (images[i] * (255 / 16)).round().astype(np.uint8)
            scan = Image.fromarray(pixels, mode="L").resize(
                (8 * SCALE, 8 * SCALE), Image.Resampling.NEAREST
            )
            scan.save(folder / f"{i:04d}.png")
            counts[part] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m imgclf.pipeline.digits_data``: writes the dataset, returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.pipeline.digits_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/digits"), help="dataset root")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    args = parser.parse_args(argv)
    print(f"wrote {make_dataset(args.out, args.seed)} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
