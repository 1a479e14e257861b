"""Throughput and tail latency through the local stack: ``locustfile.py`` run headless by Locust.

For each worker count, the local stack (``python -m imgclf.local``: moto, the registry seeded with
the bundled model, gunicorn workers as Lambda execution environments) starts on free ports, Locust
runs a fixed number of users for a fixed time against it, and the figures come from Locust's CSV.
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from imgclf.settings import PROJECT_ROOT

LOCUSTFILE = PROJECT_ROOT / "locustfile.py"
STACK_START_SECONDS = 240
STACK_STOP_SECONDS = 60


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(urls: list[str], stack: subprocess.Popen[bytes], log: Path) -> None:
    """Waits until every URL answers 200 (the gateway's health and the static image server)."""
    deadline = time.monotonic() + STACK_START_SECONDS
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        if stack.poll() is not None:
            raise RuntimeError(f"the local stack exited ({stack.returncode}): see {log}")
        try:
            with urllib.request.urlopen(pending[0], timeout=5) as answer:
                if answer.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"the local stack did not answer {pending[0]}: see {log}")


def _aggregated(stats_csv: Path) -> dict[str, Any]:
    """Locust's figures per request name and for all requests (``Aggregated``)."""
    rows = {}
    with stats_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            rows[row["Name"]] = {
                "requests": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "p50_ms": float(row["50%"]),
                "p95_ms": float(row["95%"]),
                "p99_ms": float(row["99%"]),
            }
    return {"total": rows.pop("Aggregated"), "by_name": rows}


def locust_run(workers: int, users: int, seconds: int, data: Path, workdir: Path) -> dict[str, Any]:
    """Starts the local stack with ``workers`` gateway workers and load-tests it with Locust.

    Args:
        workers: gunicorn workers (Lambda execution environments).
        users: Locust users (spawned all at once).
        seconds: how long Locust runs.
        data: the sample dataset (seeds the stack; its ``seg_pred`` images are the requests).
        workdir: where the logs and Locust's CSV go.

    Returns:
        ``{"workers", "users", "seconds", "total": {...}, "by_name": {...}}`` with RPS,
        p50/p95/p99 (ms), requests and failures.
    """
    port, s3_port, static_port = free_port(), free_port(), free_port()
    log = workdir / f"stack-{workers}.log"
    command = [sys.executable, "-m", "imgclf.local", f"--port={port}", f"--s3-port={s3_port}"]
    command += [f"--static-port={static_port}", f"--workers={workers}", f"--data-dir={data}"]
    api_url, static_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{static_port}"
    with log.open("wb") as out:
        stack = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_ready([f"{api_url}/health", f"{static_url}/seg_pred/"], stack, log)
            prefix = workdir / f"locust-{workers}"
            subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
                + [f"--users={users}", f"--spawn-rate={users}", f"--run-time={seconds}s"]
                + [f"--host={api_url}", f"--csv={prefix}", "--only-summary", "--loglevel=WARNING"],
                cwd=PROJECT_ROOT,
                env={
                    **os.environ,
                    "SAMPLE_DIR": str(data),
                    "STATIC_URL": static_url,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=seconds + 120,
                check=False,  # a failed request makes Locust exit 1; the CSV counts it
            )
        finally:
            stack.send_signal(signal.SIGTERM)  # the stack stops its gateway and bridge itself
            try:
                stack.wait(timeout=STACK_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                stack.kill()
                stack.wait()
    return {
        "workers": workers,
        "users": users,
        "seconds": seconds,
        **_aggregated(Path(f"{prefix}_stats.csv")),
    }
