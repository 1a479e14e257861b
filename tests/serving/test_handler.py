"""lambda_func.lambda_handler end to end: real events from events/, the bundled model, LiteRT.

Each test reads as GIVEN an event (loaded with ``load_event`` and adjusted), WHEN the handler runs,
THEN the status, body and headers are checked. URL tests fetch from real servers on loopback.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3
from PIL import Image

import lambda_func
from helpers import (
    CONTEXT,
    Handler,
    handle,
    load_event,
    picture,
    serve,
    with_body,
    with_json,
    with_query,
)
from imgclf.preprocess import Framing, load_image
from imgclf.runtime import TFLiteModel
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.settings import PROJECT_ROOT, ServeSettings

EVENTS = PROJECT_ROOT / "events"
# The default model (MODEL_NAME), which the handler answers with.
DEFAULT = ServeSettings().model_name
MODEL_DIR = PROJECT_ROOT / "model" / DEFAULT


def invoke(event: Any, router: Router | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Calls the handler (or a router built for the test); returns (status, headers, JSON body)."""
    if router is None:
        response = lambda_func.lambda_handler(event, CONTEXT)
    else:
        response = handle(router, event)
    assert response["headers"]["content-type"] == "application/json"
    return response["statusCode"], response["headers"], json.loads(response["body"])


def expected_predictions(image: bytes, top_k: int) -> list[dict[str, Any]]:
    """What the bundled model says, computed without the serving code."""
    model = TFLiteModel((MODEL_DIR / "model.tflite").read_bytes())
    labels = json.loads((MODEL_DIR / "labels.json").read_text())
    framing = Framing.parse(json.loads((MODEL_DIR / "manifest.json").read_text())["framing"])
    probs = model.predict(load_image(image, model.height, model.width, framing=framing))
    best = np.argsort(-probs, kind="stable")[:top_k]
    return [{"label": labels[i], "score": pytest.approx(float(probs[i]), abs=1e-5)} for i in best]


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The handler's structured log lines (the Powertools logger's stream, redirected)."""
    buffer = io.StringIO()
    previous = lambda_func.logger.registered_handler.setStream(buffer)
    yield buffer
    lambda_func.logger.registered_handler.setStream(previous)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def event_image(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["body"])


class PictureHandler(Handler):
    """The test_fetch origin, plus ``/picture.jpg``: a real 320x240 JPEG."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/picture.jpg":
            self._send(200, picture((320, 240)), {"Content-Type": "image/jpeg"})
        else:
            super().do_GET()


def router_with(settings: ServeSettings, **parts: Any) -> Router:
    """The predict function's router built from ``settings`` and any parts, as lambda_func does."""
    return build_router(settings, lambda_func.logger, lambda_func.metrics, **parts)


@dataclass(frozen=True)
class Origin:
    """A real image server on loopback and a router whose fetcher may reach it."""

    url: str
    router: Router


@pytest.fixture
def origin() -> Iterator[Origin]:
    """A real image server on loopback, and a router allowed to reach exactly that server."""
    with serve(handler=PictureHandler) as server:
        port = server.server_address[1]
        env = {"PRIVATE_URL_ENDPOINTS": f"127.0.0.1:{port}", "URL_TIMEOUT_SECONDS": "1"}
        yield Origin(f"http://127.0.0.1:{port}", router_with(ServeSettings.from_env(env)))


# ---- every input kind, v1 and v2 events, base64 flag both ways ---------------------------------


@pytest.mark.parametrize(
    "name", ["predict_http_api_jpeg", "predict_rest_api_jpeg", "predict_function_url_png"]
)
def test_raw_image_body(name: str) -> None:
    # GIVEN an event whose base64 body is an image, with top_k=2 in the query (when any)
    event = load_event(name)
    top_k = int((event.get("queryStringParameters") or {}).get("top_k", 3))
    # WHEN the handler runs
    status, headers, body = invoke(event)
    # THEN the bundled model's top classes come back, with the request id
    assert status == 200, body
    assert body["predictions"] == expected_predictions(event_image(event), top_k)
    assert body["model"] == {"name": DEFAULT, "version": "bundled"}
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert headers["x-request-id"] == event["requestContext"]["requestId"]


