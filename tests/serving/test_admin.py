"""The registry through the API: a version's evaluation, and promote / rollback for admins.

A real local-folder registry (two published versions of the bundled model), the real router.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import lambda_func
from helpers import ROOT, handle, load_event
from imgclf import registry
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.settings import ServeSettings

SCENE = ROOT / "model" / "scene"
ADMIN = {"jwt": {"claims": {"sub": "ops"}, "scopes": ["imgclf/admin"]}}


def call(router: Router, method: str, path: str, body: Any = None, admin: bool = False) -> Any:
    event = load_event("health_http_api")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["authorizer"] = ADMIN if admin else {}
    if body is not None:
        event["headers"]["content-type"] = "application/json"
        event["body"] = json.dumps(body)
    response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with scene 0001 (live) and 0002 (published, not live)."""
    root = tmp_path_factory.mktemp("registry")
    scene = registry.open_registry(str(root), "scene")
    scene.promote(scene.publish(SCENE), reason="first")
    scene.publish(SCENE)
    return root


@pytest.fixture
def router(root: Path) -> Router:
    settings = ServeSettings(
        model_registry_uri=str(root), model_name="scene", model_refresh_seconds=0
    )
    return build_router(settings, lambda_func.logger, lambda_func.metrics)


def test_a_version_s_evaluation_and_where_it_came_from(router: Router) -> None:
    status, version = call(router, "GET", "/models/scene/versions/1")
    assert status == 200, version
    metrics = json.loads((SCENE / "metrics.json").read_text())
    assert (version["version"], version["live"]) == ("0001", True)
    evaluation = version["evaluation"]
    assert evaluation["accuracy"] == metrics["accuracy"]
    assert evaluation["confusion_matrix"] == metrics["confusion_matrix"]
    assert evaluation["classes"] == metrics["classes"] == list(evaluation["per_class"])
    assert version["labels"] == json.loads((SCENE / "labels.json").read_text())
    assert version["data"]["train"] == metrics["data"]["train"]  # what it was trained on
    assert call(router, "GET", "/models/scene/versions/9")[0] == 404
    assert call(router, "GET", "/models/nope/versions/1")[0] == 404


def test_an_admin_promotes_and_rolls_back_and_serving_follows(router: Router) -> None:
    # Without the admin scope nothing moves.
    assert call(router, "POST", "/models/scene/promote", {"version": "0002"})[0] == 401
    # An admin makes 0002 live; the next prediction is answered by it.
    status, answer = call(router, "POST", "/models/scene/promote", {"version": "2"}, admin=True)
    assert status == 200, answer
    assert answer["live"]["version"] == "0002" and "ops" in answer["live"]["reason"]
    assert call(router, "GET", "/model")[1]["model"]["version"] == "0002"
    status, detail = call(router, "GET", "/models/scene")
    assert detail["live_version"] == "0002" and detail["previous_version"] == "0001"
    # Rolling back restores 0001; there is nothing before it.
    status, answer = call(router, "POST", "/models/scene/rollback", admin=True)
    assert (status, answer["live"]["version"]) == (200, "0001")
    assert call(router, "GET", "/model")[1]["model"]["version"] == "0001"
    status, answer = call(router, "POST", "/models/scene/rollback", admin=True)
    assert (status, answer["error"]["code"]) == (409, "no_previous_version")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"version": "0042"}, 404, "version_not_found"),
        ({"version": "latest"}, 404, "version_not_found"),
        ({}, 400, "bad_request"),
        ({"version": True}, 400, "bad_request"),
    ],
)
def test_promoting_what_is_not_a_version_changes_nothing(
    router: Router, body: dict[str, Any], status: int, code: str
) -> None:
    got, answer = call(router, "POST", "/models/scene/promote", body, admin=True)
    assert (got, answer["error"]["code"]) == (status, code)
    assert call(router, "GET", "/models/scene")[1]["live_version"] == "0001"


def test_bundled_models_have_no_registry_to_change() -> None:
    router = build_router(ServeSettings(), lambda_func.logger, lambda_func.metrics)
    status, answer = call(router, "POST", "/models/scene/rollback", admin=True)
    assert (status, answer["error"]["code"]) == (409, "no_registry")
    status, version = call(router, "GET", "/models/scene/versions/bundled")
    assert status == 200 and version["evaluation"]["count"] == 300
    assert call(router, "GET", "/models/scene/versions/0001")[0] == 404
