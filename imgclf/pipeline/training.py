"""The training stage: Keras Tuner search, final fit on train+validation, evaluation, artifacts.

``run(config)`` is what ``train.py`` calls and what a retraining job calls; it writes
``model.keras``, ``labels.json``, ``metrics.json`` and ``plots/*.png`` into ``config.out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from imgclf import artifact
from imgclf.pipeline import ExitCode
from imgclf.pipeline.data import Dataset, DatasetError, find_splits, load_split, stratified_split
from imgclf.pipeline.evaluation import classification_metrics, plot_confusion_matrix, plot_history
from imgclf.pipeline.model import (
    BACKBONES,
    Hyperparameters,
    SceneHyperModel,
    make_dataset,
    make_model,
)

TUNERS = ("hyperband", "random", "bayesian")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (``train.py --help`` documents each value)."""

    data: Path
    out: Path
    image_size: int = 150
    tuner: str = "hyperband"
    max_trials: int = 12
    search_epochs: int = 6
    epochs: int = 20
    patience: int = 3
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    overwrite: bool = False
    backbone: str | None = None
    weights: str | None = None
    warm_start: Path | None = None

    def quick(self) -> TrainConfig:
        """The smallest budget that still runs every stage (tests, CI, smoke runs)."""
        return replace(self, tuner="random", max_trials=2, search_epochs=1, epochs=1)


def _versions() -> dict[str, str]:
    names = ("tensorflow-cpu", "tensorflow", "keras", "keras-tuner", "numpy", "pillow")
    found: dict[str, str] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing optional distribution is just not recorded
            continue
    return found


def _make_tuner(config: TrainConfig, hypermodel: SceneHyperModel) -> kt.Tuner:
    common: dict[str, Any] = {
        "objective": "val_accuracy",
        "seed": config.seed,
        "directory": str(config.out / "tuner"),
        "project_name": config.tuner,
        "overwrite": config.overwrite,
    }
    if config.tuner == "hyperband":
        return kt.Hyperband(hypermodel, max_epochs=max(config.search_epochs, 2), factor=3, **common)
    if config.tuner == "random":
        return kt.RandomSearch(hypermodel, max_trials=config.max_trials, **common)
    if config.tuner == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=config.max_trials, **common)
    raise ValueError(f"unknown tuner {config.tuner!r}; choose one of {TUNERS}")


def search(config: TrainConfig, train: Dataset, val: Dataset) -> tuple[Hyperparameters, dict]:
    """Runs (or resumes) the hyperparameter search and returns the best point with a summary."""
    hypermodel = SceneHyperModel(
        len(train.classes),
        config.image_size,
        config.image_size,
        config.batch_size,
        config.seed,
        config.backbone,
        config.weights,
    )
    tuner = _make_tuner(config, hypermodel)
    tuner.search_space_summary()
    epochs = config.search_epochs
    tuner.search(train.x, train.y, validation_data=(val.x, val.y), epochs=epochs, verbose=2)
    done = [t for t in tuner.oracle.get_best_trials(num_trials=10_000) if t.score is not None]
    if not done:
        raise RuntimeError(
            f"no trial of the search completed; see the errors above ({tuner.project_dir})"
        )
    best = done[0].hyperparameters
    trials = [
        {"trial_id": t.trial_id, "score": t.score, "hyperparameters": t.hyperparameters.values}
        for t in done
    ]
    hp = Hyperparameters(**{k: best.values[k] for k in Hyperparameters().as_dict()})
    summary = {"type": config.tuner, "trials": trials, "best_val_accuracy": trials[0]["score"]}
    return hp, summary


def save_for_inference(model: keras.Model, path: Path) -> None:
    """Saves the model's architecture and weights without the optimizer's state.

    Adam keeps two slots per weight, which would triple the file (it is committed and published
    with every version); a warm start compiles a fresh optimizer anyway.
    """
    copy = model.__class__.from_config(model.get_config())  # the architecture, not compiled
    copy.set_weights(model.get_weights())
    copy.save(path)


