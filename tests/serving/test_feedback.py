"""Feedback on captured answers: given, reviewed, and ingested into training like any upload.

The real router (bundled ``scene`` model, every answer captured) against a data bucket of moto's
S3 server on loopback whose ``train/scene/`` is seeded as the local stack seeds it; the approved
image then goes through the real ingestion (``imgclf.retrain.ingest``).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

import lambda_func
from helpers import encode, handle, load_event, scene_image
from imgclf import captures, feedback, layout
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.settings import RetrainSettings, ServeSettings
from imgclf.storage import Store

pytest.importorskip("moto.server")
# Ingestion comes with the retrain side (Pillow only, but not in the serve image's package set).
ingest = pytest.importorskip("imgclf.retrain.ingest")

SCENE = "scene"
CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
ADMIN = {"jwt": {"claims": {"sub": "reviewer"}, "scopes": ["imgclf/admin"]}}
NOT_ADMIN = {"jwt": {"claims": {"sub": "someone"}, "scopes": ["read"]}}


@pytest.fixture
def bucket(new_bucket: Callable[[str], str]) -> str:
    """A data bucket whose scene model has training data (one image per class)."""
    name = new_bucket("feedback")
    store = layout.data_store(name)
    for label in CLASSES:
        image = encode(scene_image(label, seed=100))
        ingest.store_image(store, layout.TRAIN, SCENE, label, image, "jpg", pending=False)
    return name


@pytest.fixture
def store(bucket: str) -> Store:
    return layout.data_store(bucket)


def make_router(bucket: str, **settings: Any) -> Router:
    serve = ServeSettings(model_name=SCENE, data_bucket=bucket, capture_fraction=1.0, **settings)
    return build_router(serve, lambda_func.logger, lambda_func.metrics)


@pytest.fixture
def router(bucket: str) -> Router:
    return make_router(bucket)


def call(
    router: Router,
    method: str,
    path: str,
    body: Any = None,
    *,
    authorizer: Any = ADMIN,
    raw: str | None = None,
    query: dict[str, str] | None = None,
) -> tuple[int, Any]:
    event = copy.deepcopy(load_event("health_http_api"))
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["authorizer"] = authorizer or {}
    event["queryStringParameters"] = query or {}
    if body is not None or raw is not None:
        event["headers"]["content-type"] = "application/json"
        event["body"] = raw if raw is not None else json.dumps(body)
    response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


def predict(router: Router, request_id: str, image: bytes) -> dict[str, Any]:
    event = copy.deepcopy(load_event("predict_http_api_jpeg"))
    event["requestContext"]["requestId"] = request_id
    event["body"] = base64.b64encode(image).decode()
    response = handle(router, event)
    assert response["statusCode"] == 200, response["body"]
    return json.loads(response["body"])


def keys(store: Store, prefix: str = "") -> set[str]:
    return set(store.list(prefix))


def test_feedback_approved_goes_through_ingestion_into_training(
    router: Router, store: Store, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a captured answer (a forest scene)
    image = encode(scene_image("forest", seed=7))
    sha = hashlib.sha256(image).hexdigest()
    answer = predict(router, "fb-approve", image)
    assert answer["request_id"] == "fb-approve"
    capsys.readouterr()
    # WHEN an admin says its right label is "forest" (the model may have said otherwise)
    status, given = call(
        router, "POST", "/feedback", {"request_id": "fb-approve", "label": "forest"}
    )
    assert status == 200, given
    record = given["feedback"]
    assert (record["status"], record["label"], record["by"]) == ("pending", "forest", "reviewer")
    assert record["predicted"] == answer["predictions"][0]["label"]
    assert record["image_sha256"] == sha and record["version"] == "bundled"
    assert keys(store, feedback.FEEDBACK) == {"feedback/pending/fb-approve.json"}
    # ... it waits for review, and nothing went to training yet
    status, listed = call(router, "GET", "/feedback", query={"status": "pending"})
    assert status == 200 and [f["request_id"] for f in listed["feedback"]] == ["fb-approve"]
    assert not any("feedback-" in k for k in keys(store, layout.INCOMING))
    # WHEN it is approved
    status, approved = call(router, "POST", "/feedback/fb-approve/approve")
    assert status == 200, approved
    # THEN the captured image is an upload under incoming/<model>/<label>/, with its provenance
    incoming = f"incoming/{SCENE}/forest/feedback-{sha}.jpg"
    assert approved["feedback"]["status"] == "approved"
    assert approved["feedback"]["incoming_key"] == incoming
    assert approved["feedback"]["decided_by"] == "reviewer"
    assert store.get(incoming).data == image
    assert keys(store, feedback.FEEDBACK) == {"feedback/approved/fb-approve.json"}
    # ... and the real ingestion takes it into train/ or test/ (its hash picks the split)
    settings = RetrainSettings(data_bucket=bucket)
    result = ingest.ingest_upload(
        store, ingest.Upload(incoming, None), settings, ingest.Catalog(store, {SCENE})
    )
    assert result.rejected == [], result.rejected
    split = ingest.split_of(image)
    assert result.stored == [f"{split}{SCENE}/forest/{sha}.jpg"]
    assert incoming not in keys(store, layout.INCOMING)  # ingested, then removed
    # Approving twice is a conflict; the answer's metrics counted the feedback and approval.
    assert call(router, "POST", "/feedback/fb-approve/approve")[0] == 409
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    counted = [n for x in lines if x.get("model") == SCENE for n in x if n.startswith("Feedback")]
    assert sorted(counted) == ["Feedback", "FeedbackApproved"]


def test_rejected_feedback_never_reaches_incoming(router: Router, store: Store) -> None:
    image = encode(scene_image("sea", seed=8))
    predict(router, "fb-reject", image)
    assert (
        call(router, "POST", "/feedback", {"request_id": "fb-reject", "label": "street"})[0] == 200
    )
    status, rejected = call(
        router, "POST", "/feedback/fb-reject/reject", {"reason": "the label is wrong"}
    )
    assert status == 200, rejected
    assert rejected["feedback"]["status"] == "rejected"
    assert rejected["feedback"]["reason"] == "the label is wrong"
    assert keys(store, feedback.FEEDBACK) == {"feedback/rejected/fb-reject.json"}
    assert not any(k.startswith("incoming/") for k in keys(store))
    # It cannot be approved afterwards, nor given again.
    status, error = call(router, "POST", "/feedback/fb-reject/approve")
    assert (status, error["error"]["code"]) == (409, "feedback_not_found")
    status, error = call(router, "POST", "/feedback", {"request_id": "fb-reject", "label": "sea"})
    assert (status, error["error"]["code"]) == (409, "feedback_exists")
    assert not any(k.startswith("incoming/") for k in keys(store))
    status, listed = call(router, "GET", "/feedback", query={"status": "rejected"})
    assert [f["request_id"] for f in listed["feedback"]] == ["fb-reject"]


def test_bad_feedback_is_a_clear_4xx_and_writes_nothing(router: Router, store: Store) -> None:
    predict(router, "fb-bad", encode(scene_image("glacier", seed=9)))
    before = keys(store)
    cases = [
        # unknown request ids: never captured, or not an id at all
        ({"request_id": "never-seen", "label": "forest"}, None, 404, "capture_not_found"),
        ({"request_id": "../etc/passwd", "label": "forest"}, None, 400, "invalid_parameter"),
        ({"request_id": 42, "label": "forest"}, None, 400, "invalid_parameter"),
        # labels that are not names, or not a class of the model
        ({"request_id": "fb-bad", "label": "Forest!"}, None, 400, "invalid_label"),
        ({"request_id": "fb-bad", "label": "cat"}, None, 400, "invalid_label"),
        ({"request_id": "fb-bad", "label": ["forest"]}, None, 400, "invalid_label"),
        ({"request_id": "fb-bad"}, None, 400, "invalid_label"),
        ({"request_id": "fb-bad", "label": "forest", "extra": 1}, None, 400, "invalid_parameter"),
        # malformed JSON
        (None, '{"request_id": "fb-bad", "label": ', 400, "invalid_json"),
        (None, "[1, 2]", 400, "invalid_json"),
        (None, "\udcff", 400, "invalid_json"),
    ]
    for body, raw, status, code in cases:
        got, answer = call(router, "POST", "/feedback", body, raw=raw)
        assert (got, answer["error"]["code"]) == (status, code), (body, raw, answer)
    assert keys(store) == before
    # No admin token, or one without the admin scope: 401 / 403 on every feedback route.
    routes = [
        ("POST", "/feedback", {"request_id": "fb-bad", "label": "forest"}),
        ("GET", "/feedback", None),
        ("POST", "/feedback/fb-bad/approve", None),
        ("POST", "/feedback/fb-bad/reject", None),
    ]
    for method, path, body in routes:
        assert call(router, method, path, body, authorizer={})[0] == 401, path
        assert call(router, method, path, body, authorizer=NOT_ADMIN)[0] == 403, path
    assert keys(store) == before
    # A duplicate is a conflict and leaves the first one as it was.
    assert call(router, "POST", "/feedback", {"request_id": "fb-bad", "label": "forest"})[0] == 200
    first = store.get("feedback/pending/fb-bad.json").data
    status, answer = call(router, "POST", "/feedback", {"request_id": "fb-bad", "label": "sea"})
    assert (status, answer["error"]["code"]) == (409, "feedback_exists")
    assert store.get("feedback/pending/fb-bad.json").data == first
    # Review routes: unknown ids 404, bad query 400.
    assert call(router, "POST", "/feedback/nobody/approve")[0] == 404
    assert call(router, "POST", "/feedback/nobody/reject")[0] == 404
    assert call(router, "POST", "/feedback/fb-bad/reject", raw="{")[0] == 400
    assert call(router, "POST", "/feedback/fb-bad/reject", {"reason": 3})[0] == 400
    for query in ({"status": "done"}, {"limit": "0"}, {"limit": "x"}, {"model": "A B"}):
        assert call(router, "GET", "/feedback", query=query)[0] == 400, query
    assert call(router, "GET", "/feedback", query={"model": "other"})[1]["feedback"] == []


def test_feedback_on_an_image_that_is_gone_or_a_model_without_data_stays_pending(
    bucket: str, store: Store
) -> None:
    router = make_router(bucket)
    image = encode(scene_image("street", seed=10))
    predict(router, "fb-gone", image)
    assert call(router, "POST", "/feedback", {"request_id": "fb-gone", "label": "street"})[0] == 200
    store.delete(captures.image_key(hashlib.sha256(image).hexdigest()))  # expired, say
    status, answer = call(router, "POST", "/feedback/fb-gone/approve")
    assert (status, answer["error"]["code"]) == (409, "capture_image_gone")
    assert "feedback/pending/fb-gone.json" in keys(store)
    assert not any(k.startswith("incoming/") for k in keys(store))
    # A model with no training data here (the pretrained imagenet one): ingestion would refuse.
    imagenet = build_router(
        ServeSettings(model_name="imagenet", data_bucket=bucket, capture_fraction=1.0),
        lambda_func.logger,
        lambda_func.metrics,
    )
    predict(imagenet, "fb-imagenet", image)
    given = {"request_id": "fb-imagenet", "label": "goldfish"}
    assert call(imagenet, "POST", "/feedback", given)[0] == 200
    status, answer = call(imagenet, "POST", "/feedback/fb-imagenet/approve")
    assert (status, answer["error"]["code"]) == (409, "model_not_trainable")
    assert call(imagenet, "POST", "/feedback/fb-imagenet/reject")[0] == 200


def test_auto_approval_sends_feedback_to_incoming_at_once(bucket: str, store: Store) -> None:
    router = make_router(bucket, feedback_auto_approve=True)
    image = encode(scene_image("mountain", seed=11))
    predict(router, "fb-auto", image)
    status, given = call(
        router, "POST", "/feedback", {"request_id": "fb-auto", "label": "mountain"}
    )
    assert status == 200 and given["feedback"]["status"] == "approved"
    sha = hashlib.sha256(image).hexdigest()
    assert store.get(f"incoming/{SCENE}/mountain/feedback-{sha}.jpg").data == image


def test_the_feedback_command_line_lists_approves_and_rejects(
    router: Router, store: Store, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgclf.feedback.__main__ import main

    for request_id, label in (("cli-1", "forest"), ("cli-2", "sea")):
        predict(router, request_id, encode(scene_image(label, seed=12)))
        assert (
            call(router, "POST", "/feedback", {"request_id": request_id, "label": label})[0] == 200
        )
    capsys.readouterr()
    assert main(["--bucket", bucket, "list"]) == 0
    listed = capsys.readouterr().out
    assert "cli-1" in listed and "cli-2" in listed and "forest" in listed
    assert main(["--bucket", bucket, "approve", "cli-1"]) == 0
    assert "incoming/scene/forest/feedback-" in capsys.readouterr().out
    assert main(["--bucket", bucket, "reject", "cli-2", "--reason", "blurry"]) == 0
    assert main(["--bucket", bucket, "reject", "cli-2"]) == 1
    assert "rejected already" in capsys.readouterr().err
    assert main(["--bucket", bucket, "list", "--status", "approved"]) == 0
    out = capsys.readouterr().out
    assert "cli-1" in out and "cli-2" not in out
