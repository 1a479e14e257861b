"""The one preprocessing function: formats, modes, orientation, limits, and train/serve parity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import encode, scene_image
from imgclf.errors import UnprocessableImage, UnsupportedMediaType
from imgclf.preprocess import CENTER_CROP, SQUASH, Framing, load_image
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
