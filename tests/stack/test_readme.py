"""The README's serving commands, run as written against the local stack on a real ~3 MB photo.

Only what cannot exist locally is substituted: ``$URL`` (the stack's address), ``x.jpg`` (the photo)
and the example internet URLs (photos on the stack's own image server).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from helpers import ROOT, RunningStack

pytestmark = pytest.mark.slow


def serving_commands() -> list[str]:
    """The ``curl`` lines of the README's "Serving API" block, comments cut off."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Serving API", 1)[1]
    block = section.split("```bash\n", 1)[1].split("\n```", 1)[0]
    lines = [re.split(r"\s{2,}#\s", line)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and "curl" in line]


def phone_photo(path: Path) -> Path:
    """A real photo at a phone camera's size: 4032x3024, JPEG quality 92 (about 3 MB)."""
    image = Image.fromarray(skimage.data.astronaut()).resize((4032, 3024), Image.Resampling.BICUBIC)
    # Sensor noise, as a phone photo has: it is what makes such files a few MB.
    noise = np.random.default_rng(0).normal(0, 6, (3024, 4032, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=92)
    return path


def test_every_serving_command_of_the_readme_works_on_a_phone_photo(
    local_stack: RunningStack, sample_data: Path
) -> None:
    photos = sample_data / "readme"
    photos.mkdir(exist_ok=True)
    photo = phone_photo(photos / "x.jpg")
    assert 2_500_000 < photo.stat().st_size < 4_000_000, photo.stat().st_size
    Image.open(photo).resize((640, 480)).save(photos / "2.png")
    hosted = f"{local_stack.static_url}/readme"
    commands = serving_commands()
    assert len(commands) >= 8, commands
    for line in commands:
        command = (
            line.replace("https://example.com/x.jpg", f"{hosted}/x.jpg")
            .replace("https://a/1.jpg", f"{hosted}/x.jpg")
            .replace("https://b/2.png", f"{hosted}/2.png")
            .replace("@x.jpg", f"@{shlex.quote(str(photo))}")
            .replace(" x.jpg", f" {shlex.quote(str(photo))}")
        )
        run = subprocess.run(
            ["bash", "-o", "pipefail", "-c", f"URL={local_stack.api_url}; {command}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, (line, run.stderr)
        # One JSON answer per curl in the line, none of them an error.
        answers = [json.loads(part) for part in re.split(r"(?<=\})(?=\{)", run.stdout.strip())]
        for answer in answers:
            assert "error" not in answer, (line, answer)
            results = answer.get("results", [answer])
            assert all("error" not in r for r in results), (line, answer)
