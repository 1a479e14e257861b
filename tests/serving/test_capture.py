"""Request ids, captured traffic and per-model metrics of the predict route.

The real router with the bundled ``scene`` model, capturing into a bucket of moto's S3 server on
loopback: the captured share over a few hundred requests, a capture that fails (no bucket, no S3
at all) while the answer still goes out, batches whose items are captured under their own ids,
and the embedded metrics each answer emits.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

import lambda_func
from helpers import encode, free_port, handle, load_event, picture, scene_image
from imgclf import captures, layout
from imgclf.serving.app import build_router
from imgclf.serving.capture import sampled
from imgclf.serving.http import Router
from imgclf.settings import ServeSettings

# moto's server comes with the local stack's set, not the serving set: skipped in the lambda venv.
pytest.importorskip("moto.server")

SCENE = "scene"


def router_for(bucket: str, fraction: float, **settings: Any) -> Router:
    serve = ServeSettings(
        model_name=SCENE, data_bucket=bucket, capture_fraction=fraction, **settings
    )
    return build_router(serve, lambda_func.logger, lambda_func.metrics)


def predict_event(request_id: str, image: bytes) -> dict[str, Any]:
    event = copy.deepcopy(load_event("predict_http_api_jpeg"))
    event["requestContext"]["requestId"] = request_id
    event["body"] = base64.b64encode(image).decode()
    return event


def batch_event(request_id: str, items: list[str]) -> dict[str, Any]:
    event = copy.deepcopy(load_event("predict_http_api_jpeg"))
    event["requestContext"]["requestId"] = request_id
    event["headers"]["content-type"] = "application/json"
    event["body"] = json.dumps({"images": items})
    event["isBase64Encoded"] = False
    return event


def call(router: Router, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


def emf(out: str) -> list[dict[str, Any]]:
    """The embedded-metrics lines of stdout."""
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if "_aws" in line]


def per_model(out: str) -> list[dict[str, Any]]:
    """The lines with the model and version dimensions."""
    return [line for line in emf(out) if "model" in line and "version" in line]


@pytest.fixture
def bucket(new_bucket: Callable[[str], str]) -> str:
    return new_bucket("captures")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The handler's structured log lines (the Powertools logger's stream, redirected)."""
    buffer = io.StringIO()
    previous = lambda_func.logger.registered_handler.setStream(buffer)
    yield buffer
    lambda_func.logger.registered_handler.setStream(previous)


