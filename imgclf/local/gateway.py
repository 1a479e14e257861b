"""The local API gateway: HTTP requests to HTTP API payload-2.0 events for a handler, and back.

gunicorn runs it with sync workers, and each worker is one Lambda execution environment: it imports
the handler itself (its own cold start; nothing is preloaded in the master) and handles one request
at a time, while the listen socket queues the rest. A request that runs past the function timeout
gets API Gateway's answer to a failed function, and the worker is then replaced, as Lambda replaces
an environment after a timeout.

Authorization as ``template.yaml`` configures it (``imgclf.local.auth`` checks the tokens): the
admin routes (``imgclf.serving.auth.ADMIN_ROUTES``) always need a JWT with the admin scope, signed
by a key of the ``--jwks`` file (without one, they answer 401 to everyone); ``--auth jwt`` puts
every other route but the console's public files behind a valid JWT too (``AuthType=JWT``).

Usage: python -m imgclf.local.gateway --bind 127.0.0.1:3000 --workers 2 [--timeout 30]
       [--jwks FILE --jwt-issuer URL --jwt-audience AUD [--admin-scope S] [--auth none|jwt]]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from gunicorn.app.base import BaseApplication

from imgclf.local.auth import Denied, JwtAuthorizer
from imgclf.local.context import ACCOUNT_ID, LambdaContext, die_with_parent, import_handler
from imgclf.serving.auth import ADMIN_ROUTES, PUBLIC_ROUTES, match_route_key
from imgclf.settings import ServeSettings

# API Gateway HTTP API's payload quota, and Lambda's limit on a synchronous invocation's event.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_EVENT_BYTES = 6_291_456
# HTTP API passes these bodies as text; everything else is base64-encoded (isBase64Encoded).
TEXT_MEDIA_TYPES = (
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/x-www-form-urlencoded",
)
# Set by a request that timed out; gunicorn's post_request hook then retires the worker.
RESET_ENVIRON_KEY = "imgclf.reset_environment"
SHUTDOWN_GRACE_SECONDS = 5
# Headers a WSGI application must not set; the server owns the connection.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}

log = logging.getLogger("gunicorn.error")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Response = tuple[int, list[tuple[str, str]], bytes]


class FunctionTimeout(BaseException):
    """Raised in the handler when the function timeout expires.

    A BaseException, so that the handler's own ``except Exception`` cannot swallow it.
    """


def _is_text(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith(TEXT_MEDIA_TYPES) or media_type.endswith("+json")


def _request_headers(environ: dict[str, Any]) -> dict[str, str]:
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    # API Gateway adds these; handlers that log the client address read them.
    headers["x-forwarded-for"] = environ.get("REMOTE_ADDR", "127.0.0.1")
    headers["x-forwarded-port"] = str(environ.get("SERVER_PORT", ""))
    headers["x-forwarded-proto"] = environ.get("wsgi.url_scheme", "http")
    return headers


def build_event(environ: dict[str, Any], body: bytes, request_id: str) -> dict[str, Any]:
    """Builds the API Gateway HTTP API payload-2.0 event for one HTTP request.

    Args:
        environ: the WSGI environment of the request.
        body: the request body.
        request_id: the API Gateway request id to put in ``requestContext``.

    Returns:
        The event, as API Gateway would pass it to the Lambda handler.
    """
    headers = _request_headers(environ)
    cookie_header = headers.pop("cookie", "")
    raw_path = environ.get("RAW_URI", environ.get("PATH_INFO", "/")).split("?", 1)[0] or "/"
    raw_query = environ.get("QUERY_STRING", "")
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "domainPrefix": headers.get("host", "localhost").split(".", 1)[0],
            "http": {
                "method": environ["REQUEST_METHOD"],
                "path": raw_path,
                "protocol": environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                "sourceIp": environ.get("REMOTE_ADDR", "127.0.0.1"),
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookie_header:
        event["cookies"] = [c.strip() for c in cookie_header.split(";") if c.strip()]
    if raw_query:
        params: dict[str, str] = {}
        # Repeated parameters are joined with commas, as in payload 2.0.
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        if _is_text(headers.get("content-type", "")):
            with contextlib.suppress(UnicodeDecodeError):
                event["body"] = body.decode("utf-8")
        if "body" not in event:
            event["body"] = base64.b64encode(body).decode("ascii")
            event["isBase64Encoded"] = True
    return event


def _message(status: int, message: str) -> Response:
    """API Gateway's own error answer, e.g. ``{"message": "Internal Server Error"}``."""
    body = json.dumps({"message": message}).encode()
    return status, [("content-type", "application/json")], body


