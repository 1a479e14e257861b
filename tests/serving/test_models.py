"""Several named models in one predict function: /models, /models/{name}, /models/{name}/predict.

Against real model folders (bundled mode) and a real local-folder registry, with the real router.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import lambda_func
from helpers import ROOT, handle, load_event, with_query
from imgclf import registry
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.settings import ServeSettings

SCENE = ROOT / "model" / "scene"


def router_for(settings: ServeSettings) -> Router:
    return build_router(settings, lambda_func.logger, lambda_func.metrics)


def call(router: Router, method: str, path: str, **query: str) -> tuple[int, dict]:
    event = (
        load_event("predict_http_api_jpeg") if method == "POST" else load_event("health_http_api")
    )
    event = with_query(event, **query)
    event["rawPath"] = path
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


@pytest.fixture
def bundled(tmp_path: Path) -> Router:
    """Two bundled models: ``scene`` (the default) and ``second``, a copy under another name."""
    for name in ("scene", "second"):
        shutil.copytree(SCENE, tmp_path / name)
    settings = ServeSettings(model_dir=tmp_path, model_name="scene")
    return router_for(settings)


def test_each_bundled_model_answers_under_its_own_name(bundled: Router) -> None:
    status, body = call(bundled, "POST", "/models/second/predict")
    assert status == 200 and body["model"] == {"name": "second", "version": "bundled"}
    status, body = call(bundled, "POST", "/predict")
    assert status == 200 and body["model"]["name"] == "scene"


def test_models_lists_every_model_with_the_default_first(bundled: Router) -> None:
    status, body = call(bundled, "GET", "/models")
    assert status == 200 and body["default"] == "scene"
    assert [m["name"] for m in body["models"]] == ["scene", "second"]
    scene = body["models"][0]
    manifest = json.loads((SCENE / "manifest.json").read_text())
    assert scene["default"] and scene["live_version"] == "bundled" and scene["loaded"]
    assert scene["classes"] == len(manifest["classes"]) and scene["metrics"] == manifest["metrics"]
    assert body["models"][1]["loaded"] is False  # nothing loads a model until it is asked for


@pytest.mark.parametrize("path", ["/models/nope/predict", "/models/Bad_Name/predict", "/models/_x"])
def test_an_unknown_or_invalid_model_name_is_404(bundled: Router, path: str) -> None:
    status, body = call(bundled, "POST" if path.endswith("predict") else "GET", path)
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_a_route_with_the_wrong_method_is_405(bundled: Router) -> None:
    status, body = call(bundled, "GET", "/models/scene/predict")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_registry_models_with_their_versions_and_pins(tmp_path: Path) -> None:
    # GIVEN a registry with scene 0001 (live) and 0002, and another model with one version
    root = tmp_path / "registry"
    scene = registry.open_registry(str(root), "scene")
    scene.promote(scene.publish(SCENE))
    scene.publish(SCENE)
    other = registry.open_registry(str(root), "other")
    other.promote(other.publish(SCENE))
    router = router_for(ServeSettings(model_registry_uri=str(root), model_name="scene"))
    # THEN /models lists both; /models/scene has both versions, 0001 live
    status, body = call(router, "GET", "/models")
    assert [(m["name"], m["live_version"]) for m in body["models"]] == [
        ("scene", "0001"),
        ("other", "0001"),
    ]
    status, detail = call(router, "GET", "/models/scene")
    assert [(v["version"], v["live"]) for v in detail["versions"]] == [
        ("0001", True),
        ("0002", False),
    ]
    # AND a version can be pinned per model
    status, body = call(router, "POST", "/models/scene/predict", model_version="2")
    assert status == 200 and body["model"] == {"name": "scene", "version": "0002"}
    status, body = call(router, "POST", "/models/other/predict", model_version="2")
    assert status == 404 and body["error"]["code"] == "version_not_found"
    # AND a model published after the cold start is found on its first request
    late = registry.open_registry(str(root), "late")
    late.promote(late.publish(SCENE))
    status, body = call(router, "POST", "/models/late/predict")
    assert status == 200 and body["model"] == {"name": "late", "version": "0001"}


def test_default_model_routes_keep_working(bundled: Router) -> None:
    assert call(bundled, "GET", "/model")[1]["model"]["name"] == "scene"
    status, body = call(bundled, "GET", "/health")
    assert status == 200 and body == {
        "status": "ok",
        "model": {"name": "scene", "version": "bundled"},
    }


def test_settings_name_the_default_model() -> None:
    settings = ServeSettings.from_env({"MODEL_NAME": "second", "MODEL_DIR": "/x"})
    assert (settings.model_name, settings.model_dir) == ("second", Path("/x"))


@pytest.mark.parametrize("version", ["../x", "9" * 5000, "²"])
def test_a_malformed_pinned_version_of_get_model_is_400(bundled: Router, version: str) -> None:
    status, body = call(bundled, "GET", "/model", model_version=version)
    assert status == 400 and body["error"]["code"] == "invalid_parameter"
    assert len(body["error"]["message"]) < 200  # the value is not echoed back whole


def test_a_registry_version_keeps_its_ood_statistics(tmp_path: Path) -> None:
    # GIVEN the bundled scene model (it has ood.npz) published to a registry
    registry_root = tmp_path / "registry"
    scene = registry.open_registry(str(registry_root), "scene")
    scene.promote(scene.publish(SCENE))
    assert "ood.npz" in scene.read_version("0001")
    router = router_for(ServeSettings(model_registry_uri=str(registry_root), model_name="scene"))
    # THEN the version served from the registry answers with its OOD score, as the bundled one
    status, body = call(router, "POST", "/predict")
    assert status == 200 and 0.0 <= body["ood"]["score"] <= 1.0
