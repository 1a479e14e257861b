"""Uploads by presigned POST: the policies the function signs, prediction by ``{"s3_key"}``,
training uploads for admins, what became of them, and the jobs they start.

Against moto's S3 server on loopback (files really go up with a multipart POST) and the real router
with the bundled model. moto accepts any POST without checking the policy's conditions, so each
policy document is decoded and checked here instead: key, bucket, size range, type, expiry.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

import lambda_func
from helpers import encode, handle, load_event, scene_image
from imgclf import layout
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.serving.uploads import INCOMING_KEY, UPLOAD_KEY, UPLOADS_PREFIX
from imgclf.settings import ServeSettings

# moto's server and requests come with the local stack's set, not the serving set: in the lambda
# venv (test_lambda_venv.py runs tests/serving there, without conftest.py) this module is skipped.
pytest.importorskip("moto.server")
requests = pytest.importorskip("requests")

ADMIN = {"jwt": {"claims": {"sub": "tester", "scope": "imgclf/admin"}, "scopes": ["imgclf/admin"]}}
LIMIT = 300_000


@pytest.fixture
def bucket(new_bucket: Callable[[str], str]) -> str:
    return new_bucket("data")


@pytest.fixture
def router(bucket: str) -> Router:
    settings = ServeSettings(data_bucket=bucket, upload_max_bytes=LIMIT, upload_expires_seconds=120)
    return build_router(settings, lambda_func.logger, lambda_func.metrics)


def call(
    router: Router,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: dict[str, str] | None = None,
    authorizer: Any = None,
) -> tuple[int, Any]:
    event = load_event("health_http_api")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"].pop("authorizer")
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    event["queryStringParameters"] = query or {}
    if body is not None:
        event["headers"]["content-type"] = "application/json"
        event["body"] = json.dumps(body)
    response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


def policy_of(post: dict[str, Any]) -> tuple[datetime, list[Any]]:
    """The decoded POST policy: its expiry and its conditions."""
    document = json.loads(base64.b64decode(post["fields"]["policy"]))
    expiration = datetime.fromisoformat(document["expiration"].replace("Z", "+00:00"))
    return expiration, document["conditions"]


def send(post: dict[str, Any], data: bytes) -> requests.Response:
    """What a browser's form does: the fields, then the file, to the presigned URL."""
    return requests.post(post["url"], data=post["fields"], files={"file": data}, timeout=30)


def test_a_presigned_post_for_a_large_image_pins_key_type_size_and_expiry(
    router: Router, bucket: str
) -> None:
    # WHEN a client asks where to put an 8 MB JPEG... (the size only has to be under the cap)
    before = datetime.now(UTC)
    status, post = call(router, "POST", "/uploads", {"content_type": "image/jpeg", "size": 1234})
    # THEN it gets a key under uploads/ and a policy that allows nothing else
    assert status == 200, post
    key = post["key"]
    assert key.startswith(UPLOADS_PREFIX) and UPLOAD_KEY.fullmatch(key) and key.endswith(".jpg")
    assert post["fields"]["key"] == key and post["fields"]["Content-Type"] == "image/jpeg"
    assert post["fields"]["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # SigV4
    assert (post["max_bytes"], post["expires_in"]) == (LIMIT, 120)
    expiration, conditions = policy_of(post)
    assert before + timedelta(seconds=110) <= expiration <= before + timedelta(seconds=125)
    assert {"bucket": bucket} in conditions
    assert {"key": key} in conditions  # exactly this key: no other prefix can be written
    assert {"Content-Type": "image/jpeg"} in conditions
    assert ["content-length-range", 1, LIMIT] in conditions
    assert bucket in post["url"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content_type": "text/html", "size": 10}, 415, "unsupported_media_type"),
        ({"content_type": "image/svg+xml", "size": 10}, 415, "unsupported_media_type"),
        ({"content_type": "image/png", "size": LIMIT + 1}, 413, "payload_too_large"),
        ({"content_type": "image/png"}, 400, "invalid_parameter"),
        ({"content_type": "image/png", "size": True}, 400, "invalid_parameter"),
        ({"content_type": "image/png", "size": 0}, 400, "invalid_parameter"),
    ],
)
def test_no_policy_for_what_prediction_would_refuse(
    router: Router, body: dict[str, Any], status: int, code: str
) -> None:
    got, answer = call(router, "POST", "/uploads", body)
    assert (got, answer["error"]["code"]) == (status, code)


def test_an_uploaded_image_is_classified_by_its_key(router: Router) -> None:
    # GIVEN an image sent to S3 with the presigned POST, as a browser or test.py sends it
    image = encode(scene_image("forest"))
    _, post = call(router, "POST", "/uploads", {"content_type": "image/jpeg", "size": len(image)})
    assert send(post, image).status_code == 204
    # WHEN /predict names it (a model's route, with top_k in the body)
    status, answer = call(
        router, "POST", "/models/scene/predict", {"s3_key": post["key"], "top_k": 2}
    )
    # THEN the image is classified, the read timed like a download
    assert status == 200, answer
    assert len(answer["predictions"]) == 2 and answer["predictions"][0]["label"] == "forest"
    assert answer["model"]["name"] == "scene" and "fetch" in answer["timing_ms"]
    # AND the default route takes it too
    assert call(router, "POST", "/predict", {"s3_key": post["key"]})[0] == 200


