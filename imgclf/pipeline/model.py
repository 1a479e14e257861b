"""The models: ``make_model`` / ``make_head`` take explicit values, hypermodels choose them.

``make_model`` is the from-scratch CNN (or a keras.applications backbone): it takes RGB pixels as
float 0..255 (what ``imgclf.preprocess.load_image`` returns, cast) and normalises them itself, so
serving feeds pixels and nothing else. ``make_head`` is the classifier put on a pretrained
backbone's pooled features (``imgclf.pipeline.transfer``); it is trained on features computed
once, then ``attach_head`` joins it to the backbone as one pixels-to-probabilities model.
Augmentation runs in the input pipeline during ``fit`` only, so the saved model holds no random
layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

# keras.applications backbones: their ImageNet weights download on first use.
BACKBONES = ("mobilenet_v2", "efficientnet_b0")


@dataclass(frozen=True)
class Hyperparameters:
    """One point of the search space (also what ``metrics.json`` records)."""

    conv_blocks: int = 3
    filters: int = 32
    kernel_size: int = 3
    batch_norm: bool = True
    dropout: float = 0.2
    dense_units: int = 64
    learning_rate: float = 1e-3
    augmentation: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _backbone(name: str, weights: str | None, height: int, width: int) -> keras.Model:
    """Builds an ImageNet backbone (without its top) that takes pixels in 0..255."""
    shape = (height, width, 3)
    try:
        if name == "mobilenet_v2":
            base = keras.applications.MobileNetV2(
                include_top=False, weights=weights, input_shape=shape
            )
            scale = keras.layers.Rescaling(1 / 127.5, offset=-1.0)  # MobileNetV2 expects -1..1
        elif name == "efficientnet_b0":
            base = keras.applications.EfficientNetB0(
                include_top=False, weights=weights, input_shape=shape
            )
            scale = keras.layers.Identity()  # EfficientNet normalises 0..255 itself
        else:
            raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    except Exception as exc:
        if weights is None or isinstance(exc, ValueError) and "unknown backbone" in str(exc):
            raise
        raise RuntimeError(
            f"could not load {weights} weights for {name}: {exc}. The weights are downloaded from "
            "the Keras release storage on first use (cached in ~/.keras/models); on a machine "
            "without internet copy the .h5 file there, or use --weights none."
        ) from exc
    base.trainable = weights is None  # a pretrained backbone is frozen; only the head trains
    inputs = keras.Input(shape)
    return keras.Model(inputs, base(scale(inputs)), name=f"{name}_backbone")


def _compile(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_model(
    num_classes: int,
    height: int,
    width: int,
    hp: Hyperparameters = Hyperparameters(),
    backbone: str | None = None,
    weights: str | None = None,
) -> keras.Model:
    """Builds and compiles the classifier.

    Args:
        num_classes: the number of output classes (softmax).
        height: input height in pixels.
        width: input width in pixels.
        hp: the architecture and optimiser values.
        backbone: ``None`` for the plain CNN, or one of ``BACKBONES``.
        weights: ``"imagenet"`` or ``None`` (random initialisation), for a backbone.

    Returns:
        A compiled ``keras.Model`` from ``(H, W, 3)`` float pixels 0..255 to class probabilities.
    """
    inputs = keras.Input((height, width, 3), name="pixels")
    if backbone:
        x = _backbone(backbone, weights, height, width)(inputs)
    else:
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        for block in range(hp.conv_blocks):
            # The first convolution is strided: at 150x150 it cuts the cost of the network about
            # 4x (CPU training and serving) for a small loss on these scene images.
            x = keras.layers.Conv2D(
                hp.filters * 2**block,
                hp.kernel_size,
                strides=2 if block == 0 else 1,
                padding="same",
                use_bias=not hp.batch_norm,
            )(x)
            if hp.batch_norm:
                # momentum 0.9: the moving statistics must settle within the few hundred steps
                # of a small dataset, or inference diverges from training.
                x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.ReLU()(x)
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(hp.dropout)(x)
    x = keras.layers.Dense(hp.dense_units, activation="relu")(x)
    x = keras.layers.Dropout(hp.dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return _compile(keras.Model(inputs, outputs, name=backbone or "scene_cnn"), hp.learning_rate)


def choose(hp: kt.HyperParameters) -> Hyperparameters:
    """Declares the search space on ``hp`` and returns the chosen point."""
    return Hyperparameters(
        conv_blocks=hp.Int("conv_blocks", 2, 4),
        filters=hp.Choice("filters", [16, 32, 48]),
        kernel_size=hp.Choice("kernel_size", [3, 5]),
        batch_norm=hp.Boolean("batch_norm", default=True),
        dropout=hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2),
        dense_units=hp.Choice("dense_units", [32, 64, 128]),
        learning_rate=hp.Float("learning_rate", 1e-4, 3e-3, sampling="log", default=1e-3),
        augmentation=hp.Float("augmentation", 0.0, 0.3, step=0.1, default=0.1),
    )


def augmenter(strength: float, seed: int) -> keras.Sequential:
    """Random flips, rotations, zooms and contrast, scaled by ``strength`` (0 = flips only)."""
    layers: list[keras.layers.Layer] = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if strength > 0:
        layers += [
            keras.layers.RandomRotation(strength / 3, seed=seed),
            keras.layers.RandomZoom(strength, seed=seed),
            keras.layers.RandomContrast(strength, seed=seed),
        ]
    return keras.Sequential(layers, name="augmentation")


def make_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, augmentation: float | None, seed: int
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline; shuffled and augmented when ``augmentation`` is not None."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if augmentation is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))
    if augmentation is not None:
        aug = augmenter(augmentation, seed)
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class SceneHyperModel(kt.HyperModel):
    """Keras Tuner hypermodel: the architecture and the augmentation strength are both searched."""

    def __init__(
        self,
        num_classes: int,
        height: int,
        width: int,
        batch_size: int,
        seed: int,
        backbone: str | None = None,
        weights: str | None = None,
    ) -> None:
        super().__init__(name="scene")
        self.num_classes, self.height, self.width = num_classes, height, width
        self.batch_size, self.seed = batch_size, seed
        self.backbone, self.weights = backbone, weights

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return make_model(
            self.num_classes, self.height, self.width, choose(hp), self.backbone, self.weights
        )

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray],
        **kwargs: Any,
    ) -> keras.callbacks.History:
        train = make_dataset(x, y, self.batch_size, choose(hp).augmentation, self.seed)
        val = make_dataset(*validation_data, self.batch_size, None, self.seed)
        kwargs["shuffle"] = False  # the pipeline shuffles; Keras cannot shuffle a tf.data source
        return model.fit(train, validation_data=val, **kwargs)


# ---- the head on a pretrained backbone's features ------------------------------------------------
@dataclass(frozen=True)
class HeadHyperparameters:
    """One point of the head's search space (also what ``metrics.json`` records).

    ``augmentation`` is Gaussian noise added to the features while training, as a share of each
    feature's spread: the features are computed once, so pixel augmentation cannot happen there.
    ``dense_units`` 0 is a linear (logistic-regression) head.
    """

    dense_units: int = 256
    dropout: float = 0.2
    learning_rate: float = 3e-3
    augmentation: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_head(hp: kt.HyperParameters) -> HeadHyperparameters:
    """Declares the head's search space on ``hp`` and returns the chosen point."""
    return HeadHyperparameters(
        dense_units=hp.Choice("dense_units", [0, 128, 256, 512], default=256),
        dropout=hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.2),
        # Heads must converge within head_epochs (40): on EfficientNet-Lite0 features of scanned
        # digits a linear head took 25 epochs at 1e-2 and 32 at 3e-3.
        learning_rate=hp.Float("learning_rate", 5e-4, 2e-2, sampling="log", default=3e-3),
        augmentation=hp.Float("augmentation", 0.0, 0.3, step=0.1, default=0.1),
    )


