"""Who may call what: public static files, reads as the API's auth setting says, admin writes.

API Gateway decides first: ``template.yaml`` puts its JWT authorizer, with the admin scope in
``AuthorizationScopes``, on every route of ``ADMIN_ROUTES``, whatever ``AuthType`` the reading
routes have; locally ``imgclf.local.gateway`` does the same with a local key. Either way the
verified token reaches the handler as ``requestContext.authorizer.jwt`` (``{"claims", "scopes"}``),
and ``require_admin`` checks it again (defence in depth: a route reached some other way, e.g. a
trailing slash that API Gateway routes to ``$default``, still finds no admin there).

Stdlib only: the local gateway imports this module too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imgclf.errors import ServiceError

# Route keys as template.yaml spells them ("METHOD /path/{param}").
# Always behind a JWT with the admin scope: they write to the data bucket or move a live alias;
# feedback also reads captured answers (the images people sent).
ADMIN_ROUTES = frozenset(
    {
        "POST /models/{name}/uploads",
        "POST /models/{name}/promote",
        "POST /models/{name}/rollback",
        "POST /feedback",
        "GET /feedback",
        "POST /feedback/{request_id}/approve",
        "POST /feedback/{request_id}/reject",
    }
)
# Never behind an authorizer: the web console's own files.
PUBLIC_ROUTES = frozenset({"GET /", "GET /console/{file}"})


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class Conflict(ServiceError):
    status, code = 409, "conflict"


def match_route_key(route_keys: frozenset[str], method: str, path: str) -> str | None:
    """The route key of ``route_keys`` a request matches, as API Gateway matches route paths.

    Args:
        route_keys: keys such as ``POST /models/{name}/promote``.
        method: the request's method.
        path: the request's path (a trailing slash is ignored, as the handler ignores it).

    Returns:
        The matching key, or None.
    """
    got = (path.rstrip("/") or "/").split("/")
    for key in route_keys:
        key_method, _, template = key.partition(" ")
        want = template.split("/")
        if key_method != method.upper() or len(want) != len(got):
            continue
        if all(
            (w.startswith("{") and w.endswith("}") and g) or w == g
            for w, g in zip(want, got, strict=True)
        ):
            return key
    return None


def token_scopes(claims: Mapping[str, Any]) -> set[str]:
    """The scopes of a JWT's claims: ``scope`` (space-separated, RFC 8693) or ``scp`` (a list or
    a space-separated string), which are the two claims API Gateway's JWT authorizer reads."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(str(v) for v in value)
    return scopes


def jwt_context(authorizer: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``requestContext.authorizer.jwt`` if API Gateway (or the local gateway) put one there."""
    jwt = authorizer.get("jwt")
    return jwt if isinstance(jwt, Mapping) else None


def require_admin(authorizer: Mapping[str, Any], scope: str) -> Mapping[str, Any]:
    """Checks that a verified JWT with the admin ``scope`` came with the request.

    Args:
        authorizer: the event's ``requestContext.authorizer``.
        scope: the admin scope (ADMIN_SCOPE).

    Returns:
        The token's claims (``sub`` names who did it).

    Raises:
        Unauthorized: no verified token.
        Forbidden: a token without the admin scope.
    """
    jwt = jwt_context(authorizer)
    if jwt is None:
        raise Unauthorized(f"this action needs an admin token: a JWT with the {scope} scope")
    claims = jwt.get("claims") if isinstance(jwt.get("claims"), Mapping) else {}
    scopes = jwt.get("scopes")
    granted = {str(s) for s in scopes} if isinstance(scopes, list) else token_scopes(claims)
    if scope not in granted:
        raise Forbidden(f"this token does not carry the {scope} scope")
    return claims
