"""The ways of training a classifier that a run chooses between (``imgclf.pipeline.selection``).

- ``FrozenHead``: a Keras Tuner search over heads on a pretrained backbone's features, which every
  image goes through once (``imgclf.pipeline.transfer``);
- ``FineTune``: the best head so far, then the backbone's top blocks trained with it at a tenth of
  its learning rate, on stored activations;
- ``Scratch``: the from-scratch CNN search (all of ``train.py --backbone none``).

Each keeps its state between calls to ``advance(deadline)``, so the selection can hand out time in
rounds; ``final_fit`` refits the chosen one on train + validation and returns the model to save.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from imgclf.pipeline.data import Dataset
from imgclf.pipeline.model import (
    HeadHyperModel,
    HeadHyperparameters,
    Hyperparameters,
    SceneHyperModel,
    attach_head,
    make_dataset,
    make_feature_dataset,
    make_head,
    make_model,
)
from imgclf.pipeline.transfer import FRAMING, Backbone, activations, fine_tune_model
from imgclf.preprocess import SQUASH, Framing

TUNERS = ("hyperband", "random", "bayesian")
# Epochs without a better validation accuracy before a head's or a fine-tune's training stops.
PATIENCE = 5
FINE_TUNE_PATIENCE = 2
# A fine-tune trains the top blocks at this share of the head's learning rate: larger steps
# undo what ImageNet taught them before the head has adapted.
FINE_TUNE_LR_SCALE = 0.1


class Deadline(keras.callbacks.Callback):
    """Stops training after ``deadline`` (``time.monotonic``; None never stops).

    During a search it stops at the first batch that ends after the deadline (Keras still
    evaluates the validation data for that epoch, so a stopped trial has a score); a final fit
    (``whole_epochs``) finishes its epoch, since the model it trains is the one saved.
    """

    def __init__(self, deadline: float | None, whole_epochs: bool = False) -> None:
        super().__init__()
        self.deadline, self.whole_epochs = deadline, whole_epochs

    def _stop(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if not self.whole_epochs:
            self._stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._stop()


class _TimedSearch:
    """Mixin for a Keras Tuner tuner: ``timed_search`` starts no trial after a deadline.

    The oracle stops handing out trials once it holds ``max_trials``; that limit is not part of
    its saved state, so a later search (the next round, a resumed run) goes on.
    """

    _deadline: float | None = None
    _stopped: bool = False

    def timed_search(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        epochs: int,
        deadline: float | None,
    ) -> bool:
        """Runs (or goes on with) the search until it is complete or ``deadline`` passes.

        Returns:
            Whether the search is complete (False: the deadline stopped it).
        """
        oracle = self.oracle  # type: ignore[attr-defined]
        if not hasattr(self, "_trial_limit"):
            self._trial_limit = oracle.max_trials
        oracle.max_trials, self._deadline, self._stopped = self._trial_limit, deadline, False
        self.search(  # type: ignore[attr-defined]
            *train, validation_data=val, epochs=epochs, callbacks=[Deadline(deadline)], verbose=2
        )
        return not self._stopped and (deadline is None or time.monotonic() < deadline)

    def pre_create_trial(self) -> None:
        super().pre_create_trial()  # type: ignore[misc]
        oracle = self.oracle  # type: ignore[attr-defined]
        if self._deadline is not None and time.monotonic() >= self._deadline and oracle.trials:
            oracle.max_trials = len(oracle.trials)
            self._stopped = True


class TimedHyperband(_TimedSearch, kt.Hyperband):
    """Hyperband that stops at a deadline."""


class TimedRandomSearch(_TimedSearch, kt.RandomSearch):
    """Random search that stops at a deadline."""


class TimedBayesianOptimization(_TimedSearch, kt.BayesianOptimization):
    """Bayesian optimisation that stops at a deadline."""


TimedTuner = TimedHyperband | TimedRandomSearch | TimedBayesianOptimization


def make_tuner(
    kind: str,
    hypermodel: kt.HyperModel,
    directory: Path,
    project: str,
    *,
    max_trials: int,
    max_epochs: int,
    seed: int,
    overwrite: bool,
) -> TimedTuner:
    """A Keras Tuner search on ``val_accuracy`` whose state lives in ``directory/project``."""
    common: dict[str, Any] = {
        "objective": "val_accuracy",
        "seed": seed,
        "directory": str(directory),
        "project_name": project,
        "overwrite": overwrite,
    }
    if kind == "hyperband":
        return TimedHyperband(hypermodel, max_epochs=max(max_epochs, 2), factor=3, **common)
    if kind == "random":
        return TimedRandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return TimedBayesianOptimization(hypermodel, max_trials=max_trials, **common)
    raise ValueError(f"unknown tuner {kind!r}; choose one of {TUNERS}")


def completed_trials(tuner: kt.Tuner) -> list[kt.engine.trial.Trial]:
    """The trials with a score, best first."""
    return [t for t in tuner.oracle.get_best_trials(num_trials=10_000) if t.score is not None]


def best_epochs(trial: kt.engine.trial.Trial) -> int:
    """The number of epochs after which a trial's validation accuracy was best (at least 1)."""
    history = trial.metrics.get_history("val_accuracy")
    if not history:
        return 1
    best = max(history, key=lambda observation: observation.value[0])
    return int(best.step) + 1