def build_response(result: Any) -> Response:
    """Turns a handler's result into an HTTP response, as HTTP API payload 2.0 does.

    A dict with ``statusCode`` is a full response (headers, cookies, body, isBase64Encoded); any
    other JSON value is answered as a 200 ``application/json`` body.

    Args:
        result: the handler's return value, after a JSON round trip.

    Returns:
        (status, headers, body bytes).
    """
    if not (isinstance(result, dict) and "statusCode" in result):
        return 200, [("content-type", "application/json")], json.dumps(result).encode()
    status = int(result["statusCode"])
    headers = [
        (str(name).lower(), str(value))
        for name, value in (result.get("headers") or {}).items()
        if str(name).lower() not in HOP_BY_HOP
    ]
    headers += [("set-cookie", str(cookie)) for cookie in result.get("cookies") or []]
    raw_body = result.get("body") or ""
    if not isinstance(raw_body, str):
        raise TypeError(f"body must be a string, got {type(raw_body).__name__}")
    body = base64.b64decode(raw_body) if result.get("isBase64Encoded") else raw_body.encode()
    return status, headers, body


def _raise_timeout(signum: int, frame: Any) -> None:
    raise FunctionTimeout()


@dataclass(frozen=True)
class AuthConfig:
    """What the template's authorizers say, for the local gateway.

    Attributes:
        jwks: the JWKS file of the keys tokens are signed with (None: no token is valid).
        issuer: the tokens' ``iss``.
        audiences: accepted ``aud`` values.
        admin_scope: the scope the admin routes require.
        reads_need_jwt: ``AuthType=JWT``: every non-public route needs a valid token.
    """

    jwks: Path | None = None
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    admin_scope: str = ServeSettings().admin_scope
    reads_need_jwt: bool = False

    def authorizer(self) -> JwtAuthorizer | None:
        """The token checker (reads the JWKS file), or None without one."""
        if self.jwks is None:
            return None
        return JwtAuthorizer.from_jwks_file(self.jwks, self.issuer, self.audiences)


