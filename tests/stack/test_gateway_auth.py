"""The local gateway's JWT authorizer: admin writes need a token with the admin scope.

``imgclf.local.auth`` does what API Gateway's JWT authorizer does in AWS; tested with real RSA keys
and real tokens, then through the local gateway's WSGI application in front of an echo handler.
The handler's own check is in tests/serving/test_auth.py.
"""

from __future__ import annotations

import io
import json
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import jwt
import pytest

from imgclf.local.auth import AUDIENCE, ISSUER, Denied, JwtAuthorizer, SigningKey
from imgclf.local.gateway import AuthConfig, Gateway

ADMIN = "imgclf/admin"
ECHO = """
import json

def lambda_handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(event["requestContext"].get("authorizer"))}
"""


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def jwks(key: SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return key.write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")


@pytest.fixture(scope="module")
def authorizer(jwks: Path) -> JwtAuthorizer:
    return JwtAuthorizer.from_jwks_file(jwks, ISSUER, [AUDIENCE])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# ---- the token check (what HTTP API's JWT authorizer does) ---------------------------------------
def test_a_valid_admin_token_passes_with_its_claims_and_scopes(
    key: SigningKey, authorizer: JwtAuthorizer
) -> None:
    context = authorizer.authorize(bearer(key.token(scopes=[ADMIN, "other"])), [ADMIN])
    assert context["jwt"]["scopes"] == [ADMIN, "other"]
    claims = context["jwt"]["claims"]
    assert claims["sub"] == "local-admin" and claims["iss"] == ISSUER
    # As API Gateway passes them: every claim a string.
    assert all(isinstance(v, str) for v in claims.values())


def forged_tokens(key: SigningKey) -> dict[str, str]:
    other = SigningKey.generate()
    now = time.time()
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}, None, algorithm="none")
    shared = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60, "scope": ADMIN},
        "a-shared-secret-of-at-least-32-bytes!",
        algorithm="HS256",
        headers={"kid": key.kid},
    )
    return {
        "another key": SigningKey(other.key, key.kid).token(scopes=[ADMIN]),
        "unknown key id": other.token(scopes=[ADMIN]),
        "wrong issuer": key.token(scopes=[ADMIN], issuer="https://evil.example"),
        "wrong audience": key.token(scopes=[ADMIN], audience="someone-else"),
        "expired": key.token(scopes=[ADMIN], now=now - 7200, seconds=60),
        "not yet valid": key.token(scopes=[ADMIN], now=now + 3600),
        "unsigned": unsigned,
        "HS256 with the key id": shared,
        "garbage": "not.a.token",
        "empty": "",
    }


@pytest.mark.parametrize(
    "case",
    [
        "another key",
        "unknown key id",
        "wrong issuer",
        "wrong audience",
        "expired",
        "not yet valid",
        "unsigned",
        "HS256 with the key id",
        "garbage",
        "empty",
    ],
)
def test_a_bad_token_is_401(case: str, key: SigningKey, authorizer: JwtAuthorizer) -> None:
    with pytest.raises(Denied) as denied:
        authorizer.authorize(bearer(forged_tokens(key)[case]), [ADMIN])
    assert (denied.value.status, denied.value.message) == (401, "Unauthorized")


def test_a_token_without_the_admin_scope_is_403(key: SigningKey, authorizer: JwtAuthorizer) -> None:
    with pytest.raises(Denied) as denied:
        authorizer.authorize(bearer(key.token(scopes=["read"])), [ADMIN])
    assert (denied.value.status, denied.value.message) == (403, "Forbidden")
    # A route without scopes takes any valid token (AuthType=JWT for the reading routes).
    assert authorizer.authorize(bearer(key.token()), [])["jwt"]["scopes"] is None


def test_the_scp_claim_counts_as_scopes_too(key: SigningKey, authorizer: JwtAuthorizer) -> None:
    token = jwt.encode(
        {"iss": ISSUER, "aud": [AUDIENCE], "exp": time.time() + 60, "scp": [ADMIN]},
        key.key,
        algorithm="RS256",
        headers={"kid": key.kid},
    )
    assert authorizer.authorize(bearer(token), [ADMIN])["jwt"]["scopes"] == [ADMIN]


# ---- the local gateway in front of a handler ----------------------------------------------------
@pytest.fixture(scope="module")
def echo_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("echo")
    (folder / "auth_echo_handler.py").write_text(textwrap.dedent(ECHO))
    sys.path.insert(0, str(folder))
    yield "auth_echo_handler.lambda_handler"
    sys.path.remove(str(folder))


def call(gateway: Gateway, method: str, path: str, **headers: str) -> tuple[int, Any]:
    """One request through the gateway's WSGI application."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "RAW_URI": path,
        "wsgi.input": io.BytesIO(b""),
    }
    environ.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    setup_testing_defaults(environ)
    answer: dict[str, Any] = {}
    body = b"".join(gateway(environ, lambda status, h: answer.update(status=status)))
    return int(answer["status"].split()[0]), json.loads(body)


def test_the_gateway_refuses_anonymous_and_unscoped_writes_before_the_handler(
    echo_module: str, key: SigningKey, jwks: Path
) -> None:
    gateway = Gateway(echo_module, "F", 5, AuthConfig(jwks, ISSUER, (AUDIENCE,), ADMIN))
    for path in ("/models/scene/promote", "/models/scene/rollback/", "/models/new/uploads"):
        assert call(gateway, "POST", path) == (401, {"message": "Unauthorized"})
        token = key.token(scopes=["read"])
        assert call(gateway, "POST", path, authorization=f"Bearer {token}") == (
            403,
            {"message": "Forbidden"},
        )
    # An admin token reaches the handler, with what API Gateway would put in the event.
    status, context = call(
        gateway,
        "POST",
        "/models/scene/promote",
        authorization=f"Bearer {key.token(scopes=[ADMIN])}",
    )
    assert status == 200 and context["jwt"]["scopes"] == [ADMIN]
    assert context["jwt"]["claims"]["sub"] == "local-admin"
    # Reading routes have no authorizer by default (AuthType=NONE): no claims reach the handler,
    # even when the request carries a token.
    assert call(gateway, "GET", "/models") == (200, None)
    assert call(gateway, "POST", "/predict", authorization=f"Bearer {token}") == (200, None)


def test_with_auth_jwt_reads_need_a_token_but_the_console_files_do_not(
    echo_module: str, key: SigningKey, jwks: Path
) -> None:
    auth = AuthConfig(jwks, ISSUER, (AUDIENCE,), ADMIN, reads_need_jwt=True)
    gateway = Gateway(echo_module, "F", 5, auth)
    assert call(gateway, "GET", "/models")[0] == 401
    assert call(gateway, "GET", "/no/such/route")[0] == 401  # $default has AuthType too
    status, context = call(gateway, "GET", "/models", authorization=f"Bearer {key.token()}")
    assert status == 200 and context["jwt"]["claims"]["aud"] == AUDIENCE
    assert call(gateway, "GET", "/") == (200, None)
    assert call(gateway, "GET", "/console/app.js") == (200, None)


def test_without_a_jwks_no_write_is_possible_at_all(echo_module: str, key: SigningKey) -> None:
    gateway = Gateway(echo_module, "F", 5, AuthConfig())
    token = key.token(scopes=[ADMIN])
    for path in ("/models/scene/promote", "/models/scene/uploads"):
        assert call(gateway, "POST", path, authorization=f"Bearer {token}")[0] == 401
    assert call(gateway, "GET", "/models") == (200, None)
