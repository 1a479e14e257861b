"""Peak memory and time of PredictFunction on the heaviest images its limits admit.

For each image a fresh process imports ``lambda_func`` (serving the bundled model), answers one
HTTP API event that carries the image, and reports its peak resident set size: what must fit in
the function's memory (template.yaml's PredictMemorySize explains its default with these figures).

    .venv/bin/python scripts/measure_predict_memory.py     # about 30 s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imgclf.settings import ImageLimits  # noqa: E402

# Runs in the fresh process: argv = image path, content type, repository root.
CHILD = """
import base64, json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
import lambda_func
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
event = json.loads(Path(sys.argv[3], "events", "predict_http_api_jpeg.json").read_text())
data = Path(sys.argv[1]).read_bytes()
event["body"] = base64.b64encode(data).decode()
event["headers"].update({"content-type": sys.argv[2], "content-length": str(len(data))})
started = time.perf_counter()
answer = lambda_func.lambda_handler(event, None)
print(json.dumps({
    "status": answer["statusCode"],
    "seconds": time.perf_counter() - started,
    "loaded_mb": loaded / 1024,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


# (file name, content type, description): drawn by write_images.
IMAGES = (
    ("rgb.jpg", "image/jpeg", "JPEG RGB"),
    ("rgb.png", "image/png", "PNG RGB 8-bit"),
    ("la.png", "image/png", "PNG LA (grey + alpha)"),
    ("grey16.png", "image/png", "PNG grey 16-bit"),
)


def write_images(folder: Path, pixels: int) -> None:
    """Writes ``IMAGES`` with ``pixels`` pixels each: 4:3 gradients, tiny on the wire, huge
    once decoded."""
    width = int((pixels * 4 / 3) ** 0.5)
    ramp = np.linspace(0, 1, width)[None, :].repeat(pixels // width, 0)
    eight = (ramp * 255).astype(np.uint8)
    rgb = Image.fromarray(np.stack([eight] * 3, axis=-1))
    rgb.save(folder / "rgb.jpg", quality=80)
    rgb.save(folder / "rgb.png")
    Image.fromarray(eight).convert("LA").save(folder / "la.png")
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(folder / "grey16.png")


def main() -> int:
    """Prints one line per image: size on the wire, status, seconds, peak RSS."""
    if sys.argv[1:2] == ["--write-images"]:
        write_images(Path(sys.argv[2]), ImageLimits().max_pixels)
        return 0
    env = {**os.environ, "MODEL_REGISTRY_URI": "", "POWERTOOLS_LOG_LEVEL": "ERROR"}
    print(f"images of {ImageLimits().max_pixels / 1e6:.0f} MP (MAX_IMAGE_PIXELS), one process each")
    with tempfile.TemporaryDirectory() as tmp:
        # Drawn in another process: Linux keeps a process's peak RSS across exec, so children of
        # a parent that held the big arrays would all report the parent's peak.
        subprocess.run([sys.executable, __file__, "--write-images", tmp], check=True)
        for file, content_type, name in IMAGES:
            path = Path(tmp) / file
            command = [sys.executable, "-c", CHILD, str(path), content_type, str(ROOT)]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{name:<22} {path.stat().st_size / 1e3:>7.0f} kB  HTTP {figures['status']}  "
                f"{figures['seconds']:5.2f} s  peak {figures['peak_mb']:5.0f} MB "
                f"(after import + model load: {figures['loaded_mb']:.0f} MB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
