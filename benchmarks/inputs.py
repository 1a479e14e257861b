"""The benchmark's inputs (photo-like JPEGs and a PNG), the event that carries them, and statistics.

The images are synthetic but photo-like (smooth gradients plus blurred noise), so their compressed
sizes and decoding costs are those of camera pictures rather than of flat test patterns.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from imgclf.settings import PROJECT_ROOT

EVENT_FILE = PROJECT_ROOT / "events" / "predict_http_api_jpeg.json"


@dataclass(frozen=True)
class BenchInput:
    """One benchmark image: a short name, its Pillow format and its size."""

    name: str
    fmt: str
    width: int
    height: int

    @property
    def media_type(self) -> str:
        return f"image/{self.fmt.lower()}"

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.fmt.lower()}"


INPUTS = (
    BenchInput("jpeg-150x150", "JPEG", 150, 150),
    BenchInput("jpeg-640x480", "JPEG", 640, 480),
    BenchInput("jpeg-1920x1080", "JPEG", 1920, 1080),
    BenchInput("png-640x480", "PNG", 640, 480),
)


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like RGB uint8 pixels: smooth gradients plus blurred noise.

    Args:
        width: width in pixels.
        height: height in pixels.
        seed: the noise seed.

    Returns:
        A ``(height, width, 3)`` uint8 array.
    """
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    base = np.stack([x, y, 1 - x * y], axis=-1) * 180
    noise = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    texture = np.asarray(noise.filter(ImageFilter.GaussianBlur(2)), dtype=np.float64)
    return np.clip(base + (texture - 128) * 0.6 + 40, 0, 255).astype(np.uint8)


def encode(item: BenchInput, seed: int = 0) -> bytes:
    """Draws and encodes one benchmark image (JPEG at quality 90, PNG at Pillow's default)."""
    buffer = io.BytesIO()
    params = {"quality": 90} if item.fmt == "JPEG" else {}
    Image.fromarray(photo(item.width, item.height, seed)).save(buffer, item.fmt, **params)
    return buffer.getvalue()


def write_inputs(folder: Path) -> dict[str, Path]:
    """Writes every benchmark image into ``folder``.

    Returns:
        Input name -> file path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for item in INPUTS:
        paths[item.name] = folder / item.filename
        paths[item.name].write_bytes(encode(item))
    return paths


def predict_event(image: bytes, media_type: str) -> dict[str, Any]:
    """The repository's HTTP API (payload 2.0) ``POST /predict`` event carrying ``image``."""
    event = json.loads(EVENT_FILE.read_text())
    event["body"] = base64.b64encode(image).decode()
    event["headers"]["content-type"] = media_type
    event["headers"]["content-length"] = str(len(image))
    return event


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """p50, p99, mean and count of a list of milliseconds (linear interpolation)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(values, 50)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "n": len(values),
    }
