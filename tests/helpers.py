"""Helpers the tests share (fixtures are in conftest.py): paths, images, events, servers, the stack.

Test modules import from here, never from each other.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

import boto3
import numpy as np
import pytest
from PIL import Image

from imgclf.pipeline import sample_data

ROOT = Path(__file__).resolve().parent.parent
# The Lambda context a handler sees in these tests.
CONTEXT = SimpleNamespace(aws_request_id="lambda-request-1", function_name="PredictFunction")


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encodes a Pillow image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def scene_image(
    label: str = "forest", seed: int = 0, size: tuple[int, int] | None = None
) -> Image.Image:
    """One drawn sample scene (150x150, or resized to ``size``)."""
    img = sample_data.draw_scene(label, np.random.default_rng(seed))
    return img.resize(size) if size else img


def handle(router: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Calls a router built for a test, then flushes its metrics as ``lambda_handler``'s decorator
    does after every invocation (Powertools keeps dimensions until a flush)."""
    try:
        return router.handle(event, CONTEXT)
    finally:
        router.metrics.clear_metrics()


# ---- events (events/, generated with ``sam local generate-event``) ------------------------------
def load_event(name: str) -> dict[str, Any]:
    """Loads one event of events/ (generated with ``sam local generate-event``)."""
    return json.loads((ROOT / "events" / f"{name}.json").read_text())


def s3_put_event(bucket: str, key: str, etag: str, size: int) -> dict[str, Any]:
    """The event S3 sends for a PUT (events/s3_put.json), the key URL-encoded as S3 does it."""
    event = load_event("s3_put")
    record = event["Records"][0]["s3"]
    record["object"].update(key=quote_plus(key, safe="/"), eTag=etag.strip('"'), size=size)
    record["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    return event


def upload(bucket: str, key: str, data: bytes) -> dict[str, Any]:
    """Uploads an object (to wherever boto3 points) and returns the S3 event announcing it."""
    etag = boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)["ETag"]
    return s3_put_event(bucket, key, etag, len(data))


def with_body(
    event: dict[str, Any], body: bytes, content_type: str, *, as_base64: bool = True
) -> dict[str, Any]:
    """A copy of ``event`` carrying ``body`` (base64 or as text) with that Content-Type."""
    event = copy.deepcopy(event)
    headers = {k: v for k, v in event["headers"].items() if k.lower() != "content-type"}
    event["headers"] = {**headers, "content-type": content_type}
    event.pop("multiValueHeaders", None)
    event["body"] = base64.b64encode(body).decode() if as_base64 else body.decode()
    event["isBase64Encoded"] = as_base64
    return event


def with_json(event: dict[str, Any], value: Any, *, as_base64: bool = False) -> dict[str, Any]:
    return with_body(event, json.dumps(value).encode(), "application/json", as_base64=as_base64)


def with_query(event: dict[str, Any], **query: str) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["queryStringParameters"] = query
    event.pop("multiValueQueryStringParameters", None)
    return event


