"""What capturing costs a request: the handler's latency, CAPTURE_FRACTION=0 beside =1.

    python -m benchmarks.capture                   # = make bench-capture
    python -m benchmarks.capture --requests 100 --model scene

moto's S3 server runs on loopback in a process of its own (so its Python does not share this
process's interpreter lock with the handler's; it stands in for S3, whose PUTs from Lambda take
longer: see the README); two routers (``build_router``, the
handler's own code) answer the same HTTP API events, one capturing nothing, one capturing every
answer (its image, record and request-id pointer: three PUTs, ``imgclf.captures.write_capture``),
alternating request by request so that both see the same machine load. Every request sends a
different image (``docs/examples/cat.jpg``, 640x480, with one pixel changed), as real traffic
does: each capture stores a new image. The handler's time is ``Router.handle`` from the event to
the response, as in ``make bench``; logs and embedded metrics go to a buffer, not the terminal.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from imgclf.settings import PROJECT_ROOT

PHOTO = PROJECT_ROOT / "docs" / "examples" / "cat.jpg"
EVENT = PROJECT_ROOT / "events" / "predict_http_api_jpeg.json"
DEFAULT_OUT = PROJECT_ROOT / "reports" / "bench-capture.json"


def variants(count: int) -> list[bytes]:
    """``count`` JPEGs of the photo, each with one pixel of its own (distinct sha256s)."""
    from PIL import Image

    with Image.open(PHOTO) as opened:
        base = opened.convert("RGB")
    images = []
    for i in range(count):
        image = base.copy()
        image.putpixel((i % image.width, (i // image.width) % image.height), (i % 256, 0, 255))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run(requests: int, model: str, warmup: int) -> dict[str, Any]:
    """Measures both routers; returns the figures."""
    import boto3
    from aws_lambda_powertools import Logger, Metrics

    from imgclf.serving.app import build_router
    from imgclf.settings import ServeSettings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                break
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("moto's server did not start")
        time.sleep(0.1)
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    bucket = "bench-captures"
    boto3.client("s3").create_bucket(Bucket=bucket)
    sink = io.StringIO()
    logger = Logger(service="bench", stream=sink, level="WARNING")
    routers = {}
    for fraction in (0.0, 1.0):
        settings = ServeSettings(model_name=model, data_bucket=bucket, capture_fraction=fraction)
        routers[fraction] = build_router(settings, logger, Metrics(namespace="bench"))
    template = json.loads(EVENT.read_text())
    template["rawQueryString"], template["queryStringParameters"] = "", {}
    images = variants(2 * (requests + warmup))
    context = SimpleNamespace(aws_request_id="bench", function_name="PredictFunction")
    times: dict[float, list[float]] = {0.0: [], 1.0: []}
    try:
        with contextlib.redirect_stdout(sink):
            for i in range(requests + warmup):
                for j, fraction in enumerate((0.0, 1.0) if i % 2 == 0 else (1.0, 0.0)):
                    event = copy.deepcopy(template)
                    event["requestContext"]["requestId"] = f"bench-{i}-{int(fraction)}"
                    event["body"] = base64.b64encode(images[2 * i + j]).decode()
                    started = time.perf_counter()
                    response = routers[fraction].handle(event, context)
                    elapsed = (time.perf_counter() - started) * 1000
                    routers[fraction].metrics.clear_metrics()
                    if response["statusCode"] != 200:
                        raise RuntimeError(f"request failed: {response['body']}")
                    if i >= warmup:
                        times[fraction].append(elapsed)
                sink.seek(0)
                sink.truncate()
        stored = sum(
            1
            for page in boto3.client("s3")
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix="captures/requests/")
            for _ in page.get("Contents", [])
        )
    finally:
        server.terminate()
        server.wait(10)
    if stored != requests + warmup:
        raise RuntimeError(f"{stored} of {requests + warmup} answers were captured")
    off, on = times[0.0], times[1.0]
    return {
        "model": model,
        "requests": requests,
        "image": f"{PHOTO.relative_to(PROJECT_ROOT)} (640x480 JPEG, a pixel changed per request)",
        "captured": stored,
        "p50_ms": {"off": statistics.median(off), "on": statistics.median(on)},
        "p90_ms": {"off": percentile(off, 0.9), "on": percentile(on, 0.9)},
        "mean_ms": {"off": statistics.fmean(off), "on": statistics.fmean(on)},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="measured requests per side")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests per side")
    parser.add_argument("--model", default="imagenet", help="a bundled model (model/<name>/)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(args.requests, args.model, args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    p50, p90, mean = figures["p50_ms"], figures["p90_ms"], figures["mean_ms"]
    print(
        f"handler latency, {figures['model']}, {figures['requests']} requests each, "
        f"moto S3 on loopback ({figures['captured']} captures stored)"
    )
    print(f"{'':<22}{'CAPTURE_FRACTION=0':>20}{'CAPTURE_FRACTION=1':>20}{'overhead':>12}")
    for name, row in (("p50", p50), ("p90", p90), ("mean", mean)):
        print(
            f"{name + ' (ms)':<22}{row['off']:>20.2f}{row['on']:>20.2f}"
            f"{row['on'] - row['off']:>+12.2f}"
        )
    print(f"load average {figures['machine']['load_average']:.1f}; figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