def test_multipart_upload_field_file() -> None:
    event = load_event("predict_http_api_multipart")
    status, _, body = invoke(event)
    assert status == 200, body
    # The one part's content: between its headers' blank line and the closing boundary.
    raw = event_image(event)
    image = raw[raw.index(b"\r\n\r\n") + 4 : raw.rindex(b"\r\n--")]
    assert body["predictions"] == expected_predictions(image, 3)


def test_multipart_upload_field_image_with_other_fields() -> None:
    image = picture((200, 100), "PNG")
    data, content_type = urllib3.encode_multipart_formdata(
        {"note": "hello", "image": ("x.png", image, "image/png")}
    )
    event = with_body(load_event("predict_rest_api_jpeg"), data, content_type)
    status, _, body = invoke(with_query(event))
    assert status == 200, body
    assert body["predictions"] == expected_predictions(image, 3)


@pytest.mark.parametrize("as_base64", [False, True])
def test_json_base64_image(as_base64: bool) -> None:
    # GIVEN the REST event with {"image": <base64 PNG>, "top_k": 3}, its body base64 or not
    event = load_event("predict_rest_api_json_image")
    payload = json.loads(event["body"])
    event = with_json(event, payload, as_base64=as_base64)
    status, _, body = invoke(event)
    assert status == 200, body
    assert body["predictions"] == expected_predictions(base64.b64decode(payload["image"]), 3)


def test_json_data_url_image() -> None:
    image = picture()
    data_url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    status, _, body = invoke(with_json(load_event("predict_http_api_jpeg"), {"image": data_url}))
    assert status == 200, body
    assert body["predictions"] == expected_predictions(image, 2)  # top_k=2 from the query


def test_json_url(origin: Origin) -> None:
    # GIVEN the HTTP API url event, pointed at a real server on loopback
    event = load_event("predict_http_api_json_url")
    event = with_json(event, {"url": f"{origin.url}/picture.jpg", "top_k": 4})
    status, _, body = invoke(event, origin.router)
    assert status == 200, body
    assert body["predictions"] == expected_predictions(picture((320, 240)), 4)
    assert set(body["timing_ms"]) == {"fetch", "decode", "inference", "total"}


def test_batch_of_urls_answers_each_item(origin: Origin) -> None:
    urls = [
        f"{origin.url}/picture.jpg",
        f"{origin.url}/missing",
        "ftp://example.com/a.jpg",
        f"{origin.url}/image",  # not a decodable image
        42,
    ]
    event = with_json(load_event("predict_http_api_json_url"), {"urls": urls, "top_k": 1})
    status, _, body = invoke(event, origin.router)
    assert status == 200, body
    results = body["results"]
    assert results[0]["predictions"] == expected_predictions(picture((320, 240)), 1)
    assert [(r.get("status"), r.get("error", {}).get("code")) for r in results[1:]] == [
        (502, "upstream_error"),
        (400, "invalid_url"),
        (422, "invalid_image"),
        (400, "invalid_parameter"),
    ]
    assert body["model"]["version"] == "bundled" and "total" in body["timing_ms"]


def test_batch_of_images_answers_each_item() -> None:
    good = [picture(), picture((64, 48), "WEBP")]
    items = [base64.b64encode(b).decode() for b in good] + ["!!notbase64", "aGVsbG8="]
    event = with_json(load_event("predict_rest_api_json_image"), {"images": items})
    status, _, body = invoke(event)
    assert status == 200, body
    results = body["results"]
    for image, result in zip(good, results, strict=False):
        assert result["predictions"] == expected_predictions(image, 3)
    assert results[2]["error"]["code"] == "invalid_base64" and results[2]["status"] == 400
    assert results[3]["error"]["code"] == "invalid_image" and results[3]["status"] == 422


