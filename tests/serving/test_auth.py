"""The handler's own check of admin writes (defence in depth behind the gateway's authorizer).

A write route reached without a JWT, or with one lacking the admin scope, is refused by the
function itself from ``requestContext.authorizer.jwt``, whatever let the event through. The
gateway's check (API Gateway's JWT authorizer, emulated locally) is tested in
tests/stack/test_gateway_auth.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import lambda_func
from helpers import handle, load_event
from imgclf.serving.app import build_router
from imgclf.serving.auth import ADMIN_ROUTES, Forbidden, match_route_key, require_admin
from imgclf.serving.http import Router
from imgclf.settings import ServeSettings

ADMIN = "imgclf/admin"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/models/scene/promote", "POST /models/{name}/promote"),
        ("post", "/models/scene/rollback/", "POST /models/{name}/rollback"),
        ("POST", "/models/x/uploads", "POST /models/{name}/uploads"),
        ("GET", "/models/scene/promote", None),
        ("POST", "/models/scene/predict", None),
        ("POST", "/models//promote", None),
        ("POST", "/uploads", None),
    ],
)
def test_admin_routes_match_as_api_gateway_matches_them(
    method: str, path: str, expected: str | None
) -> None:
    assert match_route_key(ADMIN_ROUTES, method, path) == expected


@pytest.fixture(scope="module")
def router() -> Router:
    return build_router(ServeSettings(), lambda_func.logger, lambda_func.metrics)


def post(router: Router, path: str, body: Any, authorizer: Any = None) -> tuple[int, Any]:
    event = load_event("health_http_api")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = "POST"
    event["headers"]["content-type"] = "application/json"
    event["body"] = json.dumps(body)
    event["requestContext"].pop("authorizer")
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    response = handle(router, event)
    return response["statusCode"], json.loads(response["body"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/models/scene/promote", {"version": "1"}),
        ("/models/scene/rollback", {}),
        ("/models/scene/uploads", {"label": "forest", "files": []}),
    ],
)
def test_the_handler_refuses_a_write_without_an_admin_jwt(
    router: Router, path: str, body: dict[str, Any]
) -> None:
    # An event that reached the function without an authorizer (e.g. a route misconfigured):
    status, answer = post(router, path, body)
    assert status == 401 and answer["error"]["code"] == "unauthorized"
    # A JWT without the scope (what sam's generated event carries: scope1, scope2):
    unscoped = {"jwt": {"claims": {"sub": "x"}, "scopes": ["scope1", "scope2"]}}
    status, answer = post(router, path, body, unscoped)
    assert status == 403 and answer["error"]["code"] == "forbidden"
    # An IAM-authorized call has no admin scope either.
    status, _ = post(router, path, body, {"iam": {"userArn": "arn:aws:iam::1:user/x"}})
    assert status == 401


def test_the_handler_reads_the_scope_from_the_claims_when_scopes_are_absent() -> None:
    claims = {"sub": "ops", "scope": f"openid {ADMIN}"}
    assert require_admin({"jwt": {"claims": claims, "scopes": None}}, ADMIN) == claims
    with pytest.raises(Forbidden, match="does not carry"):
        require_admin({"jwt": {"claims": {"scope": "openid"}}}, ADMIN)
