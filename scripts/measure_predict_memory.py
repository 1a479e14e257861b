"""Peak memory and time of PredictFunction on the dearest images its limits admit.

For each image a fresh process imports ``lambda_func`` (serving the bundled model), answers one
HTTP API event that carries the image, and reports its peak resident set size. The images are the
fuzz run's dearest admitted ones (``fuzz.cases``: each kind at the largest size MAX_IMAGE_PIXELS
and MAX_DECODED_BYTES let through), so this is a cross-check, in whole fresh processes, of the
peak ``make fuzz`` measures in forked ones (docs/fuzz.md), which template.yaml's minimum
PredictMemorySize comes from.

    .venv/bin/python scripts/measure_predict_memory.py     # about a minute
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz import craft  # noqa: E402
from fuzz.cases import largest_admitted  # noqa: E402
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
started = time.process_time()
answer = lambda_func.lambda_handler(event, None)
print(json.dumps({
    "status": answer["statusCode"],
    "seconds": time.process_time() - started,
    "loaded_mb": loaded / 1024,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""

# name -> (content type, the image at side n).
IMAGES: dict[str, tuple[str, Callable[[int], bytes]]] = {
    "WebP lossless": ("image/webp", lambda n: craft.webp_lossless_constant(n, n)),
    "WebP animated canvas": ("image/webp", lambda n: craft.webp_animated((n, n), (16, 16))),
    "PNG RGBA 16-bit, Paeth": (
        "image/png",
        lambda n: craft.png_flat(n, n, 6, bit_depth=16, row_filter=4),
    ),
    "PNG RGBA 8-bit": ("image/png", lambda n: craft.png_flat(n, n, 6)),
    "PNG grey+alpha": ("image/png", lambda n: craft.png_flat(n, n, 4)),
    "PNG palette + tRNS": ("image/png", lambda n: craft.png_palette_transparent(n, n)),
    "PNG grey 16-bit": ("image/png", lambda n: craft.png_flat(n, n, 0, bit_depth=16)),
    "GIF": ("image/gif", lambda n: craft.gif((n, n), (n, n))),
    "JPEG, 100 scans": ("image/jpeg", lambda n: craft.progressive_jpeg(n, n, 100)),
}


def main() -> int:
    """Prints one line per image: its size, status, CPU seconds and peak RSS."""
    limits = ImageLimits()
    env = {**os.environ, "MODEL_REGISTRY_URI": "", "POWERTOOLS_LOG_LEVEL": "ERROR"}
    side = int(limits.max_pixels**0.5)
    print(
        f"the largest each kind may be (MAX_IMAGE_PIXELS {limits.max_pixels:,}, MAX_DECODED_BYTES"
    )
    print(f"{limits.max_decoded_bytes:,}), one fresh process each")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (content_type, make) in IMAGES.items():
            n = largest_admitted(make, limits, side)
            path = Path(tmp) / "image"
            path.write_bytes(make(n))
            command = [sys.executable, "-c", CHILD, str(path), content_type, str(ROOT)]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"{name:<24} {n}x{n} {path.stat().st_size / 1e3:>7.0f} kB  HTTP "
                f"{figures['status']}  {figures['seconds']:5.2f} s CPU  peak "
                f"{figures['peak_mb']:4.0f} MB (after import + model load: "
                f"{figures['loaded_mb']:.0f} MB)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
