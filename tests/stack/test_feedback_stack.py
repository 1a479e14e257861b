"""Captures and feedback over HTTP on the local stack: predict -> feedback -> approve -> ingested.

The stack captures every answer (``imgclf.local.stack.serve_environment``); the approved image
goes to ``incoming/`` and the S3-event bridge has the retrain handler ingest it.
"""

from __future__ import annotations

import hashlib
import re
import time

import boto3
import pytest
import requests

from helpers import RunningStack, encode, scene_image
from imgclf.retrain.ingest import split_of

pytestmark = pytest.mark.slow


def admin_token(stack: RunningStack) -> str:
    """The admin token the stack printed in its banner."""
    match = re.search(r"Admin token \(.*\n\s+(\S+)", stack.log())
    assert match, "the stack's banner has no admin token"
    return match.group(1)


def test_predict_feedback_approve_reaches_the_training_data(local_stack: RunningStack) -> None:
    api = local_stack.api_url
    admin = {"authorization": f"Bearer {admin_token(local_stack)}"}
    image = encode(scene_image("glacier", seed=91))
    sha = hashlib.sha256(image).hexdigest()
    # GIVEN an answer, which names its request id (the same as the x-request-id header)
    answer = requests.post(
        f"{api}/models/scene/predict",
        data=image,
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    assert request_id == answer.headers["x-request-id"]
    given = {"request_id": request_id, "label": "glacier"}
    # Feedback needs the admin token, as every write does (the gateway's authorizer says 401).
    refused = requests.post(f"{api}/feedback", json=given, timeout=30)
    assert refused.status_code == 401
    # WHEN an admin gives its right label, and approves it
    feedback = requests.post(f"{api}/feedback", json=given, headers=admin, timeout=30)
    assert feedback.status_code == 200, feedback.text
    pending = requests.get(f"{api}/feedback", headers=admin, timeout=30).json()["feedback"]
    assert request_id in [f["request_id"] for f in pending]
    approved = requests.post(f"{api}/feedback/{request_id}/approve", headers=admin, timeout=30)
    assert approved.status_code == 200, approved.text
    assert approved.json()["feedback"]["incoming_key"].startswith("incoming/scene/glacier/")
    # THEN the retrain handler ingests it into the scene model's training data
    s3 = boto3.client(
        "s3",
        endpoint_url=local_stack.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stored = f"{split_of(image)}scene/glacier/{sha}.jpg"
    deadline = time.monotonic() + 60
    while s3.list_objects_v2(Bucket="imgclf-data", Prefix=stored)["KeyCount"] == 0:
        assert time.monotonic() < deadline, f"{stored} never appeared:\n{local_stack.log()[-3000:]}"
        time.sleep(0.5)
    # ... and a second feedback on the same answer is a conflict.
    again = requests.post(f"{api}/feedback", json=given, headers=admin, timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_exists"
