"""Draws a small, seeded 6-class scene dataset in the Intel Image Classification layout.

    ROOT/seg_train/<class>/<n>.jpg   ROOT/seg_test/<class>/<n>.jpg   ROOT/seg_pred/<n>.jpg

The classes are those of the Intel dataset (buildings, forest, glacier, mountain, sea, street). Each
image is a procedurally drawn scene with random colours, layout, textures, lighting and noise, and
classes share elements on purpose (snow on mountains and glaciers, blue in sea and glacier,
facades in buildings and streets), so the task is learnable but not trivial. The same seed gives
the same files.

Usage: python -m imgclf.pipeline.sample_data --out data/sample [--train-per-class 150] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
SIZE = 150
Colour = tuple[int, int, int]


def _jitter(rng: np.random.Generator, base: Colour, spread: int = 30) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)


def _sky(draw: ImageDraw.ImageDraw, rng: np.random.Generator, horizon: int) -> None:
    top = _jitter(rng, (110, 160, 225), 40)
    bottom = _jitter(rng, (200, 220, 240), 25)
    for y in range(max(horizon, 1)):
        t = y / max(horizon, 1)
        draw.line(
            [(0, y), (SIZE, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )


def _facade(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, x0: int, x1: int, top: int
) -> None:
    wall = _jitter(
        rng, tuple(int(v) for v in rng.choice([(150, 140, 130), (120, 90, 70), (90, 95, 105)]))
    )
    draw.rectangle([x0, top, x1, SIZE], fill=wall)
    win = _jitter(rng, (60, 70, 90), 30)
    step_x, step_y = int(rng.integers(8, 16)), int(rng.integers(9, 18))
    for wx in range(x0 + 3, x1 - 5, step_x):
        for wy in range(top + 4, SIZE - 6, step_y):
            draw.rectangle([wx, wy, wx + step_x // 2, wy + step_y // 2], fill=win)


def buildings(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    _sky(draw, rng, SIZE)
    x = int(rng.integers(-20, 10))
    while x < SIZE:
        width = int(rng.integers(25, 60))
        _facade(draw, rng, x, x + width, int(rng.integers(5, 70)))
        x += width + int(rng.integers(0, 6))
    if rng.random() < 0.3:  # the street in front of the facades, as in the street class
        top = SIZE - int(rng.integers(15, 35))
        draw.rectangle([0, top, SIZE, SIZE], fill=_jitter(rng, (85, 85, 90), 20))


def forest(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    _sky(draw, rng, int(rng.integers(0, 50)))
    if rng.random() < 0.3:  # mountains behind the trees, as in many Intel "forest" photos
        _peaks(draw, rng, (110, 105, 100), 0.3, int(rng.integers(1, 3)))
    draw.rectangle([0, int(rng.integers(90, 130)), SIZE, SIZE], fill=_jitter(rng, (70, 60, 35)))
    for _ in range(int(rng.integers(8, 20))):
        x = int(rng.integers(0, SIZE))
        w = int(rng.integers(3, 9))
        draw.rectangle(
            [x, int(rng.integers(40, 90)), x + w, SIZE], fill=_jitter(rng, (80, 55, 30), 20)
        )
    for _ in range(int(rng.integers(25, 60))):
        cx, cy, r = int(rng.integers(0, SIZE)), int(rng.integers(0, 100)), int(rng.integers(8, 25))
        green = _jitter(rng, (40, 110, 40), 35)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=green)


def _peaks(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, rock: Colour, snow_line: float, count: int
) -> None:
    for _ in range(count):
        cx = int(rng.integers(-20, SIZE + 20))
        height = int(rng.integers(50, 120))
        half = int(rng.integers(35, 80))
        base = SIZE - int(rng.integers(10, 50))
        apex = (cx, base - height)
        draw.polygon([(cx - half, base), apex, (cx + half, base)], fill=_jitter(rng, rock, 25))
        s = snow_line * height
        k = s / height
        draw.polygon(
            [(cx - half * k, apex[1] + s), apex, (cx + half * k, apex[1] + s)],
            fill=_jitter(rng, (240, 245, 250), 10),
        )


def glacier(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    horizon = int(rng.integers(20, 70))
    _sky(draw, rng, horizon + 30)
    if rng.random() < 0.5:
        _peaks(draw, rng, (170, 180, 195), 0.8, int(rng.integers(1, 3)))
    ice = _jitter(rng, (200, 225, 240), 20)
    draw.rectangle([0, horizon, SIZE, SIZE], fill=ice)
    for _ in range(int(rng.integers(6, 18))):
        x, y = int(rng.integers(0, SIZE)), int(rng.integers(horizon, SIZE))
        draw.line(
            [(x, y), (x + int(rng.integers(-40, 40)), y + int(rng.integers(5, 30)))],
            fill=_jitter(rng, (90, 140, 180), 25),
            width=int(rng.integers(1, 3)),
        )


def mountain(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    _sky(draw, rng, SIZE)
    rock = tuple(int(v) for v in rng.choice([(110, 100, 90), (95, 105, 120), (130, 115, 95)]))
    _peaks(draw, rng, rock, float(rng.uniform(0.0, 0.6)), int(rng.integers(2, 5)))
    foreground = rng.random()
    if foreground < 0.25:  # a lake in front: water, as in the sea class
        draw.rectangle(
            [0, SIZE - int(rng.integers(20, 45)), SIZE, SIZE], fill=_jitter(rng, (40, 95, 145))
        )
    elif foreground < 0.7:
        draw.rectangle(
            [0, SIZE - int(rng.integers(10, 35)), SIZE, SIZE], fill=_jitter(rng, (70, 100, 50))
        )


def sea(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    horizon = int(rng.integers(30, 90))
    _sky(draw, rng, horizon)
    if rng.random() < 0.3:  # a distant coast with peaks on the horizon
        for _ in range(int(rng.integers(1, 4))):
            cx, half, height = (
                int(rng.integers(0, SIZE)),
                int(rng.integers(20, 50)),
                int(rng.integers(10, 30)),
            )
            peak = [(cx - half, horizon), (cx, horizon - height), (cx + half, horizon)]
            draw.polygon(peak, fill=_jitter(rng, (120, 120, 130), 25))
    water = _jitter(rng, (30, 90, 150), 30)
    draw.rectangle([0, horizon, SIZE, SIZE], fill=water)
    crest = _jitter(rng, (170, 200, 225), 25)
    amplitude, period = float(rng.uniform(1, 4)), float(rng.uniform(10, 30))
    for y in range(horizon + 4, SIZE, int(rng.integers(5, 11))):
        phase = rng.uniform(0, 2 * np.pi)
        points = [
            (x, y + amplitude * np.sin(x / period * 2 * np.pi + phase)) for x in range(0, SIZE, 3)
        ]
        draw.line(points, fill=crest, width=1)
    if rng.random() < 0.4:
        draw.rectangle(
            [0, SIZE - int(rng.integers(10, 30)), SIZE, SIZE], fill=_jitter(rng, (210, 190, 140))
        )


def street(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    _sky(draw, rng, SIZE)
    vanish_x, vanish_y = int(rng.integers(50, 100)), int(rng.integers(40, 80))
    _facade(draw, rng, -5, vanish_x - int(rng.integers(20, 40)), int(rng.integers(10, 60)))
    _facade(draw, rng, vanish_x + int(rng.integers(20, 40)), SIZE + 5, int(rng.integers(10, 60)))
    road = _jitter(rng, (85, 85, 90), 20)
    draw.polygon(
        [(vanish_x - 4, vanish_y), (vanish_x + 4, vanish_y), (SIZE + 40, SIZE), (-40, SIZE)],
        fill=road,
    )
    for t in np.linspace(0.15, 0.95, 6):
        y0 = vanish_y + (SIZE - vanish_y) * t
        y1 = y0 + (SIZE - vanish_y) * 0.06
        draw.line([(vanish_x, y0), (vanish_x, y1)], fill=(235, 230, 200), width=max(1, int(4 * t)))
    for _ in range(int(rng.integers(0, 3))):
        x, y = int(rng.integers(10, 120)), int(rng.integers(110, 140))
        draw.rectangle(
            [x, y, x + int(rng.integers(15, 30)), y + 10], fill=_jitter(rng, (150, 30, 30), 80)
        )


PAINTERS: dict[str, Callable[[ImageDraw.ImageDraw, np.random.Generator], None]] = {
    "buildings": buildings,
    "forest": forest,
    "glacier": glacier,
    "mountain": mountain,
    "sea": sea,
    "street": street,
}


def draw_scene(label: str, rng: np.random.Generator) -> Image.Image:
    """Draws one 150x150 scene of class ``label`` with random lighting, blur and sensor noise."""
    img = Image.new("RGB", (SIZE, SIZE))
    PAINTERS[label](ImageDraw.Draw(img), rng)
    if rng.random() < 0.15:  # something in the way: a sign, a wall, a passing vehicle
        x, y = int(rng.integers(0, 110)), int(rng.integers(0, 110))
        w, h = int(rng.integers(30, 70)), int(rng.integers(30, 70))
        ImageDraw.Draw(img).rectangle([x, y, x + w, y + h], fill=_jitter(rng, (128, 128, 128), 120))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.4:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.8))))
    pixels = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.6, 1.3)
    tint = rng.normal(0.0, 12.0, size=3)
    noise = rng.normal(0.0, rng.uniform(4, 22), size=pixels.shape)
    pixels = np.clip(pixels * gain + tint + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_dataset(
    out: Path, train_per_class: int, test_per_class: int, pred_count: int, seed: int
) -> dict[str, int]:
    """Writes the dataset under ``out`` and returns the number of files per split.

    Args:
        out: the dataset root (created; existing files of the same names are overwritten).
        train_per_class: images per class in seg_train.
        test_per_class: images per class in seg_test.
        pred_count: unlabelled images in seg_pred.
        seed: the seed; the same seed and sizes give byte-identical files.

    Returns:
        ``{"seg_train": n, "seg_test": n, "seg_pred": n}``.
    """
    rng = np.random.default_rng(seed)
    counts = {"seg_train": 0, "seg_test": 0, "seg_pred": 0}
    for split, per_class in (("seg_train", train_per_class), ("seg_test", test_per_class)):
        for label in CLASSES:
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw_scene(label, rng).save(
                    folder / f"{i:05d}.jpg", quality=int(rng.integers(70, 95))
                )
                counts[split] += 1
    pred = out / "seg_pred"
    pred.mkdir(parents=True, exist_ok=True)
    for i in range(pred_count):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        draw_scene(label, rng).save(pred / f"{i:05d}.jpg", quality=85)
        counts["seg_pred"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.pipeline.sample_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/sample"), help="dataset root to write"
    )
    parser.add_argument(
        "--train-per-class", type=int, default=150, help="seg_train images per class"
    )
    parser.add_argument("--test-per-class", type=int, default=50, help="seg_test images per class")
    parser.add_argument("--pred", type=int, default=30, help="unlabelled seg_pred images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    counts = make_dataset(args.out, args.train_per_class, args.test_per_class, args.pred, args.seed)
    print(f"wrote {counts} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