def test_top_k_json_wins_over_query_and_is_capped_at_the_classes() -> None:
    image = base64.b64encode(picture()).decode()
    event = with_json(load_event("predict_http_api_jpeg"), {"image": image, "top_k": 100})
    status, _, body = invoke(event)  # the query says top_k=2
    assert status == 200
    classes = len(json.loads((MODEL_DIR / "labels.json").read_text()))
    assert len(body["predictions"]) == min(100, classes)
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1, abs=1e-3) or classes > 100  # all of them sum to 1


def test_default_top_k_and_pinning_the_served_version() -> None:
    event = with_query(load_event("predict_http_api_jpeg"), model_version="bundled")
    status, _, body = invoke(event)
    assert status == 200
    assert len(body["predictions"]) == lambda_func.settings.default_top_k


def test_http_api_named_stage_is_stripped() -> None:
    event = load_event("predict_http_api_jpeg")
    event["requestContext"]["stage"] = "Prod"
    event["rawPath"] = "/Prod/predict"
    assert invoke(event)[0] == 200


# ---- health and model ---------------------------------------------------------------------------


def test_health() -> None:
    status, headers, body = invoke(load_event("health_http_api"))
    assert status == 200
    assert body == {"status": "ok", "model": {"name": DEFAULT, "version": "bundled"}}
    assert headers["x-request-id"] == "id"  # the event's requestContext.requestId


def test_model_description() -> None:
    status, _, body = invoke(load_event("model_rest_api"))
    assert status == 200
    manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
    assert body["model"] == {"name": DEFAULT, "version": "bundled"}
    assert body["classes"] == json.loads((MODEL_DIR / "labels.json").read_text())
    assert body["input"]["shape"] == manifest["input"]["shape"]
    assert body["framing"] == manifest["framing"]
    assert body["sha256"] == manifest["sha256"]
    assert body["metrics"] == manifest["metrics"]
    assert body["runtime"]["name"] == "ai-edge-litert" and body["runtime"]["version"]


def test_no_model_is_503(tmp_path: Path) -> None:
    # GIVEN a container whose model directory is empty
    router = router_with(dataclasses.replace(lambda_func.settings, model_dir=tmp_path))
    # THEN health, model and predict answer 503
    for event in (load_event("health_http_api"), load_event("predict_rest_api_jpeg")):
        status, _, body = invoke(event, router)
        assert status == 503 and body["error"]["code"] == "model_unavailable"


def test_a_corrupted_bundled_model_is_503(tmp_path: Path) -> None:
    for name in ("labels.json", "manifest.json", "metrics.json"):
        (tmp_path / name).write_bytes((MODEL_DIR / name).read_bytes())
    tflite = bytearray((MODEL_DIR / "model.tflite").read_bytes())
    tflite[-100] ^= 0xFF
    (tmp_path / "model.tflite").write_bytes(bytes(tflite))
    router = router_with(dataclasses.replace(lambda_func.settings, model_dir=tmp_path))
    assert invoke(load_event("health_http_api"), router)[0] == 503


# ---- every client error is a 4xx JSON error -----------------------------------------------------


def _tiff() -> bytes:
    return picture(fmt="TIFF")


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 5_000)).save(buffer, "PNG")  # 50 M pixels in a few kB
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    return picture((640, 480))[:2000]


