"""The one preprocessing function: formats, modes, orientation, limits, and train/serve parity."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fuzz import craft
from helpers import encode, scene_image
from imgclf.errors import PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
from imgclf.preprocess import (
    CENTER_CROP,
    SQUASH,
    DecodeBudget,
    Framing,
    decoded_bytes,
    load_image,
)
from imgclf.settings import ImageLimits


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_every_allowed_format_decodes_to_rgb_uint8(fmt: str) -> None:
    data = encode(scene_image("sea"), fmt)
    pixels = load_image(data, 150, 150)
    assert pixels.shape == (150, 150, 3)
    assert pixels.dtype == np.uint8


def test_resizes_to_the_requested_height_and_width() -> None:
    pixels = load_image(encode(scene_image("sea", size=(640, 480))), 96, 128)
    assert pixels.shape == (96, 128, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = scene_image("glacier").convert("RGBA" if mode == "LA" else mode)
    if mode == "LA":
        img = img.convert("LA")
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels = load_image(encode(img, fmt), 150, 150)
    assert pixels.shape == (150, 150, 3)


def test_transparent_pixels_are_composited_on_white() -> None:
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    pixels = load_image(encode(img, "PNG"), 32, 32)
    assert (pixels == 255).all()


def test_transparency_survives_the_resize_that_comes_before_compositing() -> None:
    # Large RGBA/LA images are shrunk before they are composited: the result must be the same
    # picture, a red square on white, not a dark fringe from unpremultiplied alpha.
    img = Image.new("RGBA", (600, 600), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (150, 150, 450, 450))
    pixels = load_image(encode(img, "PNG"), 60, 60).astype(int)
    assert (pixels[:10, :10] == 255).all()  # transparent corner: white
    assert (pixels[25:35, 25:35] == [255, 0, 0]).all()  # opaque centre: red
    assert (pixels[..., 0] >= 254).all()  # edges blend red and white: never a dark fringe


def test_exif_orientation_is_applied() -> None:
    # The picture: 200 wide, 100 tall, black left half, white right half. The camera stored it
    # turned 90 degrees counter-clockwise with orientation 6 ("turn 90 clockwise to display").
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 100:] = 255
    stored = Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = load_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95), 100, 200)
    left, right = pixels[:, :80].mean(), pixels[:, 120:].mean()
    assert left < 40 and right > 215, (left, right)


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((0, 0, 255), (255, 0, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    pixels = load_image(data, 40, 40).astype(int)
    assert pixels[..., 2].mean() > 200 and pixels[..., 0].mean() < 50


def test_large_jpeg_draft_decode_matches_full_decode_closely() -> None:
    big = scene_image("street", size=(1920, 1080))
    data = encode(big, "JPEG", quality=92)
    fast = load_image(data, 150, 150).astype(np.float32)
    full = np.asarray(Image.open(__import__("io").BytesIO(data)).resize((150, 150), Image.BILINEAR))
    assert np.abs(fast - full).mean() < 6.0  # same picture; only the scaling path differs


def test_unsupported_format_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="TIFF"):
        load_image(encode(scene_image(), "TIFF"), 150, 150)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_garbage_is_422(data: bytes) -> None:
    with pytest.raises(UnprocessableImage):
        load_image(data, 150, 150)


def test_truncated_jpeg_is_422(jpeg_bytes: bytes) -> None:
    with pytest.raises(UnprocessableImage):
        load_image(jpeg_bytes[: len(jpeg_bytes) // 3], 150, 150)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # 20000 x 20000 pixels of one colour compress to a few hundred KB of PNG.
    bomb = encode(Image.new("L", (20_000, 20_000)), "PNG", optimize=True)
    with pytest.raises(UnprocessableImage) as info:
        load_image(bomb, 150, 150, ImageLimits(max_pixels=40_000_000))
    assert info.value.code == "image_too_large"


def test_too_small_is_422() -> None:
    with pytest.raises(UnprocessableImage) as info:
        load_image(encode(Image.new("RGB", (8, 8)), "PNG"), 150, 150)
    assert info.value.code == "image_too_small"


# ---- framing (the model's, from its manifest) ----------------------------------------------
def test_a_central_crop_keeps_the_central_square_of_the_shorter_side() -> None:
    # 400x200, green in the middle 200 columns: the 0.875 crop is x in [112.5, 287.5), all green.
    pixels = np.zeros((200, 400, 3), np.uint8)
    pixels[..., 0] = 255
    pixels[:, 100:300] = (0, 255, 0)
    png = encode(Image.fromarray(pixels), "PNG")
    framed = load_image(png, 224, 224, framing=CENTER_CROP)
    assert framed.shape == (224, 224, 3) and framed.dtype == np.uint8
    np.testing.assert_array_equal(framed, np.broadcast_to((0, 255, 0), framed.shape))
    # The whole image, squashed, keeps the red sides.
    assert (load_image(png, 224, 224)[:, 0] == (255, 0, 0)).all()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P"])
def test_a_central_crop_gives_rgb_for_any_mode(mode: str) -> None:
    image = scene_image("sea", size=(300, 200)).convert(mode)
    framed = load_image(encode(image, "PNG"), 240, 240, framing=CENTER_CROP)
    assert framed.shape == (240, 240, 3) and framed.dtype == np.uint8


def test_framings_are_named_as_manifests_record_them() -> None:
    assert (SQUASH.name, CENTER_CROP.name) == ("squash_bilinear", "crop_0.875_bicubic")
    assert Framing.parse(CENTER_CROP.name) == CENTER_CROP and Framing.parse(SQUASH.name) == SQUASH
    for name in ("crop_1.5_bicubic", "squash_lanczos", "crop", "crop_0.8750_bicubic"):
        with pytest.raises(ValueError, match="framing"):
            Framing.parse(name)


# ---- hostile input: limits checked before decoding, metadata that never refuses an image -------
def test_palette_transparency_is_composited_like_the_rgba_image() -> None:
    # GIVEN a palette image whose colours have every kind of alpha (tRNS bytes) and one index
    # transparent by number (GIF style)
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 256, size=(48, 64), dtype=np.uint8)
    img = Image.fromarray(indices, "P")
    img.putpalette(rng.integers(0, 256, size=768, dtype=np.uint8).tobytes())
    for transparency in (bytes(rng.integers(0, 256, size=200, dtype=np.uint8)), 7):
        data = encode(img, "PNG", transparency=transparency)
        # WHEN it is loaded at its own size (no resampling)
        pixels = load_image(data, 48, 64)
        # THEN it is exactly the full RGBA image composited on white, as before the palette trick
        rgba = Image.open(io.BytesIO(data)).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        expected = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_orientation_is_applied_after_framing_on_a_non_square_input(orientation: int) -> None:
    # GIVEN a 120 x 60 picture (red top-left quarter) stored as each EXIF orientation asks
    upright = np.zeros((60, 120, 3), np.uint8)
    upright[:30, :60] = (255, 0, 0)
    stored = Image.fromarray(upright)
    # The stored pixels are the upright picture transformed by the inverse of each orientation.
    inverse = {2: 0, 3: 3, 4: 1, 5: 5, 6: 2, 7: 6, 8: 4}
    if orientation in inverse:
        stored = stored.transpose(Image.Transpose(inverse[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    # WHEN loaded for a 30 x 60 (height x width) model input
    pixels = load_image(encode(stored, "PNG", exif=exif.tobytes()), 30, 60).astype(int)
    # THEN the picture is upright: red top-left, black elsewhere
    assert pixels.shape == (30, 60, 3)
    assert (pixels[:12, :25, 0] > 200).all() and (pixels[18:, 35:, 0] < 50).all(), orientation


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize(
    "exif",
    [b"\xa5" * 40, b"MM\x00*\x00\x00\x00\x08\xff\xff", b"II*\x00\xff\xff\xff\x7f", b"Exif\x00\x00"],
)
def test_unreadable_exif_never_refuses_the_image(fmt: str, exif: bytes) -> None:
    data = encode(scene_image("sea"), fmt, exif=exif)
    assert load_image(data, 150, 150).shape == (150, 150, 3)


def test_a_png_with_garbage_exif_decodes() -> None:
    # The robustness run's case: an eXIf chunk of garbage was a 422, the same bytes in a JPEG a 200.
    data = craft.png_insert(encode(scene_image(), "PNG"), craft.png_chunk(b"eXIf", b"\xa5" * 64))
    assert load_image(data, 150, 150).shape == (150, 150, 3)


def test_jpeg_scans_are_counted_before_decoding() -> None:
    limits = ImageLimits(max_jpeg_scans=20)
    assert load_image(craft.progressive_jpeg(64, 64, 20), 32, 32, limits).shape == (32, 32, 3)
    with pytest.raises(UnprocessableImage) as info:
        load_image(craft.progressive_jpeg(64, 64, 21), 32, 32, limits)
    assert info.value.code == "too_many_scans" and "MAX_JPEG_SCANS" in info.value.message


def test_the_robustness_runs_many_scan_jpeg_is_refused_at_once() -> None:
    # 5,000 empty scans of 6300 x 6300 took 18 s of CPU in the decoder.
    data = craft.progressive_jpeg(6300, 6300, 5000)
    started = time.process_time()
    with pytest.raises(UnprocessableImage) as info:
        load_image(data, 150, 150)
    assert info.value.code == "too_many_scans"
    assert time.process_time() - started < 0.5


def test_a_thumbnails_scans_are_not_the_images() -> None:
    # An EXIF APP1 segment holding a JPEG with 30 scans: skipped by its length, as libjpeg does.
    thumbnail = craft.progressive_jpeg(16, 16, 30)
    data = craft.jpeg_with_app1(encode(scene_image()), b"Exif\x00\x00" + thumbnail)
    assert load_image(data, 150, 150, ImageLimits(max_jpeg_scans=5)).shape == (150, 150, 3)


def _stray_bytes(data: bytes, at: int, byte: bytes, count: int) -> bytes:
    """``data`` with ``count`` bytes that start no block put at ``at`` (Pillow skips them one at
    a time in Python)."""
    return data[:at] + byte * count + data[at:]


@pytest.mark.parametrize(
    "make",
    [
        lambda n: craft.jpeg_with_segments(encode(scene_image()), n),
        lambda n: craft.png_insert(encode(scene_image(), "PNG"), craft.png_chunk(b"prVt", b"") * n),
        lambda n: craft.png_insert(
            encode(scene_image(), "PNG"), craft.png_chunk(b"prVt", b"") * n, after_idat=True
        ),
        lambda n: craft.gif((64, 64), (64, 64), extensions=craft.gif_comment_blocks(n)),
        lambda n: _stray_bytes(craft.gif((64, 64), (64, 64)), 19, b"\x00", n),
        lambda n: _stray_bytes(encode(scene_image()), 20, b"\xff", n),  # after APP0 (JFIF)
    ],
    ids=[
        "jpeg-markers",
        "png-chunks",
        "png-chunks-after-idat",
        "gif-blocks",
        "gif-stray",
        "jpeg-fill",
    ],
)
def test_chunks_parsed_in_python_are_counted_before_pillow_reads_them(make: Any) -> None:
    limits = ImageLimits(max_image_chunks=500)
    assert load_image(make(400), 32, 32, limits).shape == (32, 32, 3)
    with pytest.raises(UnprocessableImage) as info:
        load_image(make(600), 32, 32, limits)
    assert info.value.code == "too_many_chunks"


@pytest.mark.parametrize(
    "data",
    [
        craft.webp_lossless_constant(6300, 6300),  # 34 bytes: measured 665 MB to decode
        craft.webp_animated((6300, 6300), (16, 16)),  # measured 671-679 MB
    ],
    ids=["lossless-34-bytes", "animated-canvas"],
)
def test_a_webp_is_bounded_by_its_canvas(data: bytes) -> None:
    with pytest.raises(UnprocessableImage) as info:
        load_image(data, 150, 150)
    assert info.value.code == "decoded_too_large" and "MAX_DECODED_BYTES" in info.value.message


def test_decoded_bytes_follow_the_format_and_mode() -> None:
    # GIVEN 1000 x 1000 files of each kind; THEN the estimate counts what decoding makes
    million = 1_000_000
    rows = 1000 * 1001  # a PNG's inflated rows: a filter byte, then the samples
    cases = {
        "palette+tRNS PNG": (craft.png_palette_transparent(1000, 1000), 5 * million + rows),
        "RGBA PNG": (craft.png_flat(1000, 1000, 6), 8 * million + 1000 * 4001),
        "16-bit RGBA PNG": (craft.png_flat(1000, 1000, 6, bit_depth=16), 8 * million + 1000 * 8001),
        "grey PNG": (craft.png_flat(1000, 1000, 0), million + rows),
        "WebP": (craft.webp_lossless_constant(1000, 1000), 16 * million),
        "GIF": (craft.gif((1000, 1000), (16, 16)), 5 * million),
    }
    for name, (data, expected) in cases.items():
        assert decoded_bytes(data, 150, 150) == expected, name
    # A progressive JPEG: its coefficients (2 bytes each), once more per ten scans, and the
    # image at the scale it is decoded at (1000 / 4 = 250 for 150 x 150).
    coefficients = 1000 * 1000 * 2
    assert decoded_bytes(craft.progressive_jpeg(1000, 1000, 25), 150, 150) == (
        coefficients * 3 + 250 * 250 * 1
    )


def test_a_40_megapixel_palette_png_with_transparency_is_admitted() -> None:
    # It peaked at 702 MB when expanded to RGBA at full size; now its P and RGB images: 5 bytes
    # a pixel, with its inflated rows, within MAX_DECODED_BYTES.
    data = craft.png_palette_transparent(6300, 6300)
    assert decoded_bytes(data, 150, 150) <= ImageLimits().max_decoded_bytes
    assert load_image(data, 150, 150).shape == (150, 150, 3)


def test_rle_bmp_is_refused_unread() -> None:
    # Pillow's RLE decoder is Python: a 26 kB file of 6300 x 6300 took 9.5 s.
    data = craft.bmp_rle8_row_ends(6300, 6300)
    started = time.process_time()
    with pytest.raises(UnsupportedMediaType, match="RLE"):
        load_image(data, 150, 150)
    assert time.process_time() - started < 0.5


def test_a_decode_budget_is_spent_image_by_image() -> None:
    data = craft.png_flat(100, 100, 2)
    cost = decoded_bytes(data, 32, 32)
    budget = DecodeBudget(2 * cost + 1)
    for _ in range(2):
        load_image(data, 32, 32, budget=budget)
    with pytest.raises(PayloadTooLarge) as info:
        load_image(data, 32, 32, budget=budget)
    assert info.value.code == "batch_decoded_too_large" and budget.left == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "PPM"])
def test_every_short_prefix_is_a_clean_refusal(fmt: str) -> None:
    # The fuzz run's find: some plugins' signature checks raise on a head of a few bytes.
    data = encode(scene_image(), fmt)
    for n in range(1, 48):
        with pytest.raises((UnprocessableImage, UnsupportedMediaType)):
            load_image(data[:n], 32, 32)