@pytest.mark.parametrize(
    "key",
    [
        "train/scene/forest/abc.jpg",
        "uploads/../train/scene/forest/abc.jpg",
        "uploads/anything.jpg",
        "incoming/scene/forest/x.jpg",
        "",
    ],
)
def test_only_keys_post_uploads_hands_out_can_be_read(router: Router, key: Any) -> None:
    status, answer = call(router, "POST", "/predict", {"s3_key": key})
    assert (status, answer["error"]["code"]) == (400, "invalid_s3_key")
    status, answer = call(router, "POST", "/predict", {"s3_key": 7})
    assert (status, answer["error"]["code"]) == (400, "invalid_parameter")


def test_a_missing_or_oversized_upload_is_a_clean_error(router: Router, bucket: str) -> None:
    _, post = call(router, "POST", "/uploads", {"content_type": "image/png", "size": 10})
    status, answer = call(router, "POST", "/predict", {"s3_key": post["key"]})
    assert (status, answer["error"]["code"]) == (404, "upload_not_found")
    # moto does not enforce the size range; the function checks the stored size again.
    boto3.client("s3").put_object(Bucket=bucket, Key=post["key"], Body=b"x" * (LIMIT + 1))
    status, answer = call(router, "POST", "/predict", {"s3_key": post["key"]})
    assert (status, answer["error"]["code"]) == (413, "payload_too_large")
    # Something that is not an image is the usual 4xx, whatever the route it came by.
    boto3.client("s3").put_object(Bucket=bucket, Key=post["key"], Body=b"not an image at all")
    assert call(router, "POST", "/predict", {"s3_key": post["key"]})[0] in (415, 422)
    # And s3_key goes alone, like url and image.
    status, answer = call(router, "POST", "/predict", {"s3_key": post["key"], "url": "http://x"})
    assert status == 400


# ---- training uploads (admins) ------------------------------------------------------------------
def files(*images: bytes, content_type: str = "image/jpeg") -> list[dict[str, Any]]:
    return [
        {
            "name": f"{i}.jpg",
            "content_type": content_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        for i, data in enumerate(images)
    ]


def test_training_uploads_need_an_admin_and_go_under_incoming(router: Router, bucket: str) -> None:
    images = [encode(scene_image("forest", seed=s)) for s in (1, 2)]
    body = {"label": "forest", "files": files(*images)}
    assert call(router, "POST", "/models/scene/uploads", body)[0] == 401
    # GIVEN an image the label already has (ingested earlier, named by its content)
    known = hashlib.sha256(images[1]).hexdigest()
    boto3.client("s3").put_object(Bucket=bucket, Key=f"train/scene/forest/{known}.jpg", Body=b"")
    # WHEN an admin asks for presigned POSTs
    status, answer = call(router, "POST", "/models/scene/uploads", body, authorizer=ADMIN)
    # THEN each file gets its own key under incoming/<model>/<label>/, named with its hash
    assert status == 200, answer
    assert (answer["model"], answer["label"]) == ("scene", "forest")
    first, second = answer["uploads"]
    for item, data in zip((first, second), images, strict=True):
        match = INCOMING_KEY.fullmatch(item["key"])
        assert match and (match["model"], match["label"]) == ("scene", "forest")
        assert match["sha256"] == hashlib.sha256(data).hexdigest()
        _, conditions = policy_of(item)
        assert {"key": item["key"]} in conditions and [
            "content-length-range",
            1,
            LIMIT,
        ] in conditions
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    # AND the POST really stores the file where the retrain function picks it up
    assert send(first, images[0]).status_code == 204
    stored = boto3.client("s3").get_object(Bucket=bucket, Key=first["key"])["Body"].read()
    assert stored == images[0] and first["key"].startswith(layout.INCOMING)


def test_each_training_file_is_refused_on_its_own(router: Router) -> None:
    good, text = encode(scene_image("sea")), b"hello"
    listed = files(good) + files(text, content_type="text/plain")
    listed.append({"name": "big.jpg", "content_type": "image/jpeg", "size": LIMIT + 1})
    status, answer = call(
        router, "POST", "/models/scene/uploads", {"label": "sea", "files": listed}, authorizer=ADMIN
    )
    assert status == 200
    ok, wrong_type, no_hash = answer["uploads"]
    assert "key" in ok and "error" not in ok
    assert wrong_type["error"]["code"] == "unsupported_media_type" and wrong_type["status"] == 415
    assert no_hash["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/scene/uploads", {"label": "Not A Label", "files": []}),
        ("/models/scene/uploads", {"label": "sea", "files": []}),
        ("/models/Bad/uploads", {"label": "sea", "files": [{}]}),
        ("/models/scene/uploads", {"label": "sea", "files": [{}] * 101}),
    ],
)
def test_malformed_training_upload_requests_are_400s(
    router: Router, path: str, body: dict[str, Any]
) -> None:
    status, _ = call(router, "POST", path, body, authorizer=ADMIN)
    assert status in (400, 413)