HTTP = "predict_http_api_jpeg"
REST = "predict_rest_api_jpeg"
CLIENT_ERRORS: list[tuple[str, Any, int, str]] = [
    # (event, how to change it, status, code)
    (HTTP, lambda e: with_body(e, b"{not json", "application/json"), 400, "invalid_json"),
    (REST, lambda e: with_json(e, [1, 2]), 400, "invalid_json"),
    (REST, lambda e: with_body(e, b"\xff\xfe{", "application/json"), 400, "invalid_json"),
    (HTTP, lambda e: with_body(e, b"[" * 100_000, "application/json"), 400, "invalid_json"),
    (HTTP, lambda e: with_json(e, {"img": "x"}), 400, "invalid_parameter"),
    (HTTP, lambda e: with_json(e, {}), 400, "bad_request"),
    (HTTP, lambda e: with_json(e, {"url": "http://a", "image": "AA=="}), 400, "bad_request"),
    (HTTP, lambda e: with_json(e, {"image": "@@not base64@@"}), 400, "invalid_base64"),
    (HTTP, lambda e: with_json(e, {"image": "QUJD\nREVG"}), 400, "invalid_base64"),
    (HTTP, lambda e: with_json(e, {"image": 12}), 400, "invalid_parameter"),
    (HTTP, lambda e: with_json(e, {"images": []}), 400, "bad_request"),
    (HTTP, lambda e: with_json(e, {"urls": "http://a"}), 400, "bad_request"),
    (HTTP, lambda e: {**e, "body": "***", "isBase64Encoded": True}, 400, "invalid_base64"),
    (HTTP, lambda e: with_query(e, top_k="0"), 400, "invalid_parameter"),
    (REST, lambda e: with_query(e, top_k="three"), 400, "invalid_parameter"),
    (HTTP, lambda e: with_json(e, {"image": "AA==", "top_k": True}), 400, "invalid_parameter"),
    (HTTP, lambda e: with_json(e, {"image": "AA==", "top_k": 2.5}), 400, "invalid_parameter"),
    (HTTP, lambda e: with_query(e, model_version="../../etc"), 400, "invalid_parameter"),
    (HTTP, lambda e: with_json(e, {"url": "ftp://example.com/a.jpg"}), 400, "invalid_url"),
    (
        HTTP,
        lambda e: with_json(e, {"url": "http://169.254.169.254/latest/meta-data/"}),
        400,
        "url_not_allowed",
    ),
    (
        HTTP,
        lambda e: with_body(e, b"--x\r\n\r\n--x--", "multipart/form-data"),
        400,
        "invalid_multipart",
    ),
    (
        REST,
        lambda e: with_body(e, *urllib3.encode_multipart_formdata({"photo": ("a.jpg", picture())})),
        400,
        "invalid_multipart",
    ),
    (HTTP, lambda e: {"hello": "world"}, 400, "bad_request"),
    (HTTP, lambda e: ["not", "an", "event"], 400, "bad_request"),
    (REST, lambda e: {**e, "requestContext": "x", "headers": 7, "path": 5}, 400, "bad_request"),
    (HTTP, lambda e: {**e, "body": {"json": "object"}}, 400, "bad_request"),
    (HTTP, lambda e: {**e, "rawPath": "/predictions"}, 404, "not_found"),
    (HTTP, lambda e: with_query(e, model_version="0042"), 404, "version_not_found"),
    (REST, lambda e: {**e, "httpMethod": "GET"}, 405, "method_not_allowed"),
    (REST, lambda e: {**e, "httpMethod": "POST", "path": "/health"}, 405, "method_not_allowed"),
    (
        HTTP,
        lambda e: with_json(e, {"images": ["AA=="] * 9}),
        413,
        "batch_too_large",
    ),
    (HTTP, lambda e: with_body(e, b"hello", "text/plain"), 415, "unsupported_media_type"),
    (HTTP, lambda e: with_body(e, picture(), ""), 415, "unsupported_media_type"),
    (HTTP, lambda e: with_body(e, _tiff(), "image/jpeg"), 415, "unsupported_media_type"),
    (HTTP, lambda e: with_body(e, b"GIF89a garbage", "image/gif"), 422, "invalid_image"),
    (REST, lambda e: with_body(e, _truncated_jpeg(), "image/jpeg"), 422, "invalid_image"),
    (HTTP, lambda e: with_body(e, b"", "image/png"), 422, "invalid_image"),
    (HTTP, lambda e: with_body(e, picture((8, 8), "PNG"), "image/png"), 422, "image_too_small"),
    (HTTP, lambda e: with_body(e, _bomb(), "image/png"), 422, "image_too_large"),
]


