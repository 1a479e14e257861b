"""The one preprocessing function: image bytes -> RGB uint8 pixels at the model's input size.

Training (``imgclf.pipeline.data``) and serving (``lambda_func``) both call ``load_image``;
normalisation lives inside the model, so this is the whole of what stands between a file and
the model's input. It is also where hostile files stop: every ``ImageLimits`` limit is checked
from the header, before a pixel is decoded, so that time and memory are bounded whatever the
bytes (README "Hostile input", docs/fuzz.md).
Only Pillow and numpy are imported here (the serving path never imports TensorFlow).
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from imgclf.errors import PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
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
# How much of a file of another format is read to name that format in a 415.
_NAMING_PREFIX_BYTES = 65536


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
        other = _other_format(data)
        if other is None:
            raise UnprocessableImage("the data is not a decodable image")
        raise UnsupportedMediaType(
            f"image format {other} is not supported; "
            f"send one of {', '.join(sorted(ALLOWED_FORMATS))}"
        )


def _signed_as(name: str, head: bytes) -> bool:
    """Whether the plugin ``name`` recognises ``head`` as its signature."""
    accept = Image.OPEN[name][1]
    try:
        return bool(accept and accept(head))
    except Exception:  # noqa: BLE001 - some checks raise on a short head: then it is not theirs
        return False


def _other_format(data: bytes) -> str | None:
    """Names the format of a file that no allowed plugin opened, without parsing it: every other
    plugin parses its header in Python (4.4 MB of EPS comment lines took 3.2 s).

    By signature first (each plugin's own check of the first 16 bytes, as ``Image.open`` does),
    then, for the few formats that have none, by opening a bounded prefix.
    """
    Image.init()
    signed = [name for name in Image.ID if _signed_as(name, data[:16])]
    if any(name in ALLOWED_FORMATS for name in signed):
        return None  # ours, broken (MPO, say, shares JPEG's signature)
    if signed:
        return signed[0]
    try:
        return Image.open(io.BytesIO(data[:_NAMING_PREFIX_BYTES])).format
    except Exception:  # noqa: BLE001 - any failure here means "not an image"
        return None


# ---- structure, counted before Pillow or libjpeg sees the bytes ---------------------------------
# Pillow reads JPEG markers, PNG chunks and GIF blocks one at a time in Python (about 2 s for the
# 370,000 empty chunks 4.5 MB can hold), and libjpeg decodes every block of the image once per
# scan (5,000 empty scans of a 6300x6300 JPEG: 18 s). Neither cost depends on the pixel count, so
# both are counted here, by a walk that stops as soon as a limit is passed.

# A marker: 0xFF (and fill bytes) then a code that is not a stuffed zero, a restart or TEM.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\x01\xd0-\xd7\xff])")
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def _too_many_chunks(kind: str, limit: int) -> UnprocessableImage:
    return UnprocessableImage(
        f"the image has more than {limit} {kind} (MAX_IMAGE_CHUNKS)", code="too_many_chunks"
    )


def _jpeg_scans(data: bytes, limits: ImageLimits) -> int:
    """Counts a JPEG's scans (SOS markers) as libjpeg will meet them, up to the limits.

    Marker segments are skipped by their length, as libjpeg skips them (an EXIF thumbnail's
    markers are not the image's), and the walk ends at EOI. Before the first scan, where Pillow
    reads the header a byte at a time, stray and fill bytes count as markers too.

    Raises:
        UnprocessableImage: more scans than ``max_jpeg_scans`` or markers than
            ``max_image_chunks``.
    """
    scans = markers = 0
    pos = 2
    while match := _JPEG_MARKER.search(data, pos):
        markers += 1 if scans else match.end() - 1 - pos
        if markers > limits.max_image_chunks:
            raise _too_many_chunks("JPEG markers", limits.max_image_chunks)
        marker, pos = match[1][0], match.end()
        if marker == _JPEG_EOI:
            break
        if marker == _JPEG_SOS:
            scans += 1
            if scans > limits.max_jpeg_scans:
                raise UnprocessableImage(
                    f"the JPEG has more than {limits.max_jpeg_scans} scans (MAX_JPEG_SCANS)",
                    code="too_many_scans",
                )
        if marker != 0xD8:  # SOI has no length; every other marker left here has one
            pos += int.from_bytes(data[pos : pos + 2], "big")
    return scans


def _png_chunks(data: bytes, limits: ImageLimits) -> None:
    """Counts a PNG's chunks up to IEND.

    Raises:
        UnprocessableImage: more than ``max_image_chunks``.
    """
    pos, chunks = 8, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > limits.max_image_chunks:
            raise _too_many_chunks("PNG chunks", limits.max_image_chunks)
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")


def _gif_blocks(data: bytes, limits: ImageLimits) -> None:
    """Counts a GIF's extension blocks, their sub-blocks and stray bytes before the first frame.

    Only the first frame is decoded, and past its descriptor Pillow's C decoder takes over;
    before it, Pillow reads a byte at a time, skipping any that starts no block.

    Raises:
        UnprocessableImage: more than ``max_image_chunks``.
    """
    if len(data) < 13:
        return
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    blocks = 0
    while pos < len(data) and data[pos] not in (0x2C, 0x3B):  # the first frame, the trailer
        if data[pos] == 0x21:  # an extension: its label, then sub-blocks up to an empty one
            pos += 2
            size = -1
            while size and pos < len(data):
                size = data[pos]
                pos += 1 + size
                blocks += 1
                if blocks > limits.max_image_chunks:
                    raise _too_many_chunks("GIF blocks", limits.max_image_chunks)
        else:
            pos += 1
            blocks += 1
        if blocks > limits.max_image_chunks:
            raise _too_many_chunks("GIF blocks", limits.max_image_chunks)


def _check_structure(data: bytes, limits: ImageLimits) -> int:
    """Counts what costs time whatever the pixel count; returns the JPEG scans (else 0)."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_scans(data, limits)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        _png_chunks(data, limits)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _gif_blocks(data, limits)
    return 0


def _open_checked(data: bytes, limits: ImageLimits) -> tuple[Image.Image, int]:
    """Opens an image and checks every limit its header alone decides; decodes nothing.

    Returns:
        The opened image and, for a JPEG, its number of scans (else 0).
    """
    if not data:
        raise UnprocessableImage("the image is empty")
    scans = _check_structure(data, limits)
    img = _open(data)
    w, h = img.size
    if w * h > limits.max_pixels:
        raise UnprocessableImage(
            f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}"
            " (MAX_IMAGE_PIXELS)",
            code="image_too_large",
        )
    if min(w, h) < limits.min_side:
        raise UnprocessableImage(
            f"image is {w}x{h}; each side must be at least {limits.min_side} pixels",
            code="image_too_small",
        )
    if img.format == "BMP" and any(tile.codec_name == "bmp_rle" for tile in img.tile):
        # Pillow decodes RLE in Python, a byte pair at a time, and pads each row pixel by pixel:
        # a 26 kB RLE8 file of 6300x6300 took 9.5 s. Its cost follows neither pixels nor bytes.
        raise UnsupportedMediaType("BMP with RLE compression is not supported; send it unpacked")
    return img, scans


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


# ---- decoding: what it makes, estimated from the header ----------------------------------------
# Pillow keeps every multi-band pixel in 4 bytes (RGB too) and 1, L and P in one. Each mode is
# brought to one that resizes bilinearly as it is (RGB, L, or RGBA/LA with alpha premultiplied),
# shrunk, and only then made RGB: a 40 MP palette PNG with transparency, once expanded to RGBA
# and composited at full size, peaked at 702 MB; this way it takes its P and RGB images.
_RESIZABLE = frozenset({"RGB", "RGBA", "L", "LA"})

# What decoding makes, per pixel, for each mode: the image, and the full-size images the
# conversion to a resizable mode or the resize itself make from it.
_BYTES_PER_PIXEL = {
    "1": 2,  # the image, then L
    "L": 1,
    "P": 5,  # the image, then RGB (transparency is composited into the palette first)
    "RGB": 4,
    "RGBA": 8,  # the image, then the premultiplied RGBa copy Pillow resizes
    "LA": 8,
    "I;16": 5,  # the image, a uint16 copy, then L
    "I;16L": 5,
    "I;16B": 5,
    "I;16N": 5,
    "I": 9,  # the image, a float32 copy, then L
    "F": 9,
}
_OTHER_MODES_BYTES_PER_PIXEL = 8  # the image, then RGB (CMYK, YCbCr, PA, ...)
# libwebp's animation decoder (Pillow's only WebP path) keeps two RGBA canvases, hands Pillow
# the frame as a bytes object, which becomes the image: 4 x 4 bytes per pixel of the canvas.
_WEBP_BYTES_PER_PIXEL = 16
# PNG colour type -> samples per pixel.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# libjpeg passes over the coefficients once per scan; a usual progressive file has about ten.
_SCANS_PER_PASS = 10


def _png_rows_bytes(data: bytes) -> int:
    """The bytes a PNG's rows inflate to (what zlib and the unfiltering go through), from IHDR."""
    if data[12:16] != b"IHDR" or len(data) < 26:
        return 0
    width, height = struct.unpack(">II", data[16:24])
    depth, channels = data[24], _PNG_CHANNELS.get(data[25], 4)
    return height * (1 + math.ceil(width * channels * depth / 8))


def _jpeg_coefficient_bytes(img: Image.Image, scans: int) -> int:
    """A progressive or multi-scan JPEG's coefficients: libjpeg keeps two bytes per coefficient
    of every component at full resolution (whatever ``draft`` scales the output to), and passes
    over them once per scan. A single-scan JPEG is decoded without them."""
    if scans <= 1 and not img.info.get("progressive"):
        return 0
    w, h = img.size
    layers = getattr(img, "layer", None) or [(0, 1, 1, 0)]
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    blocks = sum(
        math.ceil(w / (8 * h_max)) * h_samp * math.ceil(h / (8 * v_max)) * v_samp
        for _, h_samp, v_samp, *_ in layers
    )
    return blocks * 64 * 2 * max(1, math.ceil(scans / _SCANS_PER_PASS))


def _decoded_bytes(img: Image.Image, made_by_decoder: int) -> int:
    """The bytes decoding ``img`` (as opened, after any ``draft``) makes, all of them.

    ``made_by_decoder`` is what the decoder goes through on the way (inflated PNG rows, JPEG
    coefficients). Memory is at most this and time follows it: from 0.8 to 4.1 ns a byte for every
    admitted kind in the fuzz run (docs/fuzz.md), where a pixel costs from 1 to 64 ns.
    """
    w, h = img.size
    if img.format == "WEBP":
        return w * h * _WEBP_BYTES_PER_PIXEL
    per_pixel = _BYTES_PER_PIXEL.get(img.mode, _OTHER_MODES_BYTES_PER_PIXEL)
    return w * h * per_pixel + made_by_decoder


class DecodeBudget:
    """The decoded bytes a request's images may still make (``max_batch_decoded_bytes``).

    Each image is bounded by ``max_decoded_bytes`` on its own; a batch of them is bounded by
    this, spent image by image, so that no batch takes longer than a few images' worth.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, decoded_bytes: int) -> None:
        """Takes ``decoded_bytes`` from what is left.

        Raises:
            PayloadTooLarge: less than that is left (nothing is taken).
        """
        if decoded_bytes > self.left:
            raise PayloadTooLarge(
                f"decoding this image ({decoded_bytes // 1_000_000} MB) would take the "
                f"request over its {self.limit // 1_000_000} MB (MAX_BATCH_DECODED_BYTES); "
                "send it in another request",
                code="batch_decoded_too_large",
            )
        self.left -= decoded_bytes


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


def _flatten_palette(img: Image.Image) -> Image.Image:
    """A palette image with transparency, as RGB composited onto white.

    Compositing is per pixel, so compositing the palette's 256 colours gives the same pixels as
    compositing the whole image, without the three full-size RGBA images that takes.
    """
    palette = img.getpalette("RGBA") or []
    rgba = np.array(palette, dtype=np.uint8).reshape(-1, 4)
    transparency = img.info.pop("transparency", None)
    if isinstance(transparency, int) and 0 <= transparency < len(rgba):
        rgba[transparency, 3] = 0
    elif isinstance(transparency, bytes):
        alphas = np.frombuffer(transparency[: len(rgba)], dtype=np.uint8)
        rgba[: len(alphas), 3] = alphas
    swatch = Image.fromarray(rgba[np.newaxis], "RGBA")
    white = Image.new("RGBA", swatch.size, (255, 255, 255, 255))
    img.putpalette(Image.alpha_composite(white, swatch).convert("RGB").tobytes(), "RGB")
    return img.convert("RGB")


def _grey_to_l(img: Image.Image) -> Image.Image:
    """16- and 32-bit grey to 8-bit L, in integer or in-place arithmetic (float copies of a 40 MP
    image cost seconds)."""
    if img.mode.startswith("I;16"):
        # The top 8 bits: one uint16 copy, shifted in place.
        arr = np.array(img, dtype=np.uint16)
        arr >>= 8
        return Image.fromarray(arr.astype(np.uint8), mode="L")
    arr = np.array(img, dtype=np.float32)
    arr *= 255.0 / max(float(arr.max()), 1.0)
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


def _resizable(img: Image.Image) -> Image.Image:
    """Converts ``img`` to a mode Pillow resizes as it is (RGB, L, RGBA or LA)."""
    if img.mode in _RESIZABLE:
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        return _grey_to_l(img)
    if img.mode == "P" and "transparency" in img.info:
        return _flatten_palette(img)
    if img.mode == "PA":
        return img.convert("RGBA")
    return img.convert("RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, L, RGBA or LA (small by now) to RGB, compositing transparency onto white."""
    if img.mode == "RGB":
        return img  # convert() would copy for nothing
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# EXIF orientation -> the transposition that displays the picture upright (ImageOps'
# exif_transpose's table); 5 to 8 swap width and height.
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({_ORIENTATIONS[5], _ORIENTATIONS[6], _ORIENTATIONS[7], _ORIENTATIONS[8]})


def _orientation(img: Image.Image) -> Image.Transpose | None:
    """The EXIF (or XMP) orientation's transposition, or None: upright, absent or unreadable.

    Metadata is a hint: whatever is wrong with it (garbage, a loop, a wrong type), the pixels
    are still the picture, so it is never a reason to refuse the image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable metadata of any kind means "no orientation"
        return None
    return _ORIENTATIONS.get(value) if isinstance(value, int) else None


def _prepare(
    data: bytes, height: int, width: int, limits: ImageLimits, framing: Framing
) -> tuple[Image.Image, int]:
    """Opens and checks an image, sets the JPEG scale, and estimates its decoded bytes."""
    img, scans = _open_checked(data, limits)
    made_by_decoder = 0
    if img.format == "PNG":
        made_by_decoder = _png_rows_bytes(data)
    elif img.format == "JPEG":
        made_by_decoder = _jpeg_coefficient_bytes(img, scans)
        # Decode at the smallest DCT scale that still leaves the framed part at least the
        # target size in both directions, whatever the EXIF orientation turns out to be.
        side = math.ceil(max(height, width) / framing.crop_fraction)
        img.draft("RGB", (side, side))
    return img, _decoded_bytes(img, made_by_decoder)


def decoded_bytes(
    data: bytes,
    height: int,
    width: int,
    limits: ImageLimits = ImageLimits(),
    framing: Framing = SQUASH,
) -> int:
    """The decoded bytes ``load_image`` counts for an image (MAX_DECODED_BYTES), decoding nothing.

    Args:
        data: the encoded image.
        height: the model's input height (a JPEG's decoding scale depends on it).
        width: the model's input width.
        limits: the limits checked on the way (all but ``max_decoded_bytes``).
        framing: the model's framing.

    Returns:
        The estimate.

    Raises:
        UnsupportedMediaType: as ``load_image``.
        UnprocessableImage: as ``load_image``, but never for ``max_decoded_bytes``.
    """
    return _prepare(data, height, width, limits, framing)[1]


def load_image(
    data: bytes,
    height: int,
    width: int,
    limits: ImageLimits = ImageLimits(),
    framing: Framing = SQUASH,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decodes image bytes into the model's input pixels.

    JPEG, PNG, WebP, GIF (first frame) and BMP (not RLE) are accepted. Every limit that the
    header decides is checked before any pixel is decoded (``ImageLimits``). Large JPEGs are
    decoded at a reduced scale (``Image.draft``), every mode becomes RGB (transparency composited
    onto white), the result is framed (``framing``: squashed whole, or a central crop) to
    ``height`` x ``width``, and the EXIF orientation, when readable, is applied to it.

    Args:
        data: the encoded image.
        height: the model's input height in pixels.
        width: the model's input width in pixels.
        limits: the decoding limits.
        framing: the model's framing (its manifest says which).
        budget: the request's decoded bytes still left (a batch), spent by this image.

    Returns:
        A ``(height, width, 3)`` uint8 array.

    Raises:
        UnsupportedMediaType: a format outside the allow-list, or an RLE-compressed BMP.
        UnprocessableImage: not an image, truncated, too small, or over a limit.
        PayloadTooLarge: the image would take ``budget`` below zero.
    """
    img, decoded = _prepare(data, height, width, limits, framing)
    if decoded > limits.max_decoded_bytes:
        raise UnprocessableImage(
            f"decoding this {img.format} ({img.mode}, {img.width}x{img.height}) would make "
            f"{decoded // 1_000_000} MB, over the limit of {limits.max_decoded_bytes // 1_000_000}"
            " MB (MAX_DECODED_BYTES)",
            code="decoded_too_large",
        )
    if budget is not None:
        budget.spend(decoded)
    try:
        img.load()
        transpose = _orientation(img)
        if transpose in _SWAPS_SIDES:
            height, width = width, height  # framed in the stored orientation, then turned
        small = _to_rgb(_resize(_resizable(img), width, height, framing))
        if transpose is not None:
            small = small.transpose(transpose)
        return np.asarray(small, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnprocessableImage(f"the image could not be decoded: {exc}") from exc
