"""The one preprocessing function: image bytes -> RGB uint8 pixels at the model's input size.

Training (``imgclf.pipeline.data``) and serving (``lambda_func``) both call ``load_image``;
normalisation lives inside the model, so this is the whole of what stands between a file and
the model's input.
Only Pillow and numpy are imported here (the serving path never imports TensorFlow).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from imgclf.errors import UnprocessableImage, UnsupportedMediaType
from imgclf.settings import ImageLimits

# Pillow format name -> the media type a client would send it as.
ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
ALLOWED_MEDIA_TYPES = frozenset(ALLOWED_FORMATS.values())
# File suffixes accepted by the dataset loader and the retrain ingester.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})


def _open(data: bytes) -> Image.Image:
    """Opens (without decoding) an image of an allowed format, or raises 415/422."""
    with warnings.catch_warnings():
        # Our own pixel limit (checked right after) is the one that decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except Image.DecompressionBombError as exc:
            raise UnprocessableImage(
                f"image is too large to decode safely: {exc}", code="image_too_large"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            pass
        try:
            other = Image.open(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any failure here means "not an image"
            raise UnprocessableImage("the data is not a decodable image") from exc
        raise UnsupportedMediaType(
            f"image format {other.format} is not supported; "
            f"send one of {', '.join(sorted(ALLOWED_FORMATS))}"
        )


@dataclass(frozen=True)
class Framing:
    """How an image becomes the model's square input: what part of it, and how it is resampled.

    The framing belongs to the model (its manifest's ``framing``), not to serving: a network is
    right only on images framed as it was trained and evaluated. ``crop_fraction`` 1.0 squashes
    the whole image to the input size; less cuts a centred square of that share of the shorter
    side first (EfficientNet-Lite's ImageNet evaluation: 0.875, bicubic).
    """

    crop_fraction: float = 1.0
    resample: str = "bilinear"

    @property
    def name(self) -> str:
        """``squash_bilinear`` or ``crop_0.875_bicubic``: how manifests record it."""
        if self.crop_fraction == 1.0:
            return f"squash_{self.resample}"
        return f"crop_{self.crop_fraction:g}_{self.resample}"

    @classmethod
    def parse(cls, name: str) -> Framing:
        """Reads a ``name``.

        Raises:
            ValueError: not a framing this code knows.
        """
        kind, _, rest = name.partition("_")
        fraction, _, resample = rest.rpartition("_") if kind == "crop" else ("1", "", rest)
        try:
            framing = cls(float(fraction), resample)
        except ValueError as exc:
            raise ValueError(f"unknown framing {name!r}") from exc
        if kind not in ("crop", "squash") or framing.name != name:
            raise ValueError(f"unknown framing {name!r}")
        return framing

    def __post_init__(self) -> None:
        if not 0 < self.crop_fraction <= 1 or self.resample not in _RESAMPLE:
            raise ValueError(f"bad framing: crop {self.crop_fraction}, resample {self.resample}")


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# The framing of every model before framings were recorded, and of the from-scratch CNN.
SQUASH = Framing()
# EfficientNet-Lite's: a central 224/256 of the shorter side, bicubic.
CENTER_CROP = Framing(0.875, "bicubic")


# Modes Pillow resizes bilinearly as they are (alpha premultiplied): shrinking them before the
# conversion to RGB keeps a large transparent PNG from being composited at full size (a 40 MP
# grey+alpha PNG peaked at 835 MB the other way round). Palette and 16-bit images convert first.
_RESIZE_BEFORE_CONVERT = frozenset({"RGB", "RGBA", "L", "LA"})


def _resize(img: Image.Image, width: int, height: int, framing: Framing) -> Image.Image:
    w, h = img.size
    if framing.crop_fraction == 1.0:
        if (w, h) == (width, height):
            return img
        return img.resize((width, height), _RESAMPLE[framing.resample], reducing_gap=3.0)
    # A fractional box: the crop is centred exactly, with no rounding shift.
    side = min(w, h) * framing.crop_fraction
    left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((width, height), _RESAMPLE[framing.resample], box=box, reducing_gap=3.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Converts any Pillow mode to RGB, compositing transparency onto white."""
    if img.mode == "RGB":
        return img  # convert() would copy for nothing (measured ~8 ms at 1080p)
    if img.mode.startswith("I;16"):
        # Keep the top 8 bits in integer arithmetic: float copies of a 40 MP image cost seconds.
        grey = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        grey = np.clip(arr * (255.0 / max(float(arr.max()), 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    data: bytes,
    height: int,
    width: int,
    limits: ImageLimits = ImageLimits(),
    framing: Framing = SQUASH,
) -> np.ndarray:
    """Decodes image bytes into the model's input pixels.

    JPEG, PNG, WebP, GIF (first frame) and BMP are accepted. The EXIF orientation is applied, every
    mode becomes RGB, large JPEGs are decoded at a reduced scale (``Image.draft``), and the result
    is framed (``framing``: squashed whole, or a central crop) to ``height`` x ``width``.

    Args:
        data: the encoded image.
        height: the model's input height in pixels.
        width: the model's input width in pixels.
        limits: the pixel limit (decompression bombs) and the smallest accepted side.
        framing: the model's framing (its manifest says which).

    Returns:
        A ``(height, width, 3)`` uint8 array.

    Raises:
        UnsupportedMediaType: an image of a format outside the allow-list.
        UnprocessableImage: not an image, truncated, too small, or over the pixel limit.
    """
    if not data:
        raise UnprocessableImage("the image is empty")
    img = _open(data)
    w, h = img.size
    if w * h > limits.max_pixels:
        raise UnprocessableImage(
            f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
            code="image_too_large",
        )
    if min(w, h) < limits.min_side:
        raise UnprocessableImage(
            f"image is {w}x{h}; each side must be at least {limits.min_side} pixels",
            code="image_too_small",
        )
    try:
        if img.format == "JPEG":
            # Decode at the smallest DCT scale that still leaves the framed part at least the
            # target size in both directions, whatever the EXIF orientation turns out to be.
            side = math.ceil(max(height, width) / framing.crop_fraction)
            img.draft("RGB", (side, side))
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode in _RESIZE_BEFORE_CONVERT:
            return np.asarray(_to_rgb(_resize(img, width, height, framing)), dtype=np.uint8)
        return np.asarray(_resize(_to_rgb(img), width, height, framing), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnprocessableImage(f"the image could not be decoded: {exc}") from exc