class Gateway:
    """The WSGI application of one worker: one execution environment of the function."""

    def __init__(
        self,
        handler_path: str,
        function_name: str,
        timeout_seconds: float,
        auth: AuthConfig | None = None,
    ) -> None:
        started = time.perf_counter()
        self.handler = import_handler(handler_path)
        self.init_ms: float | None = (time.perf_counter() - started) * 1000
        self.function_name = function_name
        self.timeout_seconds = timeout_seconds
        self.auth = auth or AuthConfig()
        self.authorizer = self.auth.authorizer()
        log.info("INIT %s in worker %d: %.1f ms", handler_path, os.getpid(), self.init_ms)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serves one HTTP request through the handler (the WSGI entry point).

        Args:
            environ: the WSGI environment.
            start_response: the WSGI callback for the status and headers.

        Returns:
            The response body.
        """
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        status, headers, body = self._serve(environ, request_id)
        headers += [("apigw-requestid", request_id), ("content-length", str(len(body)))]
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        init = f" Init Duration: {self.init_ms:.1f} ms" if self.init_ms is not None else ""
        self.init_ms = None  # reported once, with the first invocation, as Lambda does
        log.info(
            "REPORT RequestId: %s %s %s -> %d Duration: %.1f ms%s",
            request_id,
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", "/"),
            status,
            (time.perf_counter() - started) * 1000,
            init,
        )
        return [body]

    def _serve(self, environ: dict[str, Any], request_id: str) -> Response:
        declared = int(environ.get("CONTENT_LENGTH") or 0)
        if declared > MAX_REQUEST_BYTES:
            return _message(413, "Request Entity Too Large")
        body = environ["wsgi.input"].read(MAX_REQUEST_BYTES + 1)
        if len(body) > MAX_REQUEST_BYTES:
            return _message(413, "Request Entity Too Large")
        event = build_event(environ, body, request_id)
        try:
            authorizer = self._authorize(event)
        except Denied as exc:
            log.info(
                "authorizer: %d for %s %s: %s",
                exc.status,
                environ["REQUEST_METHOD"],
                event["rawPath"],
                exc,
            )
            return _message(exc.status, exc.message)
        if authorizer is not None:
            event["requestContext"]["authorizer"] = authorizer
        if len(json.dumps(event)) > MAX_EVENT_BYTES:
            return _message(413, "Request Entity Too Large")
        context = LambdaContext(self.function_name, self.timeout_seconds)
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_seconds)
        try:
            # The JSON round trip gives the handler a fresh event and checks that the result is
            # serialisable, as the Lambda runtime does.
            result = json.loads(json.dumps(self.handler(json.loads(json.dumps(event)), context)))
            return build_response(result)
        except FunctionTimeout:
            log.error("Task timed out after %.2f seconds (%s)", self.timeout_seconds, request_id)
            environ[RESET_ENVIRON_KEY] = True
            return _message(500, "Internal Server Error")
        except Exception:
            log.exception("handler failed (RequestId: %s)", request_id)
            return _message(500, "Internal Server Error")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _route_auth(self, method: str, path: str) -> tuple[str, ...] | None:
        """The scopes a route's authorizer requires (``()``: any valid token), or None when the
        route has no authorizer."""
        if match_route_key(ADMIN_ROUTES, method, path):
            return (self.auth.admin_scope,)
        if self.auth.reads_need_jwt and not match_route_key(PUBLIC_ROUTES, method, path):
            return ()
        return None

    def _authorize(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """``requestContext.authorizer`` for a route with an authorizer, None for one without.

        Raises:
            Denied: the token is missing, invalid or lacks the route's scopes.
        """
        scopes = self._route_auth(event["requestContext"]["http"]["method"], event["rawPath"])
        if scopes is None:
            return None
        if self.authorizer is None:
            raise Denied(401, "Unauthorized", "no JWKS configured: no token can be valid")
        return self.authorizer.authorize(event["headers"], scopes)


def _retire_after_timeout(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    # gunicorn's post_request hook: a timed-out environment is not reused; the arbiter starts a
    # fresh worker (with a fresh cold start) in its place.
    if environ.get(RESET_ENVIRON_KEY):
        worker.alive = False


class GatewayServer(BaseApplication):
    """gunicorn with sync workers, each running its own ``Gateway`` (no preloading)."""

    def __init__(
        self,
        bind: str,
        workers: int,
        handler_path: str,
        function_name: str,
        timeout: float,
        auth: AuthConfig | None = None,
    ) -> None:
        self.options = {
            "bind": bind,
            "workers": workers,
            "worker_class": "sync",
            "preload_app": False,
            # gunicorn's own timeout is only the backstop for a worker stuck outside Python.
            "timeout": int(timeout) + 10,
            "graceful_timeout": SHUTDOWN_GRACE_SECONDS,
            "post_request": _retire_after_timeout,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": "imgclf-gateway",
            # Its default path is per user, so two stacks (a test's and yours) would collide.
            "control_socket_disable": True,
        }
        self.handler_path = handler_path
        self.function_name = function_name
        self.timeout = timeout
        self.auth = auth
        super().__init__()

    def load_config(self) -> None:
        """Applies the options to gunicorn's configuration."""
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Gateway:
        """Runs in each worker (no preload): imports the handler, the worker's cold start."""
        return Gateway(self.handler_path, self.function_name, self.timeout, self.auth)


def main(argv: list[str] | None = None) -> int:
    """Runs the gateway until SIGINT or SIGTERM.

    Args:
        argv: command line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", default="127.0.0.1:3000", help="host:port to listen on")
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes = execution environments"
    )
    parser.add_argument("--handler", default="lambda_func.lambda_handler", help="module.function")
    parser.add_argument("--function-name", default="PredictFunction", help="name in the context")
    parser.add_argument("--timeout", type=float, default=30.0, help="function timeout, seconds")
    parser.add_argument("--jwks", type=Path, help="JWKS file of the keys tokens are signed with")
    parser.add_argument("--jwt-issuer", default="", help="the tokens' issuer (iss)")
    parser.add_argument("--jwt-audience", default="", help="accepted audiences, comma-separated")
    parser.add_argument("--admin-scope", default=AuthConfig.admin_scope, help="admin routes' scope")
    parser.add_argument(
        "--auth", choices=("none", "jwt"), default="none", help="the reading routes' AuthType"
    )
    args = parser.parse_args(argv)
    auth = AuthConfig(
        jwks=args.jwks,
        issuer=args.jwt_issuer,
        audiences=tuple(a for a in args.jwt_audience.split(",") if a),
        admin_scope=args.admin_scope,
        reads_need_jwt=args.auth == "jwt",
    )
    die_with_parent()  # in the master: its workers are in its process group
    server = GatewayServer(
        args.bind, args.workers, args.handler, args.function_name, args.timeout, auth
    )
    server.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