@pytest.mark.parametrize(
    ("name", "change", "status", "code"),
    CLIENT_ERRORS,
    ids=[f"{status}-{code}-{i}" for i, (_, _, status, code) in enumerate(CLIENT_ERRORS)],
)
def test_client_errors(name: str, change: Any, status: int, code: str) -> None:
    # GIVEN a valid event turned into a bad request
    event = change(load_event(name))
    # WHEN the handler runs
    got_status, headers, body = invoke(event)
    # THEN it answers the documented 4xx with the JSON error shape and the request id
    assert (got_status, body["error"]["code"]) == (status, code), body
    assert set(body) == {"error"} and body["error"]["message"]
    assert headers["x-request-id"]


def test_body_over_the_cap_is_413() -> None:
    router = router_with(dataclasses.replace(lambda_func.settings, max_body_bytes=1000))
    event = load_event("predict_http_api_jpeg")  # a ~5 kB JPEG, base64
    assert invoke(event, router)[2]["error"]["code"] == "payload_too_large"
    event = with_json(load_event("predict_http_api_json_url"), {"url": "x" * 2000})
    status, _, body = invoke(event, router)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


def test_default_body_cap_stays_under_lambda_6_mb() -> None:
    cap = lambda_func.settings.max_body_bytes
    assert (cap + 2) // 3 * 4 < 6 * 1024 * 1024 - 64 * 1024  # base64 body + event envelope


def test_url_errors_502_504_413(origin: Origin) -> None:
    event = load_event("predict_http_api_json_url")
    for path, status, code in [
        ("/missing", 502, "upstream_error"),
        ("/slow-headers", 504, "upstream_timeout"),
        ("/declared-big", 413, "payload_too_large"),
    ]:
        got, _, body = invoke(with_json(event, {"url": f"{origin.url}{path}"}), origin.router)
        assert (got, body["error"]["code"]) == (status, code)


def test_unexpected_errors_are_a_generic_500_logged_with_the_request_id(
    logs: io.StringIO,
) -> None:
    def broken(request: Any) -> dict[str, Any]:
        raise RuntimeError("secret detail")

    router = Router({"/predict": {"POST": broken}}, lambda_func.logger, lambda_func.metrics, 10**6)
    response = handle(router, load_event("predict_http_api_jpeg"))
    assert response["statusCode"] == 500
    assert json.loads(response["body"]) == {
        "error": {"code": "internal_error", "message": "internal error"}
    }
    errors = [r for r in json_lines(logs.getvalue()) if r["message"] == "unhandled error"]
    assert errors and errors[0]["request_id"] == "id" and "secret detail" in errors[0]["exception"]


# ---- logs and metrics ---------------------------------------------------------------------------


def test_every_request_logs_its_id_and_emits_metrics(
    logs: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    invoke(load_event("predict_rest_api_jpeg"))
    invoke(with_query(load_event("predict_http_api_jpeg"), top_k="0"))
    access = [r for r in json_lines(logs.getvalue()) if r["message"] == "request"]
    assert [(r["request_id"], r["status"], r.get("error_code")) for r in access] == [
        ("c6af9ac6-7b61-11e6-9a41-93e8deadbeef", 200, None),
        ("id", 400, "invalid_parameter"),
    ]
    assert access[0]["model_version"] == "bundled" and access[0]["latency_ms"] > 0
    emf = [r for r in json_lines(capsys.readouterr().out) if "_aws" in r]
    latency = [r for r in emf if "Latency" in r]
    assert [r["model_version"] for r in latency] == ["bundled", "none"]
    assert all(r["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "imgclf" for r in emf)
    errors = [r for r in emf if "Errors" in r]
    assert [(r["code"], r["Errors"]) for r in errors] == [("invalid_parameter", [1.0])]
