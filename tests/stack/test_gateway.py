"""The local API gateway, run by gunicorn, in front of a handler that echoes its event.

The echo handler shows exactly what the gateway passes in and lets each test choose what comes
back; the real predict handler behind the same gateway is covered in test_local_stack.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import requests

from helpers import ROOT, free_port

ECHO_HANDLER = textwrap.dedent(
    """
    import base64, json, os, time

    def lambda_handler(event, context):
        path = event["rawPath"]
        if path == "/sleep":
            time.sleep(30)
        if path == "/crash":
            raise RuntimeError("boom")
        if path == "/no-status-code":
            return {"hello": "world"}
        if path == "/binary":
            return {
                "statusCode": 201,
                "headers": {"content-type": "image/png", "x-pid": str(os.getpid())},
                "cookies": ["a=1", "b=2; Path=/"],
                "body": base64.b64encode(bytes(range(256))).decode(),
                "isBase64Encoded": True,
            }
        answer = {
            "event": event,
            "function_name": context.function_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
        }
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/json", "x-pid": str(os.getpid())},
            "body": json.dumps(answer),
        }
    """
)
TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with one worker (one execution environment) in front of the echo handler."""
    handler_dir = tmp_path_factory.mktemp("handler")
    (handler_dir / "echo_handler.py").write_text(ECHO_HANDLER)
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        "-m",
        "imgclf.local.gateway",
        f"--bind={url.removeprefix('http://')}",
        "--workers=1",
        "--handler=echo_handler.lambda_handler",
        f"--timeout={TIMEOUT_SECONDS}",
    ]
    env = {**os.environ, "PYTHONPATH": f"{handler_dir}{os.pathsep}{ROOT}"}
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{url}/ready", timeout=1)
            break
        except requests.ConnectionError:
            assert process.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    assert process.wait(timeout=30) == 0


def recorded_event(name: str) -> dict:
    """An API Gateway HTTP API event from events/."""
    return json.loads((ROOT / "events" / name).read_text())


def test_the_event_carries_the_request_as_payload_2_0(gateway: str) -> None:
    # GIVEN a JSON request with a query string, repeated parameters, a header and cookies
    answer = requests.post(
        f"{gateway}/predict?top_k=2&tag=a&tag=b",
        json={"url": "http://example.com/x.jpg"},
        headers={"X-Custom": "yes", "Cookie": "c1=x; c2=y"},
    )
    # WHEN the handler echoes its event
    assert answer.status_code == 200
    echoed = answer.json()
    event = echoed["event"]
    # THEN it is an HTTP API payload-2.0 event with the request in it
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/predict"
    assert event["rawQueryString"] == "top_k=2&tag=a&tag=b"
    assert event["queryStringParameters"] == {"top_k": "2", "tag": "a,b"}
    assert event["headers"]["x-custom"] == "yes"
    assert event["headers"]["content-type"] == "application/json"
    assert "cookie" not in event["headers"] and event["cookies"] == ["c1=x", "c2=y"]
    assert event["isBase64Encoded"] is False
    assert json.loads(event["body"]) == {"url": "http://example.com/x.jpg"}
    http = event["requestContext"]["http"]
    assert (http["method"], http["path"], http["sourceIp"]) == ("POST", "/predict", "127.0.0.1")
    assert event["requestContext"]["requestId"] == answer.headers["apigw-requestid"]
    # AND it has every field of a recorded API Gateway event (bar the authorizer's and stage's)
    recorded = recorded_event("predict_http_api_jpeg.json")
    assert set(recorded) - {"stageVariables"} <= set(event)
    missing = set(recorded["requestContext"]) - set(event["requestContext"])
    assert missing <= {"authentication", "authorizer"}
    # AND the context has the function's name and the time left before its timeout
    assert echoed["function_name"] == "PredictFunction"
    assert 0 < echoed["remaining_ms"] <= TIMEOUT_SECONDS * 1000


def test_a_binary_body_arrives_base64_encoded(gateway: str) -> None:
    data = bytes(range(256)) * 10
    event = requests.post(
        f"{gateway}/predict", data=data, headers={"content-type": "image/jpeg"}
    ).json()["event"]
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == data
    assert "queryStringParameters" not in event and "cookies" not in event


def test_the_response_gets_status_headers_cookies_and_decoded_body(gateway: str) -> None:
    answer = requests.get(f"{gateway}/binary")
    assert answer.status_code == 201
    assert answer.headers["content-type"] == "image/png"
    assert answer.raw.headers.getlist("set-cookie") == ["a=1", "b=2; Path=/"]
    assert answer.content == bytes(range(256))


def test_a_result_without_status_code_is_a_json_200(gateway: str) -> None:
    answer = requests.get(f"{gateway}/no-status-code")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"hello": "world"}


def test_a_handler_exception_is_api_gateways_500(gateway: str) -> None:
    answer = requests.get(f"{gateway}/crash")
    assert answer.status_code == 500
    assert answer.json() == {"message": "Internal Server Error"}


def test_an_event_over_lambdas_6_mb_limit_is_413(gateway: str) -> None:
    # 5 MB of binary is 6.7 MB once base64-encoded into the event.
    answer = requests.post(
        f"{gateway}/predict", data=b"\0" * 5_000_000, headers={"content-type": "image/jpeg"}
    )
    assert answer.status_code == 413
    assert answer.json() == {"message": "Request Entity Too Large"}


def test_a_timed_out_environment_is_replaced(gateway: str) -> None:
    # GIVEN the one execution environment's process
    before = requests.get(f"{gateway}/binary").headers["x-pid"]
    # WHEN a request runs past the function timeout
    started = time.monotonic()
    answer = requests.get(f"{gateway}/sleep", timeout=20)
    # THEN it is answered as a failed function, at the timeout
    assert answer.status_code == 500
    assert TIMEOUT_SECONDS <= time.monotonic() - started < TIMEOUT_SECONDS + 5
    # AND the next request is served by a fresh environment
    after = requests.get(f"{gateway}/binary", timeout=30)
    assert after.status_code == 201
    assert after.headers["x-pid"] != before