def test_about_the_set_share_of_requests_is_captured_and_only_those(
    bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN serving with CAPTURE_FRACTION=0.3 and a few different images
    fraction, count = 0.3, 300
    router = router_for(bucket, fraction)
    images = [encode(scene_image(label, seed=1)) for label in ("forest", "sea", "street")]
    capsys.readouterr()
    # WHEN 300 requests are answered
    answered = []
    for i in range(count):
        status, body = call(router, predict_event(f"share-{i:04d}", images[i % 3]))
        assert status == 200, body
        assert body["request_id"] == f"share-{i:04d}"  # every answer names its id
        answered.append(body["request_id"])
    # THEN the captured requests are exactly the sampled ids...
    store = layout.data_store(bucket)
    pointers = {k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(captures.REQUESTS)}
    assert pointers == {i for i in answered if sampled(i, fraction)}
    # ... and their share is within the binomial bounds (4 standard deviations) of the setting
    sd = math.sqrt(count * fraction * (1 - fraction))
    assert abs(len(pointers) - count * fraction) <= 4 * sd, len(pointers)
    # Each record says what was answered, by which version, from which image (stored once).
    records = list(captures.read_captures(store, SCENE))
    assert len(records) == len(pointers)
    one = captures.find_capture(store, sorted(pointers)[0])
    assert one is not None and one.model == SCENE and one.version == "bundled"
    assert one.input_kind == "raw" and one.predictions and one.latency_ms > 0
    stored_images = list(store.list(captures.IMAGES))
    assert len(stored_images) <= 3
    assert store.get(captures.image_key(one.image_sha256)).data in images
    # The metrics count captures per model and version: one line per request.
    lines = per_model(capsys.readouterr().out)
    assert len(lines) == count
    assert sum(line["Captures"][0] for line in lines) == len(pointers)
    assert sum(line["CaptureErrors"][0] for line in lines) == 0
    assert {(line["model"], line["version"]) for line in lines} == {(SCENE, "bundled")}


def test_nothing_is_captured_by_default(
    bucket: str, jpeg_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    router = router_for(bucket, ServeSettings().capture_fraction)
    capsys.readouterr()
    status, body = call(router, predict_event("off-1", jpeg_bytes))
    assert (status, body["request_id"]) == (200, "off-1")
    assert list(layout.data_store(bucket).list("")) == []
    (line,) = per_model(capsys.readouterr().out)
    assert "Captures" not in line and "CaptureErrors" not in line


def test_a_failed_capture_leaves_the_answer_intact_and_counts_an_error(
    aws_env: str, jpeg_bytes: bytes, logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a data bucket that does not exist, half the requests sampled
    router = router_for("imgclf-no-such-bucket-for-captures", 0.5)
    reference = router_for("imgclf-no-such-bucket-for-captures", 0.0)
    capsys.readouterr()
    ids = [f"fail-{i}" for i in range(12)]
    for id_ in ids:
        # WHEN the capture fails
        status, body = call(router, predict_event(id_, jpeg_bytes))
        # THEN the answer is what it would have been without capturing
        _, expected = call(reference, predict_event(id_, jpeg_bytes))
        assert status == 200 and body["predictions"] == expected["predictions"]
        assert body["request_id"] == id_
    out = capsys.readouterr().out
    # ... and exactly the sampled requests count an error; the others made no S3 call at all.
    lines = [line for line in per_model(out) if "CaptureErrors" in line]
    assert [line["CaptureErrors"][0] for line in lines] == [float(sampled(i, 0.5)) for i in ids]
    assert all(line["Captures"] == [0.0] for line in lines)
    assert any(sampled(i, 0.5) for i in ids) and not all(sampled(i, 0.5) for i in ids)
    logged = [json.loads(line) for line in logs.getvalue().splitlines() if "capture failed" in line]
    assert len(logged) == sum(sampled(i, 0.5) for i in ids)
    assert "NoSuchBucket" in logged[0]["error"]


def test_with_no_s3_at_all_a_capture_fails_fast_and_the_answer_goes_out(
    monkeypatch: pytest.MonkeyPatch, jpeg_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an endpoint where nothing listens
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    router = router_for("imgclf-data", 1.0)
    capsys.readouterr()
    started = time.perf_counter()
    status, body = call(router, predict_event("no-s3", jpeg_bytes))
    assert status == 200 and body["predictions"] and body["request_id"] == "no-s3"
    assert time.perf_counter() - started < 10  # short timeouts, one retry
    (line,) = per_model(capsys.readouterr().out)
    assert (line["Captures"], line["CaptureErrors"]) == ([0.0], [1.0])


def test_batch_items_have_their_own_ids_and_are_captured_under_them(
    bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    router = router_for(bucket, 1.0)
    good = [base64.b64encode(encode(scene_image(c, seed=3))).decode() for c in ("sea", "forest")]
    capsys.readouterr()
    status, body = call(router, batch_event("batch-7", [good[0], "not base64!", good[1]]))
    assert status == 200, body
    assert body["request_id"] == "batch-7"
    assert [r["request_id"] for r in body["results"]] == ["batch-7-0", "batch-7-1", "batch-7-2"]
    assert body["results"][1]["status"] == 400
    store = layout.data_store(bucket)
    first = captures.find_capture(store, "batch-7-0")
    assert first is not None and first.input_kind == "base64"
    assert first.predictions == body["results"][0]["predictions"]
    assert captures.find_capture(store, "batch-7-2") is not None
    assert captures.find_capture(store, "batch-7-1") is None  # it failed: nothing answered
    (line,) = per_model(capsys.readouterr().out)
    assert line["Captures"] == [2.0] and len(line["Top1Score"]) == 2


def test_every_answer_emits_latency_score_and_low_confidence_per_model_and_version(
    bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The scene model calls this gradient "glacier" at 0.92: low-confidence under 0.95, not 0.5.
    image = picture()
    for threshold, low in ((0.95, 1.0), (0.5, 0.0)):
        router = router_for(bucket, 0.0, low_confidence_threshold=threshold)
        capsys.readouterr()
        status, body = call(router, predict_event(f"metrics-{threshold}", image))
        assert status == 200
        (line,) = per_model(capsys.readouterr().out)
        (blob,) = line["_aws"]["CloudWatchMetrics"]
        assert sorted(blob["Dimensions"][0]) == ["model", "service", "version"]
        assert blob["Namespace"] == "imgclf"
        assert (line["model"], line["version"]) == (SCENE, "bundled")
        assert line["Top1Score"] == [body["predictions"][0]["score"]]
        assert line["LowConfidence"] == [low]
        assert line["ModelLatency"][0] > 0
    units = {m["Name"]: m["Unit"] for m in blob["Metrics"]}
    assert units["ModelLatency"] == "Milliseconds" and units["LowConfidence"] == "Count"


def test_the_sample_is_deterministic_per_id_and_follows_the_fraction() -> None:
    ids = [f"id-{i}" for i in range(20_000)]
    assert [sampled(i, 0.3) for i in ids] == [sampled(i, 0.3) for i in ids]
    share = sum(sampled(i, 0.3) for i in ids) / len(ids)
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(ids))
    assert not any(sampled(i, 0.0) for i in ids[:100]) and all(sampled(i, 1.0) for i in ids[:100])
    # A smaller fraction samples a subset of a larger one's ids.
    assert {i for i in ids if sampled(i, 0.1)} <= {i for i in ids if sampled(i, 0.3)}


def test_capture_fraction_outside_0_to_1_is_refused() -> None:
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(ValueError, match="CAPTURE_FRACTION"):
            ServeSettings.from_env({"CAPTURE_FRACTION": bad})
    assert ServeSettings.from_env({"CAPTURE_FRACTION": "0.25"}).capture_fraction == 0.25


def test_a_bucket_with_captures_can_be_read_back_by_boto3(bucket: str, jpeg_bytes: bytes) -> None:
    # What the drift monitor and feedback read: plain JSON and the image's own bytes.
    router = router_for(bucket, 1.0)
    status, _ = call(router, predict_event("read-back", jpeg_bytes))
    assert status == 200
    s3 = boto3.client("s3")
    pointer = json.loads(
        s3.get_object(Bucket=bucket, Key=captures.request_key("read-back"))["Body"].read()
    )
    record = json.loads(s3.get_object(Bucket=bucket, Key=pointer["record"])["Body"].read())
    image = s3.get_object(Bucket=bucket, Key=captures.image_key(record["image_sha256"]))
    assert io.BytesIO(image["Body"].read()).getvalue() == jpeg_bytes
