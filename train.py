"""Searches, trains and evaluates the scene classifier: model.keras, labels.json, metrics.json.

Examples:
    python train.py --data data/sample --out runs/train            # default budget, minutes
    python train.py --data data/sample --out runs/quick --quick    # smoke run, seconds
    python train.py --data data/intel --out runs/intel --backbone mobilenet_v2 --weights imagenet
    python train.py --data snapshot/ --out runs/retrain --warm-start model/model.keras

The data root holds seg_train/ and seg_test/ (the Intel layout) or train/ and test/, each with one
folder per class. An interrupted search resumes from OUT/tuner/ unless --overwrite is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgclf.data import DatasetError
from imgclf.model import BACKBONES
from imgclf.training import TUNERS, TrainConfig, run


def parse_args(argv: list[str] | None) -> TrainConfig:
    defaults = TrainConfig(data=Path(), out=Path())
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="dataset root (seg_train/, seg_test/)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the artifacts")
    p.add_argument("--image-size", type=int, default=defaults.image_size, help="square input side")
    p.add_argument("--tuner", choices=TUNERS, default=defaults.tuner, help="search algorithm")
    p.add_argument(
        "--max-trials",
        type=int,
        default=defaults.max_trials,
        help="trials for random/bayesian search",
    )
    p.add_argument(
        "--search-epochs",
        type=int,
        default=defaults.search_epochs,
        help="epochs per trial (hyperband: the largest bracket's epochs)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help="most epochs of the final fit (early stopping may end it sooner)",
    )
    p.add_argument(
        "--patience", type=int, default=defaults.patience, help="early-stopping patience"
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="batch size")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="share of each class held out for the search's validation",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument(
        "--overwrite", action="store_true", help="discard a previous search in OUT/tuner"
    )
    p.add_argument("--backbone", choices=BACKBONES, help="an ImageNet backbone instead of the CNN")
    p.add_argument(
        "--weights",
        choices=("imagenet", "none"),
        default="none",
        help="backbone weights (imagenet needs internet or the cached file)",
    )
    p.add_argument("--warm-start", type=Path, help="fine-tune this .keras model; no search")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smallest budget: 2 random trials of 1 epoch, 1 final epoch",
    )
    a = p.parse_args(argv)
    config = TrainConfig(
        data=a.data,
        out=a.out,
        image_size=a.image_size,
        tuner=a.tuner,
        max_trials=a.max_trials,
        search_epochs=a.search_epochs,
        epochs=a.epochs,
        patience=a.patience,
        batch_size=a.batch_size,
        val_fraction=a.val_fraction,
        seed=a.seed,
        overwrite=a.overwrite,
        backbone=a.backbone,
        weights=None if a.weights == "none" else a.weights,
        warm_start=a.warm_start,
    )
    return config.quick() if a.quick else config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        run(config)
    except (DatasetError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