def make_head(
    num_features: int, num_classes: int, hp: HeadHyperparameters = HeadHyperparameters()
) -> keras.Model:
    """Builds and compiles the classifier that goes on a backbone's pooled features.

    Args:
        num_features: the width of the features (1280 for EfficientNet-Lite).
        num_classes: the number of output classes (softmax).
        hp: the head's width, dropout and learning rate.

    Returns:
        A compiled ``keras.Model`` from ``(num_features,)`` features to class probabilities.
    """
    inputs = keras.Input((num_features,), name="features")
    x = keras.layers.Dropout(hp.dropout)(inputs)
    if hp.dense_units:
        x = keras.layers.Dense(hp.dense_units, activation="relu")(x)
        x = keras.layers.Dropout(hp.dropout)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return _compile(keras.Model(inputs, outputs, name="head"), hp.learning_rate)


def attach_head(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """One model from pixels to probabilities: ``backbone`` then the layers of ``head``.

    The head's layers are applied one after the other (not nested as a model), so the saved file
    reads like any classifier: its last layer gives the probabilities and the one before it the
    features a warm start puts a new output layer on. Weights are shared, not copied.
    """
    pixels = keras.Input(backbone.input_shape[1:], name="pixels")
    x = backbone(pixels)
    for layer in head.layers[1:]:  # [0] is the head's input
        x = layer(x)
    name = backbone.name.removesuffix("_features")  # efficientnet_lite0_features
    return keras.Model(pixels, x, name=f"{name}_classifier")


def make_feature_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    noise: float | None,
    seed: int,
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline over features (any shape after the batch axis).

    Args:
        x: the features, float32.
        y: the labels.
        batch_size: the batch size.
        noise: None (evaluation: in order, untouched), or the training noise as a share of each
            feature's standard deviation over ``x`` (0: shuffled only).
        seed: the shuffle and noise seed.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if noise is None:
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if noise > 0:
        scale = tf.constant(noise * x.std(axis=0).astype(np.float32))
        generator = tf.random.Generator.from_seed(seed)
        ds = ds.map(lambda a, b: (a + generator.normal(tf.shape(a)) * scale, b))
    return ds.prefetch(tf.data.AUTOTUNE)


class HeadHyperModel(kt.HyperModel):
    """Keras Tuner hypermodel of the head: it trains on features, with early stopping."""

    def __init__(
        self, num_features: int, num_classes: int, batch_size: int, seed: int, patience: int
    ) -> None:
        super().__init__(name="head")
        self.num_features, self.num_classes = num_features, num_classes
        self.batch_size, self.seed, self.patience = batch_size, seed, patience

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        return make_head(self.num_features, self.num_classes, choose_head(hp))

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray],
        **kwargs: Any,
    ) -> keras.callbacks.History:
        train = make_feature_dataset(x, y, self.batch_size, choose_head(hp).augmentation, self.seed)
        val = make_feature_dataset(*validation_data, self.batch_size * 8, None, self.seed)
        # A head fits in a few epochs and then overfits the features: stop at the best epoch.
        stop = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=self.patience, restore_best_weights=True
        )
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), stop]
        kwargs["shuffle"] = False
        return model.fit(train, validation_data=val, **kwargs)
