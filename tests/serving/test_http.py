"""imgclf.serving.http: event parsing (REST v1, HTTP API v2, Function URL), bodies, responses."""

from __future__ import annotations

import base64
import json

import pytest
import urllib3

from helpers import load_event
from imgclf.errors import BadRequest, PayloadTooLarge
from imgclf.serving.http import (
    Request,
    decode_base64,
    json_body,
    multipart_file,
    parse_event,
    response,
)

# Bytes a naive multipart splitter gets wrong: CR/LF pairs, near-boundaries, every byte value.
# (Not "CRLF--boundaryX": RFC 2046 5.1.1 makes any line that starts with the boundary a delimiter.)
TRICKY = (
    bytes(range(256)) * 4
    + b"\r\n\r\n--\r\n--boundar\r\n-boundary\r\n\n--boundary\r--boundary x--boundary--"
    + b"\n\r\x00" * 100
)


@pytest.mark.parametrize(
    "name", ["predict_http_api_jpeg", "predict_rest_api_jpeg", "predict_function_url_png"]
)
def test_parse_event_formats(name: str) -> None:
    event = load_event(name)
    request = parse_event(event, None, max_body_bytes=10**6)
    assert (request.method, request.path) == ("POST", "/predict")
    assert request.body == base64.b64decode(event["body"])
    assert request.media_type in ("image/jpeg", "image/png")
    assert all(k == k.lower() for k in request.headers)  # REST headers arrive capitalised
    assert request.request_id == event["requestContext"]["requestId"]


def test_parse_event_get_without_body_or_query() -> None:
    event = load_event("model_rest_api")
    event["queryStringParameters"] = None
    request = parse_event(event, None, max_body_bytes=10)
    assert (request.method, request.path, request.body, dict(request.query)) == (
        "GET",
        "/model",
        b"",
        {},
    )


def test_plain_text_body_is_utf8_encoded() -> None:
    event = load_event("predict_http_api_json_url")
    request = parse_event(event, None, max_body_bytes=10**6)
    assert json_body(request) == json.loads(event["body"])


def test_body_cap_applies_before_and_after_base64() -> None:
    event = load_event("predict_http_api_jpeg")
    size = len(base64.b64decode(event["body"]))
    assert parse_event(event, None, max_body_bytes=size).body
    with pytest.raises(PayloadTooLarge):
        parse_event(event, None, max_body_bytes=size - 1)
    event = load_event("predict_http_api_json_url")
    with pytest.raises(PayloadTooLarge):
        parse_event(event, None, max_body_bytes=10)


def test_request_id_falls_back_to_lambda_then_a_fresh_one() -> None:
    event = load_event("health_http_api")
    del event["requestContext"]["requestId"]

    class Context:
        aws_request_id = "lambda-id"

    assert parse_event(event, Context(), 10).request_id == "lambda-id"
    assert len(parse_event(event, None, 10).request_id) == 36


@pytest.mark.parametrize("text", ["YWJj\n", "YWJ", "YW Jj", "YWJj!", "YW-_"])
def test_base64_is_strict(text: str) -> None:
    with pytest.raises(BadRequest):
        decode_base64(text, "x")


def test_multipart_keeps_binary_content_exact() -> None:
    body, content_type = urllib3.encode_multipart_formdata(
        {"caption": "a", "file": ("x.bin", TRICKY, "application/octet-stream")},
        boundary="boundary",
    )
    request = Request("POST", "/predict", {"content-type": content_type}, body=body)
    assert multipart_file(request, ("file", "image")) == TRICKY


def test_multipart_unicode_names_are_fine() -> None:
    body, content_type = urllib3.encode_multipart_formdata(
        {"légende": "été ☀", "image": ("фото 📷.jpg", b"pixels"), "fïle": ("a.jpg", b"other")}
    )
    request = Request("POST", "/predict", {"content-type": content_type}, body=body)
    assert multipart_file(request, ("file", "image")) == b"pixels"


def test_multipart_prefers_file_then_image() -> None:
    body, content_type = urllib3.encode_multipart_formdata(
        {"image": ("b.jpg", b"second"), "file": ("a.jpg", b"first")}
    )
    request = Request("POST", "/predict", {"content-type": content_type}, body=body)
    assert multipart_file(request, ("file", "image")) == b"first"
    assert multipart_file(request, ("image",)) == b"second"


PART = b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\n'


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n\r\nabc\r\n--x--"),  # no boundary
        ("multipart/form-data; boundary=x", b"no parts at all"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Type: text/plain\r\n\r\nabc\r\n--x--"),
        ("multipart/form-data; boundary=x\r\nX-Injected: 1", b""),
        ('multipart/form-data; boundary=""', b"--\r\n\r\nabc\r\n----"),  # empty boundary
        ("multipart/form-data; boundary=\ud800", b""),  # a boundary UTF-8 cannot encode
        ("multipart/form-data; boundary=x", PART + b"abc"),  # no final boundary
        ("multipart/form-data; boundary=x", PART + b"ab\r\n--xY\r\n--x--"),  # RFC 2046 5.1.1
        ("multipart/form-data; boundary=x", PART.replace(b"\r\n", b"\n") + b"abc\n--x--"),  # LF
        ("multipart/form-data; boundary=x", b"--x\r\nno colon\r\n\r\nabc\r\n--x--"),
        ("multipart/form-data; boundary=x", PART.replace(b"file", b"f\xffile") + b"a\r\n--x--"),
        # A huge part header line, then a huge number of part header lines.
        ("multipart/form-data; boundary=x", PART.replace(b"file", b"f" * 10**5) + b"a\r\n--x--"),
        ("multipart/form-data; boundary=x", b"--x\r\n" + b"X-A: 1\r\n" * 10**4 + b"\r\n--x--"),
    ],
)
def test_malformed_multipart_is_400(content_type: str, body: bytes) -> None:
    request = Request("POST", "/predict", {"content-type": content_type}, body=body)
    with pytest.raises(BadRequest) as caught:
        multipart_file(request, ("file",))
    assert caught.value.code == "invalid_multipart"


def test_response_shape() -> None:
    got = response(201, {"a": 1}, "rid", {"allow": "GET"})
    assert got == {
        "statusCode": 201,
        "headers": {"content-type": "application/json", "x-request-id": "rid", "allow": "GET"},
        "body": '{"a":1}',
        "isBase64Encoded": False,
    }