def test_the_status_of_each_upload_follows_ingestion(router: Router, bucket: str) -> None:
    s3 = boto3.client("s3")
    images = [encode(scene_image("forest", seed=s)) for s in (3, 4, 5, 6)]
    _, answer = call(
        router,
        "POST",
        "/models/scene/uploads",
        {"label": "forest", "files": files(*images)},
        authorizer=ADMIN,
    )
    pending, stored, rejected, missing = (item["key"] for item in answer["uploads"])
    # GIVEN one upload still waiting, one ingested, one rejected, one that never arrived
    s3.put_object(Bucket=bucket, Key=pending, Body=images[0])
    sha = hashlib.sha256(images[1]).hexdigest()
    s3.put_object(Bucket=bucket, Key=f"test/scene/forest/{sha}.jpg", Body=images[1])
    record = {"key": rejected, "code": "invalid_image", "reason": "the data is not an image"}
    s3.put_object(Bucket=bucket, Key="rejected/0123.json", Body=json.dumps(record).encode())
    old = {"key": "incoming/scene/forest/old.jpg", "code": "x", "reason": "older"}
    s3.put_object(Bucket=bucket, Key="rejected/0000.json", Body=json.dumps(old).encode())
    # WHEN the console asks (one request for all of them; payload 2.0 joins repeated names)
    keys = ",".join((pending, stored, rejected, missing))
    status, answer = call(router, "GET", "/uploads/status", query={"key": keys})
    # THEN each one says what became of it
    assert status == 200, answer
    outcomes = {u["key"]: u for u in answer["uploads"]}
    assert outcomes[pending]["status"] == "pending"
    assert outcomes[stored]["status"] == "stored"
    assert outcomes[stored]["stored_as"] == f"test/scene/forest/{sha}.jpg"
    assert outcomes[rejected] == {
        "key": rejected,
        "status": "rejected",
        "code": "invalid_image",
        "reason": "the data is not an image",
    }
    assert outcomes[missing]["status"] == "missing"


@pytest.mark.parametrize(
    "query", [{}, {"key": "train/scene/forest/x.jpg"}, {"key": "incoming/scene/forest/x.jpg"}]
)
def test_status_takes_only_keys_it_handed_out(router: Router, query: dict[str, str]) -> None:
    assert call(router, "GET", "/uploads/status", query=query)[0] == 400


def test_jobs_lists_a_model_s_jobs_newest_first_with_the_images_waiting(
    router: Router, bucket: str
) -> None:
    s3 = boto3.client("s3")
    records = [
        {"id": "20260101T000000Z-aaaa", "model": "scene", "status": "succeeded", "version": "0002"},
        {"id": "20260102T000000Z-bbbb", "model": "other", "status": "queued"},
        {"id": "20260103T000000Z-cccc", "model": "scene", "status": "running", "stage": "train"},
    ]
    for record in records:
        body = json.dumps({**record, "pid": 42, "host": "box", "launched": {"arn": "x"}})
        s3.put_object(Bucket=bucket, Key=f"jobs/{record['id']}.json", Body=body.encode())
    s3.put_object(Bucket=bucket, Key="jobs/locks/scene.json", Body=b"{}")
    for n in range(3):
        s3.put_object(Bucket=bucket, Key=f"jobs/pending/scene/forest/{n}.jpg", Body=b"")
    status, answer = call(router, "GET", "/jobs", query={"model": "scene"})
    assert status == 200, answer
    assert [j["id"] for j in answer["jobs"]] == ["20260103T000000Z-cccc", "20260101T000000Z-aaaa"]
    assert answer["jobs"][0]["stage"] == "train" and answer["pending_images"] == 3
    assert answer["retrain_threshold"] == ServeSettings().retrain_min_new_images
    # /models says the same, for each model
    status, listing = call(router, "GET", "/models")
    retraining = {m["name"]: m["retraining"] for m in listing["models"]}
    assert retraining["scene"] == {"pending_images": 3, "retrain_threshold": 50}
    assert retraining["imagenet"] == {"pending_images": 0, "retrain_threshold": 50}
    assert not {"pid", "host", "launched"} & set(answer["jobs"][0])  # where a job ran: private
    status, answer = call(router, "GET", "/jobs", query={"model": "scene", "limit": "1"})
    assert len(answer["jobs"]) == 1
    for query in (
        {},
        {"model": "Bad"},
        {"model": "scene", "limit": "0"},
        {"model": "x", "limit": "9" * 5000},
    ):
        assert call(router, "GET", "/jobs", query=query)[0] == 400
