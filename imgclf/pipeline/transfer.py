"""Transfer learning on EfficientNet-Lite: features computed once, heads and top blocks fit on them.

A pretrained backbone is split where fine-tuning starts: ``bottom`` (pixels -> the activations
entering the top blocks, never trained) and ``top`` (those activations -> the pooled features).
Every image goes through ``bottom`` once; a frozen head trains on ``top``'s features, and a
fine-tune trains ``top`` itself (its convolutions; batch norm keeps its ImageNet statistics) on
the stored activations. Nothing here runs the whole backbone per epoch, which is what makes a
search over heads, and a fine-tune, cost seconds rather than minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from imgclf.pipeline import efficientnet_lite
from imgclf.preprocess import Framing

# ``train.py --backbone`` name -> EfficientNet-Lite variant.
LITE_BACKBONES = {f"efficientnet_lite{i}": f"lite{i}" for i in range(3)}
DEFAULT_BACKBONE = "efficientnet_lite0"
FRAMING: Framing = efficientnet_lite.FRAMING


@dataclass(frozen=True)
class Backbone:
    """A pretrained feature extractor cut in two where fine-tuning starts."""

    name: str
    model: keras.Model  # pixels (float RGB 0..255) -> pooled features
    bottom: keras.Model  # pixels -> the activations entering the top blocks
    top: keras.Model  # those activations -> pooled features
    top_blocks: int

    @property
    def resolution(self) -> int:
        return int(self.model.input_shape[1])

    @property
    def num_features(self) -> int:
        return int(self.model.output_shape[-1])


def block_count(model: keras.Model) -> int:
    """The number of MBConv blocks of an EfficientNet-Lite model (layers ``blocks_<i>_*``)."""
    indices = {int(layer.name.split("_")[1]) for layer in model.layers if _block(layer.name)}
    return max(indices) + 1


def _block(name: str) -> bool:
    parts = name.split("_")
    return len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit()


def split_backbone(model: keras.Model, top_blocks: int) -> tuple[keras.Model, keras.Model]:
    """Cuts an EfficientNet-Lite feature extractor before its last ``top_blocks`` blocks.

    Args:
        model: ``efficientnet_lite.build_efficientnet_lite(..., include_top=False)``.
        top_blocks: MBConv blocks above the cut; the 1x1 head convolution is always above it, so
            0 cuts just before that convolution.

    Returns:
        ``(bottom, top)``, sharing ``model``'s layers: ``top(bottom(x)) == model(x)``.

    Raises:
        ValueError: ``top_blocks`` is negative or more than the model has.
    """
    blocks = block_count(model)
    if not 0 <= top_blocks <= blocks:
        raise ValueError(f"top_blocks must be within 0..{blocks}, got {top_blocks}")
    prefix = f"blocks_{blocks - top_blocks}_"
    first = next(
        layer
        for layer in model.layers
        if (layer.name.startswith(prefix) if top_blocks else layer.name == "conv_head")
    )
    # Each block's residual reads the block's own input, so nothing above the cut reaches
    # below it: the layers from the cut up form a model of their own.
    cut = first.input
    return keras.Model(model.input, cut, name="bottom"), keras.Model(cut, model.output, name="top")


def load_backbone(name: str, top_blocks: int) -> Backbone:
    """Builds a pretrained EfficientNet-Lite (weights read offline) and cuts it.

    Args:
        name: one of ``LITE_BACKBONES``.
        top_blocks: blocks a fine-tune may train (see ``split_backbone``).

    Raises:
        ValueError: an unknown name.
        efficientnet_lite.WeightsNotInstalledError: the weights package is missing.
    """
    if name not in LITE_BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(LITE_BACKBONES)}")
    model = efficientnet_lite.build_efficientnet_lite(LITE_BACKBONES[name], include_top=False)
    model.trainable = False  # only a fine-tune unfreezes (part of) it, see fine_tune_model
    bottom, top = split_backbone(model, top_blocks)
    return Backbone(name, model, bottom, top, top_blocks)


def describe(backbone: Backbone) -> dict[str, str]:
    """Where the backbone's weights come from (what ``metrics.json`` and manifests record)."""
    variant = LITE_BACKBONES[backbone.name]
    return {
        "backbone": backbone.name,
        "weights": efficientnet_lite.weights_package(variant),
        "weights_sha256": efficientnet_lite.weights_digest(variant),
    }


def activations(model: keras.Model, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Runs ``model`` over uint8 pixels in batches (cast one batch at a time, to spare memory)."""
    out = [
        keras.ops.convert_to_numpy(model(pixels[i : i + batch_size].astype(np.float32)))
        for i in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, *model.output_shape[1:]), np.float32)


def fine_tune_model(backbone: Backbone, head: keras.Model, learning_rate: float) -> keras.Model:
    """``top`` then ``head``, compiled with the convolutions of ``top`` trainable.

    Batch norm stays frozen (inference mode): a few hundred images cannot re-estimate ImageNet
    statistics, and moving them shifts every feature the head was trained on.
    """
    backbone.top.trainable = True
    for layer in backbone.top.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    inputs = keras.Input(backbone.top.input_shape[1:], name="activations")
    model = keras.Model(inputs, head(backbone.top(inputs)), name="fine_tune")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
