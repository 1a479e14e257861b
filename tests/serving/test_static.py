"""The web console's files, served by the predict function: GET / and GET /console/{file}.

Through the real router (bundled model) with real events: content types, caching, the content
security policy, and that the page needs nothing from another origin and nothing that is missing.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

import lambda_func
from helpers import handle, load_event
from imgclf.serving.app import build_router
from imgclf.serving.http import Router
from imgclf.serving.static import CONSOLE_DIR
from imgclf.settings import ServeSettings

# What the whole page may weigh, uncompressed (it is a handful of small text files).
PAGE_BUDGET_BYTES = 60_000


@pytest.fixture(scope="module")
def router() -> Router:
    return build_router(ServeSettings(), lambda_func.logger, lambda_func.metrics)


def get(router: Router, path: str, **headers: str) -> dict[str, Any]:
    event = load_event("health_http_api")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["headers"].update(headers)
    return handle(router, event)


def test_the_page_is_served_at_the_root_with_a_strict_policy(router: Router) -> None:
    # WHEN the browser asks for /
    response = get(router, "/")
    # THEN it gets index.html as HTML, revalidated each time, framed by nobody
    assert response["statusCode"] == 200
    headers = response["headers"]
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert response["body"] == (CONSOLE_DIR / "index.html").read_text()
    assert response["isBase64Encoded"] is False
    assert headers["cache-control"] == "no-cache" and headers["etag"]
    assert headers["x-content-type-options"] == "nosniff"
    policy = dict(
        part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-request-id"]


def referenced(text: str) -> list[str]:
    """The files a page or module loads: src/href attributes and ES module imports."""
    return re.findall(r'(?:src|href)="([^"]+)"', text) + re.findall(r'from "([^"]+)"', text)


def test_every_file_the_page_loads_is_served_with_its_type(router: Router) -> None:
    # GIVEN every file index.html and the modules it loads refer to, followed transitively
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    seen: set[str] = set()
    todo = referenced((CONSOLE_DIR / "index.html").read_text())
    while todo:
        reference = todo.pop()
        if reference.startswith(("data:", "#")) or reference in seen:
            continue
        seen.add(reference)
        name = reference.removeprefix("console/").removeprefix("./")
        # WHEN the browser asks for it (relative to / or to /console/)
        response = get(router, f"/console/{name}")
        # THEN it is there, with a type a browser runs (module scripts need a JavaScript type)
        assert response["statusCode"] == 200, reference
        assert response["headers"]["content-type"] == types[name[name.rindex(".") :]]
        assert "content-security-policy" not in response["headers"]
        todo += referenced(response["body"])
    assert {"console/app.js", "console/style.css", "./predict.js", "./models.js"} <= seen


def test_the_page_needs_nothing_from_another_origin_and_stays_small() -> None:
    total = 0
    for path in sorted(CONSOLE_DIR.iterdir()):
        text = path.read_text()
        total += len(text.encode())
        # No CDN, no web font, no analytics: every reference is relative (or data:).
        for reference in referenced(text):
            assert not re.match(r"^(https?:)?//", reference), (path.name, reference)
        if path.suffix in (".js", ".css"):
            assert not re.search(r"https?://\w", text), path.name  # no address of any site
            assert "@import" not in text and "url(" not in text, path.name
    assert total < PAGE_BUDGET_BYTES, total


def test_an_unchanged_file_is_a_304_without_a_body(router: Router) -> None:
    etag = get(router, "/console/app.js")["headers"]["etag"]
    response = get(router, "/console/app.js", **{"if-none-match": etag})
    assert response["statusCode"] == 304 and response["body"] == ""
    assert response["headers"]["etag"] == etag


@pytest.mark.parametrize(
    "path", ["/console/nope.js", "/console/..%2Fstatic.py", "/console/", "/console/a/b.js"]
)
def test_only_the_console_folder_s_own_files_are_served(router: Router, path: str) -> None:
    response = get(router, path)
    assert response["statusCode"] == 404
    assert response["headers"]["content-type"] == "application/json"
    assert json.loads(response["body"])["error"]["code"] == "not_found"


def test_the_files_are_public_even_with_no_authorizer_context(router: Router) -> None:
    # The template routes GET / and GET /console/{file} with AuthorizationType NONE; the handler
    # asks nothing of the event either.
    event = load_event("health_http_api")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/"
    del event["requestContext"]["authorizer"]
    assert handle(router, event)["statusCode"] == 200