def tuner_summary(kind: str, tuner: kt.Tuner) -> dict[str, Any]:
    """The search as ``metrics.json`` records it: every trial with a score, best first."""
    trials = [
        {"trial_id": t.trial_id, "score": t.score, "hyperparameters": t.hyperparameters.values}
        for t in completed_trials(tuner)
    ]
    best = trials[0]["score"] if trials else None
    return {"type": kind, "trials": trials, "best_val_accuracy": best}


@dataclass(frozen=True)
class SearchSettings:
    """The part of the run's configuration the candidates need (``TrainConfig`` documents it)."""

    directory: Path
    tuner: str
    max_trials: int
    search_epochs: int
    head_epochs: int
    fine_tune_epochs: int
    epochs: int
    patience: int
    batch_size: int
    seed: int
    overwrite: bool


@dataclass
class FinalFit:
    """The chosen candidate refit on train + validation: the model to save and how it trained."""

    model: keras.Model
    history: dict[str, list[float]]
    hyperparameters: dict[str, Any]
    tuner: dict[str, Any] | None


class Candidate:
    """One way of training a classifier; ``imgclf.pipeline.selection`` calls these in rounds.

    Attributes:
        name: ``frozen``, ``fine_tune`` or ``scratch`` (``metrics.json`` uses these).
        framing: how its model frames images.
        image_size: its model's input side.
        score: its best validation accuracy so far (None before anything finished).
        start_score: the validation accuracy it started from (None: chance, untrained).
        done: whether more time would change nothing (its search or training is complete).
    """

    name = ""

    def __init__(self, framing: Framing, image_size: int) -> None:
        self.framing, self.image_size = framing, image_size
        self.score: float | None = None
        self.start_score: float | None = None
        self.done = False

    def prepare(self) -> None:
        """One-off work before the first round (time the selection charges to this candidate)."""

    def advance(self, deadline: float | None) -> None:
        """Trains until done or ``deadline``, then updates ``score`` and ``done``."""
        raise NotImplementedError

    def final_fit(self, deadline: float | None) -> FinalFit:
        """Refits the best configuration found on train + validation."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records about this candidate besides its score and time."""
        return {}