def _warm_model(config: TrainConfig, classes: list[str]) -> keras.Model:
    """Loads the model to fine-tune, with a new output layer if the class list changed."""
    assert config.warm_start is not None
    model = keras.models.load_model(config.warm_start)
    labels_path = config.warm_start.with_name(artifact.LABELS)
    old = json.loads(labels_path.read_text()) if labels_path.exists() else None
    if old != classes:
        features = model.layers[-2].output
        outputs = keras.layers.Dense(len(classes), activation="softmax", name="probabilities_new")(
            features
        )
        model = keras.Model(model.inputs, outputs, name=model.name)
    # A small learning rate keeps what the live model knew while it adapts to the new data.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def run(config: TrainConfig) -> dict[str, Any]:
    """Trains, evaluates and writes the artifacts of one run.

    Args:
        config: the data, budget and output folder.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        DatasetError: the dataset cannot be used (the message says why).
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    if config.warm_start is not None:
        size = keras.models.load_model(config.warm_start).input_shape[1]
        config = replace(config, image_size=int(size))
    train_dir, test_dir = find_splits(config.data)
    size = config.image_size
    full = load_split(train_dir, size, size)
    test = load_split(test_dir, size, size, classes=full.classes)
    if len(test.y) == 0:
        raise DatasetError(f"{test_dir} has no usable test image")
    train, val = stratified_split(full, config.val_fraction, config.seed)
    print(f"data: train {train.counts()} validation {val.counts()} test {test.counts()}")
    for path, reason in full.skipped + test.skipped:
        print(f"skipped {path}: {reason}")
    config.out.mkdir(parents=True, exist_ok=True)

    if config.warm_start is not None:
        model, hp, tuner_summary = _warm_model(config, full.classes), None, None
    else:
        hp, tuner_summary = search(config, train, val)
        print(f"best hyperparameters: {hp.as_dict()}")
        model = make_model(len(full.classes), size, size, hp, config.backbone, config.weights)
    # Final fit on train + validation: nothing is held out any more, so early stopping watches
    # the training loss and keeps the best weights.
    augmentation = hp.augmentation if hp else 0.1
    history = model.fit(
        make_dataset(full.x, full.y, config.batch_size, augmentation, config.seed),
        epochs=config.epochs,
        shuffle=False,  # make_dataset shuffles
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="loss", patience=config.patience, restore_best_weights=True
            )
        ],
        verbose=2,
    ).history

    probs = model.predict(test.x.astype(np.float32), batch_size=64, verbose=0)
    metrics = classification_metrics(test.y, probs.argmax(axis=1), full.classes)
    metrics.update(
        classes=full.classes,
        image_size=size,
        hyperparameters=hp.as_dict() if hp else None,
        warm_start=str(config.warm_start) if config.warm_start else None,
        tuner=tuner_summary,
        final_fit={"epochs": len(history["loss"]), "history": history},
        data={
            "train": train.counts(),
            "validation": val.counts(),
            "test": test.counts(),
            "skipped": [{"file": str(p), "reason": r} for p, r in full.skipped + test.skipped],
        },
        seed=config.seed,
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        versions=_versions(),
        duration_seconds=round(time.monotonic() - started, 1),
    )
    save_for_inference(model, config.out / artifact.KERAS)
    (config.out / artifact.LABELS).write_text(json.dumps(full.classes, indent=2) + "\n")
    (config.out / artifact.METRICS).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    plots = config.out / "plots"
    plots.mkdir(exist_ok=True)
    plot_history(history, plots / "training_curves.png")
    plot_confusion_matrix(metrics["confusion_matrix"], full.classes, plots / "confusion_matrix.png")
    print(f"test accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}")
    return metrics


CLI_HELP = """Searches, trains and evaluates a classifier: model.keras, labels.json, metrics.json.

Examples:
    python train.py --data data/sample --out runs/train            # default budget, minutes
    python train.py --data data/sample --out runs/quick --quick    # smoke run, seconds
    python train.py --data data/intel --out runs/intel --backbone mobilenet_v2 --weights imagenet
    python train.py --data snapshot/ --out runs/retrain --warm-start model/model.keras

The data root holds seg_train/ and seg_test/ (the Intel layout) or train/ and test/, each with one
folder per class. An interrupted search resumes from OUT/tuner/ unless --overwrite is given.
"""


def parse_args(argv: list[str] | None) -> TrainConfig:
    """The command line as a ``TrainConfig``."""
    defaults = TrainConfig(data=Path(), out=Path())
    p = argparse.ArgumentParser(
        prog="train.py", description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
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
    """``train.py`` / ``python -m imgclf.pipeline.training``: returns the exit code."""
    config = parse_args(argv)
    try:
        run(config)
    except (DatasetError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
