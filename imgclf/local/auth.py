"""API Gateway's JWT authorizer, locally: a local signing key, its JWKS file, tokens, and the check.

The local stack makes an RSA key when it starts, writes the public half as a JWKS file (what an
identity provider publishes at its ``jwks_uri``) and signs one admin token with the private half,
which it prints; the key itself never leaves the stack's memory. The gateway checks each request
of a route that has an authorizer as HTTP API's JWT authorizer does (``JwtAuthorizer``):

- no ``Authorization`` header, or no valid token in it: 401 ``{"message": "Unauthorized"}``;
- valid means: RS256 signed by a key of the JWKS (by ``kid``), ``iss`` is the issuer, ``aud``
  (or ``client_id`` when there is no ``aud``) is an audience, ``exp`` in the future, ``nbf`` and
  ``iat`` not in the future;
- a route with authorization scopes (the admin routes) needs one of them in the token's ``scope``
  or ``scp`` claim, else 403 ``{"message": "Forbidden"}``;
- then the claims and scopes go to the handler in ``requestContext.authorizer.jwt``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from imgclf.serving.auth import token_scopes

ISSUER = "http://127.0.0.1/imgclf-local"
AUDIENCE = "imgclf-console"
ALGORITHM = "RS256"
# A local admin token lasts a working day; restart the stack for a new one.
TOKEN_SECONDS = 12 * 3600


class Denied(Exception):
    """The authorizer refused the request: ``status`` 401 or 403, API Gateway's ``message``."""

    def __init__(self, status: int, message: str, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SigningKey:
    """An RSA key and its id: signs tokens; its public half is the JWKS."""

    key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh 2048-bit key with a random id."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), uuid.uuid4().hex)

    def jwks(self) -> dict[str, Any]:
        """The public key as a JSON Web Key Set."""
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}

    def write_jwks(self, path: Path) -> Path:
        """Writes the JWKS file the gateway reads."""
        path.write_text(json.dumps(self.jwks(), indent=2))
        return path

    def token(
        self,
        *,
        scopes: Sequence[str] = (),
        subject: str = "local-admin",
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        seconds: float = TOKEN_SECONDS,
        now: float | None = None,
    ) -> str:
        """Signs a token (what an identity provider would issue).

        Args:
            scopes: its ``scope`` claim (space-separated, as Cognito and Auth0 write it).
            subject: its ``sub``.
            issuer: its ``iss``.
            audience: its ``aud``.
            seconds: how long it is valid.
            now: the issue time (default: now).

        Returns:
            The compact JWT.
        """
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": int(issued + seconds),
            "jti": uuid.uuid4().hex,
            "scope": " ".join(scopes),
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})


def _claim_text(value: Any) -> str:
    # API Gateway hands every claim to the function as a string; a list as "[a b]".
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + " ".join(map(str, value)) + "]"
    return json.dumps(value)


@dataclass(frozen=True)
class JwtAuthorizer:
    """HTTP API's JWT authorizer with keys from a local JWKS file."""

    issuer: str
    audiences: tuple[str, ...]
    keys: Mapping[str, Any]

    @classmethod
    def from_jwks_file(cls, path: Path, issuer: str, audiences: Sequence[str]) -> JwtAuthorizer:
        """Reads the JWKS file (once: a new key means a new stack, and new workers)."""
        keys = {
            jwk["kid"]: jwt.PyJWK(jwk).key
            for jwk in json.loads(path.read_text())["keys"]
            if jwk.get("kid")
        }
        return cls(issuer, tuple(audiences), keys)

    def authorize(self, headers: Mapping[str, str], scopes: Sequence[str] = ()) -> dict[str, Any]:
        """Checks a request's bearer token.

        Args:
            headers: the request headers, lower-case names.
            scopes: the route's authorization scopes (any one of them suffices), or none.

        Returns:
            ``requestContext.authorizer`` for the event: ``{"jwt": {"claims", "scopes"}}``.

        Raises:
            Denied: 401 for a missing or invalid token, 403 for a token without the scopes.
        """
        value = headers.get("authorization", "").strip()
        token = value[7:].strip() if value[:7].lower() == "bearer " else value
        if not token:
            raise Denied(401, "Unauthorized", "no token")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid not in self.keys:
                raise Denied(401, "Unauthorized", f"unknown key id {kid!r}")
            claims = jwt.decode(
                token,
                self.keys[kid],
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={"require": ["exp", "iss"], "verify_aud": False},
                leeway=0,
            )
        except jwt.PyJWTError as exc:
            raise Denied(401, "Unauthorized", f"invalid token: {exc}") from exc
        audience = claims.get("aud", claims.get("client_id"))
        audience = audience if isinstance(audience, list) else [audience]
        if not set(audience) & set(self.audiences):
            raise Denied(401, "Unauthorized", f"audience {audience} is not {self.audiences}")
        granted = token_scopes(claims)
        if scopes and not granted & set(scopes):
            raise Denied(403, "Forbidden", f"scopes {sorted(granted)} lack any of {list(scopes)}")
        return {
            "jwt": {
                "claims": {name: _claim_text(v) for name, v in claims.items()},
                "scopes": sorted(granted) if granted else None,
            }
        }