# ---- the pretrained backbone's features, computed once -----------------------------------------
class Features:
    """The activations at the backbone's cut and the pooled features, for train and validation.

    The backbone's ``top`` is shared by everything here; its ImageNet weights are kept, so that
    what a fine-tune changed can be put back for the frozen head.
    """

    def __init__(self, backbone: Backbone, train: Dataset, val: Dataset) -> None:
        self.backbone, self.train, self.val = backbone, train, val
        self.ready = False

    def compute(self) -> None:
        """Runs every image through the backbone once (the slow part of transfer learning)."""
        if self.ready:
            return
        self.pristine = self.backbone.top.get_weights()
        self.cut_train = activations(self.backbone.bottom, self.train.x)
        self.cut_val = activations(self.backbone.bottom, self.val.x)
        self.train_features = activations(self.backbone.top, self.cut_train, batch_size=256)
        self.val_features = activations(self.backbone.top, self.cut_val, batch_size=256)
        self.ready = True

    def restore(self) -> None:
        """Puts the ImageNet weights back into the backbone's top blocks, frozen."""
        self.backbone.top.set_weights(self.pristine)
        self.backbone.model.trainable = False

    def both(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Train and validation together: ``(cut activations, features, labels)``."""
        return (
            np.concatenate([self.cut_train, self.cut_val]),
            np.concatenate([self.train_features, self.val_features]),
            np.concatenate([self.train.y, self.val.y]),
        )


class FrozenHead(Candidate):
    """A head searched (Keras Tuner) on the frozen backbone's features."""

    name = "frozen"

    def __init__(self, features: Features, num_classes: int, settings: SearchSettings) -> None:
        super().__init__(FRAMING, features.backbone.resolution)
        self.features, self.num_classes, self.settings = features, num_classes, settings
        hypermodel = HeadHyperModel(
            features.backbone.num_features,
            num_classes,
            settings.batch_size,
            settings.seed,
            PATIENCE,
        )
        # Hyperband's many short first trials say little about heads, which train in seconds
        # to convergence (early stopping): the head's search is random unless asked otherwise.
        self.kind = "random" if settings.tuner == "hyperband" else settings.tuner
        self.tuner = make_tuner(
            self.kind,
            hypermodel,
            settings.directory,
            f"head_{self.kind}",
            max_trials=settings.max_trials,
            max_epochs=settings.head_epochs,
            seed=settings.seed,
            overwrite=settings.overwrite,
        )

    def prepare(self) -> None:
        self.features.compute()

    def advance(self, deadline: float | None) -> None:
        f = self.features
        self.done = self.tuner.timed_search(
            (f.train_features, f.train.y),
            (f.val_features, f.val.y),
            self.settings.head_epochs,
            deadline,
        )
        trials = completed_trials(self.tuner)
        self.score = float(trials[0].score) if trials else None

    def best(self) -> tuple[HeadHyperparameters, int]:
        """The best head's hyperparameters and the epochs it trained before its best score."""
        trial = completed_trials(self.tuner)[0]
        values = trial.hyperparameters.values
        hp = HeadHyperparameters(**{k: values[k] for k in HeadHyperparameters().as_dict()})
        return hp, best_epochs(trial)

    def fit_head(
        self,
        x: np.ndarray,
        y: np.ndarray,
        deadline: float | None,
        best: tuple[HeadHyperparameters, int] | None = None,
    ) -> tuple[keras.Model, dict[str, list[float]]]:
        """Trains a head on features ``x``: ``best`` (the best so far by default), for as many
        epochs as its trial took to its best validation accuracy."""
        hp, epochs = best or self.best()
        head = make_head(self.features.backbone.num_features, self.num_classes, hp)
        data = make_feature_dataset(
            x, y, self.settings.batch_size, hp.augmentation, self.settings.seed
        )
        stop = Deadline(deadline, whole_epochs=True)
        history = head.fit(data, epochs=epochs, callbacks=[stop], verbose=0, shuffle=False)
        return head, history.history

    def final_fit(self, deadline: float | None) -> FinalFit:
        f = self.features
        f.restore()
        _, x, y = f.both()
        head, history = self.fit_head(x, y, deadline)
        hp, epochs = self.best()
        return FinalFit(
            attach_head(f.backbone.model, head),
            history,
            {**hp.as_dict(), "head_epochs": epochs},
            tuner_summary(self.kind, self.tuner),
        )

    def summary(self) -> dict[str, Any]:
        return {"trials": len(completed_trials(self.tuner))}


class FineTune(Candidate):
    """The best frozen head so far, then the backbone's top blocks trained with it."""

    name = "fine_tune"

    def __init__(self, frozen: FrozenHead, settings: SearchSettings) -> None:
        super().__init__(FRAMING, frozen.image_size)
        self.frozen, self.settings = frozen, settings
        self.model: keras.Model | None = None
        self.weights: list[np.ndarray] = []
        # The head it started from; more head trials may find a better one meanwhile, but this
        # is the one its validation accuracy was measured with.
        self.head: tuple[HeadHyperparameters, int] = (HeadHyperparameters(), 1)
        self.val_history: list[float] = []

    @property
    def best_epochs(self) -> int:
        """Fine-tune epochs before the best validation accuracy (0: fine-tuning did not help)."""
        return int(np.argmax([self.start_score or 0.0, *self.val_history]))

    @property
    def learning_rate(self) -> float:
        return self.head[0].learning_rate * FINE_TUNE_LR_SCALE

    def _train(
        self, model: keras.Model, cut: np.ndarray, y: np.ndarray, **fit: Any
    ) -> dict[str, list[float]]:
        top = self.frozen.features.backbone.top
        top.trainable = True
        for layer in top.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # as fine_tune_model compiled it
        data = make_feature_dataset(
            cut, y, self.settings.batch_size, self.head[0].augmentation, self.settings.seed
        )
        return model.fit(data, shuffle=False, verbose=2, **fit).history

    def advance(self, deadline: float | None) -> None:
        f = self.frozen.features
        if self.model is None:
            # Start from the best head so far, as its trial left it at its best epoch: the
            # fine-tune starts where the frozen head is, and can only be chosen for improving it.
            self.head = self.frozen.best()
            with warnings.catch_warnings():
                # The trial's checkpoint holds its optimizer too; only the weights are wanted.
                warnings.filterwarnings("ignore", "Skipping variable loading for optimizer")
                head = self.frozen.tuner.load_model(completed_trials(self.frozen.tuner)[0])
            self.model = fine_tune_model(f.backbone, head, self.learning_rate)
            self.start_score = float(self.model.evaluate(f.cut_val, f.val.y, verbose=0)[1])
            self.weights = self.model.get_weights()
        self.model.set_weights(self.weights)
        history = self._train(
            self.model,
            f.cut_train,
            f.train.y,
            validation_data=(f.cut_val, f.val.y),
            initial_epoch=len(self.val_history),
            epochs=self.settings.fine_tune_epochs,
            callbacks=[Deadline(deadline)],
        )
        self.val_history += [float(v) for v in history.get("val_accuracy", [])]
        self.weights = self.model.get_weights()
        self.score = max(self.start_score or 0.0, *self.val_history)
        stale = len(self.val_history) - self.best_epochs
        self.done = (
            len(self.val_history) >= self.settings.fine_tune_epochs or stale >= FINE_TUNE_PATIENCE
        )
        f.restore()  # the frozen head's final model needs ImageNet's weights

    def final_fit(self, deadline: float | None) -> FinalFit:
        f = self.frozen.features
        f.restore()
        cut, x, y = f.both()
        head, _ = self.frozen.fit_head(x, y, deadline, self.head)
        model = fine_tune_model(f.backbone, head, self.learning_rate)
        epochs = max(self.best_epochs, 1)
        stop = Deadline(deadline, whole_epochs=True)
        history = self._train(model, cut, y, epochs=epochs, callbacks=[stop])
        f.backbone.model.trainable = False  # saved frozen: a warm start retrains the head only
        hp, head_epochs = self.head
        return FinalFit(
            attach_head(f.backbone.model, head),
            history,
            {
                **hp.as_dict(),
                "head_epochs": head_epochs,
                "fine_tune_blocks": f.backbone.top_blocks,
                "fine_tune_learning_rate": self.learning_rate,
                "fine_tune_epochs": epochs,
            },
            tuner_summary(self.frozen.kind, self.frozen.tuner),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "blocks": self.frozen.features.backbone.top_blocks,
            "start_val_accuracy": self.start_score,
            "val_accuracy_by_epoch": self.val_history,
        }


class Scratch(Candidate):
    """The from-scratch CNN (or a keras.applications backbone) searched on pixels."""

    name = "scratch"

    def __init__(
        self,
        train: Dataset,
        val: Dataset,
        image_size: int,
        settings: SearchSettings,
        backbone: str | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__(SQUASH, image_size)
        self.train, self.val, self.settings = train, val, settings
        self.backbone, self.weights = backbone, weights
        hypermodel = SceneHyperModel(
            len(train.classes),
            image_size,
            image_size,
            settings.batch_size,
            settings.seed,
            backbone,
            weights,
        )
        # The same folder as before candidates existed, so an interrupted search still resumes.
        self.tuner = make_tuner(
            settings.tuner,
            hypermodel,
            settings.directory,
            settings.tuner,
            max_trials=settings.max_trials,
            max_epochs=settings.search_epochs,
            seed=settings.seed,
            overwrite=settings.overwrite,
        )

    def advance(self, deadline: float | None) -> None:
        self.done = self.tuner.timed_search(
            (self.train.x, self.train.y),
            (self.val.x, self.val.y),
            self.settings.search_epochs,
            deadline,
        )
        trials = completed_trials(self.tuner)
        self.score = float(trials[0].score) if trials else None

    def best(self) -> Hyperparameters:
        """The best point of the search."""
        values = completed_trials(self.tuner)[0].hyperparameters.values
        return Hyperparameters(**{k: values[k] for k in Hyperparameters().as_dict()})

    def final_fit(self, deadline: float | None) -> FinalFit:
        hp = self.best()
        x = np.concatenate([self.train.x, self.val.x])
        y = np.concatenate([self.train.y, self.val.y])
        size = self.image_size
        model = make_model(len(self.train.classes), size, size, hp, self.backbone, self.weights)
        # Nothing is held out any more, so early stopping watches the training loss and keeps
        # the best weights.
        history = model.fit(
            make_dataset(x, y, self.settings.batch_size, hp.augmentation, self.settings.seed),
            epochs=self.settings.epochs,
            shuffle=False,  # make_dataset shuffles
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor="loss", patience=self.settings.patience, restore_best_weights=True
                ),
                Deadline(deadline, whole_epochs=True),
            ],
            verbose=2,
        ).history
        summary = tuner_summary(self.settings.tuner, self.tuner)
        return FinalFit(model, history, hp.as_dict(), summary)

    def summary(self) -> dict[str, Any]:
        return {"trials": len(completed_trials(self.tuner))}