def picture(size: tuple[int, int] = (150, 150), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """An encoded picture with some structure (gradients), of any size, format and mode."""
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


# ---- an origin server on loopback (URL inputs) ---------------------------------------------------
FETCH_BODY = b"\xff\xd8 not really a jpeg, the fetcher does not care " * 10


class Handler(BaseHTTPRequestHandler):
    """Routes of the test origin server; ``server.seen`` records (path, Host header)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Transfer-Encoding" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.server.seen.append((self.path, self.headers.get("Host")))
        path, _, query = self.path.partition("?")
        if path == "/image":
            self._send(200, FETCH_BODY, {"Content-Type": "image/jpeg"})
        elif path == "/redirect":
            self._send(302, headers={"Location": query.removeprefix("to=")})
        elif path == "/loop":
            self._send(301, headers={"Location": "/loop"})
        elif path == "/no-location":
            self._send(302)
        elif path == "/missing":
            self._send(404, b"nope")
        elif path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
        elif path == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client hangs up once it has seen enough
                for _ in range(100):
                    self.wfile.write(b"4000\r\n" + b"y" * 0x4000 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
        elif path == "/slow-headers":
            time.sleep(3)
            self._send(200, FETCH_BODY)
        elif path == "/drip-headers":
            # Each byte arrives well within any per-read timeout; only a total deadline stops it.
            with contextlib.suppress(OSError):
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(40):
                    self.wfile.write(b"X-Drip: 1\r\n")
                    self.wfile.flush()
                    time.sleep(0.1)
        elif path == "/drip-body":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(100):
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.1)
        else:
            self._send(500)


@contextlib.contextmanager
def serve(
    host: str = "127.0.0.1", handler: type[Handler] = Handler
) -> Iterator[ThreadingHTTPServer]:
    """Runs an origin server on ``host`` (any free port) in a thread."""
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# ---- the local stack (python -m imgclf.local) ---------------------------------------------------
@dataclass
class RunningStack:
    """A local stack a test started: its URLs, its process and its combined output."""

    process: subprocess.Popen[bytes]
    api_url: str
    endpoint: str
    static_url: str
    log_path: Path

    def log(self) -> str:
        """Everything the stack and its children printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signals the stack and returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


def free_port() -> int:
    """A port nobody listens on right now (never 3000 or 5000)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_stack(
    log_path: Path, data_dir: Path, workers: int = 2, env: dict[str, str] | None = None
) -> RunningStack:
    """Starts ``python -m imgclf.local`` on free ports; returns once it printed its banner."""
    ports = {name: free_port() for name in ("--port", "--s3-port", "--static-port")}
    args = [arg for name, port in ports.items() for arg in (name, str(port))]
    command = [sys.executable, "-m", "imgclf.local", *args, f"--workers={workers}"]
    # Uploads in the tests must reach the retrain handler without starting a training run.
    env = {**os.environ, "RETRAIN_MIN_NEW_IMAGES": "100000", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, f"--data-dir={data_dir}"], cwd=ROOT, stdout=log, stderr=log, env=env
        )
    stack = RunningStack(
        process,
        api_url=f"http://127.0.0.1:{ports['--port']}",
        endpoint=f"http://127.0.0.1:{ports['--s3-port']}",
        static_url=f"http://127.0.0.1:{ports['--static-port']}",
        log_path=log_path,
    )
    deadline = time.monotonic() + 180
    while "Local stack ready" not in stack.log():
        if process.poll() is not None or time.monotonic() > deadline:
            stack.stop(signal.SIGKILL)
            raise RuntimeError(f"the local stack did not start:\n{stack.log()[-5000:]}")
        time.sleep(0.2)
    return stack


# ---- the deploy tools of .venv-sam (SAM CLI, cfn-lint, hadolint), run offline ------------------
def run_deploy_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs ``.venv-sam/bin/<name> ARGS`` from the repository root without AWS credentials.

    Fails the test, saying how to install them, when the tools are missing.
    """
    tool = ROOT / ".venv-sam" / "bin" / name
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run `make .venv-sam/.installed`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(SAM_CLI_TELEMETRY="0", AWS_EC2_METADATA_DISABLED="true")
    return subprocess.run(
        [str(tool), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---- a transfer model in seconds (the embedding cache's tests) ---------------------------------
def save_transfer_model(out: Path, data: Path, epochs: int = 30) -> Path:
    """Saves a transfer model as a search saves one: the frozen, pretrained EfficientNet-Lite0
    backbone and a head fit on the features of ``data``'s training split, with ``labels.json``
    and ``metrics.json`` (its framing).

    Seconds instead of a search's minutes, for tests of what happens around training; the head
    is confident enough on its own data for a float16 conversion to agree with it.
    """
    # TensorFlow comes with these: imported only by the tests that build a model.
    from imgclf.pipeline.data import find_splits, load_split
    from imgclf.pipeline.model import attach_head, make_head
    from imgclf.pipeline.training import save_for_inference
    from imgclf.pipeline.transfer import FRAMING, activations, load_backbone

    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("efficientnet_lite0", top_blocks=0)
    size = backbone.resolution
    train = load_split(find_splits(data)[0], size, size, framing=FRAMING)
    head = make_head(backbone.num_features, len(train.classes))
    head.fit(activations(backbone.model, train.x), train.y, epochs=epochs, verbose=0)
    save_for_inference(attach_head(backbone.model, head), out / "model.keras")
    (out / "labels.json").write_text(json.dumps(train.classes))
    metrics = {"framing": FRAMING.name, "classes": train.classes}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out
