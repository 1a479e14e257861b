"""Load test of the predict API: every input kind, weighted roughly as clients would use them.

    make load-test USERS=10 SPAWN_RATE=5 DURATION=30s      # against the stack `make run` started

Images are the sample dataset's unlabelled ``seg_pred`` photos: sent as raw bytes, as a multipart
upload, as base64 JSON, and as URLs the API downloads from the local stack's static image server.
Settings (environment): SAMPLE_DIR (default data/sample, the directory the static server serves)
and STATIC_URL (default http://127.0.0.1:3001). At the end it prints RPS, p50/p95/p99 and failures,
and exits non-zero when a request failed.
"""

from __future__ import annotations

import base64
import itertools
import os
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

SAMPLE_DIR = Path(os.environ.get("SAMPLE_DIR", "data/sample"))
STATIC_URL = os.environ.get("STATIC_URL", "http://127.0.0.1:3001").rstrip("/")
MAX_IMAGES = 8


def _load_images() -> list[tuple[str, bytes]]:
    paths = sorted((SAMPLE_DIR / "seg_pred").glob("*.jpg"))[:MAX_IMAGES]
    if not paths:
        raise SystemExit(f"no images in {SAMPLE_DIR}/seg_pred: run `make sample-data` first")
    return [(p.name, p.read_bytes()) for p in paths]


IMAGES = _load_images()


class ApiUser(HttpUser):
    """One client: picks an input kind by weight, then the next image."""

    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        """Starts each user at a different image."""
        self.images = itertools.cycle(IMAGES)

    def _predict(self, name: str, **kwargs: Any) -> None:
        with self.client.post("/predict", name=name, catch_response=True, **kwargs) as answer:
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {answer.text[:200]}")
            elif not answer.json().get("predictions"):
                answer.failure("no predictions in the answer")

    @task(4)
    def raw_bytes(self) -> None:
        """The image as the request body, the cheapest way."""
        _, data = next(self.images)
        self._predict("/predict [bytes]", data=data, headers={"content-type": "image/jpeg"})

    @task(2)
    def multipart(self) -> None:
        """A form upload, as ``curl -F file=@x.jpg`` sends it."""
        filename, data = next(self.images)
        self._predict("/predict [multipart]", files={"file": (filename, data, "image/jpeg")})

    @task(2)
    def base64_json(self) -> None:
        """JSON with the image base64-encoded, as browsers and scripts often send it."""
        _, data = next(self.images)
        self._predict("/predict [base64]", json={"image": base64.b64encode(data).decode()})

    @task(1)
    def url(self) -> None:
        """A URL the API downloads (from the local static server)."""
        filename, _ = next(self.images)
        self._predict("/predict [url]", json={"url": f"{STATIC_URL}/seg_pred/{filename}"})

    @task(1)
    def health(self) -> None:
        """The health check a load balancer or monitor would make."""
        self.client.get("/health", name="/health")


@events.quitting.add_listener
def _summary(environment: Environment, **kwargs: Any) -> None:
    total = environment.stats.total
    print(
        f"\nSUMMARY requests={total.num_requests} failures={total.num_failures} "
        f"rps={total.total_rps:.1f} p50={total.get_response_time_percentile(0.5):.0f}ms "
        f"p95={total.get_response_time_percentile(0.95):.0f}ms "
        f"p99={total.get_response_time_percentile(0.99):.0f}ms"
    )
    if total.num_failures or not total.num_requests:
        environment.process_exit_code = 1
