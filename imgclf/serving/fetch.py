"""Safe URL fetching for ``POST /predict`` with ``{"url": ...}``: no SSRF, bounded time and size.

Each hop is resolved once, every resolved address is checked, and the connection goes to that very
address (the Host header and TLS SNI/certificate check still use the name), so a DNS answer that
changes between the check and the connection (DNS rebinding) cannot reach an internal address.
Redirects repeat the whole check. One deadline covers resolution, connection, TLS, redirects and the
body; a byte cap applies while streaming. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from imgclf import __version__
from imgclf.errors import BadRequest, PayloadTooLarge, UpstreamError, UpstreamTimeout
from imgclf.settings import IPAddress, ServeSettings

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# getaddrinfo has no timeout of its own, and a slow authoritative server is one an attacker can run:
# resolving in a worker lets the request's deadline bound it.
_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


def _new_resolver_after_fork() -> None:
    """A forked child (a pre-forking server, the fuzz harness) has none of its parent's threads,
    and an executor that believes it has idle workers would queue every lookup forever."""
    global _RESOLVER
    _RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


os.register_at_fork(after_in_child=_new_resolver_after_fork)


def is_public_address(ip: IPAddress) -> bool:
    """Tells whether a fetch may connect to ``ip``: a globally routable unicast address.

    Refuses loopback, private, link-local (169.254.169.254, the container-credential endpoints),
    carrier-grade NAT, unspecified, multicast and reserved addresses, and every IPv6 form that
    embeds an IPv4 address (IPv4-mapped/-compatible, NAT64, 6to4, Teredo).

    Args:
        ip: a resolved address.

    Returns:
        True when the address may be fetched from.
    """
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour or ip.teredo):
        return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


@dataclass(frozen=True)
class _Target:
    """One hop's parsed URL."""

    scheme: str
    host: str
    port: int
    path: str


def _parse(url: str) -> _Target:
    """Parses and checks a URL's shape (scheme, host, no credentials), or raises 400."""
    if any(ch <= " " or ch == "\x7f" for ch in url):
        # http.client would refuse these later (header injection); say so as a client error.
        raise BadRequest("the URL contains spaces or control characters", code="invalid_url")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise BadRequest(f"invalid URL: {exc}", code="invalid_url") from exc
    if parts.scheme not in ("http", "https"):
        raise BadRequest("only http and https URLs can be fetched", code="invalid_url")
    if not host:
        raise BadRequest("the URL has no host", code="invalid_url")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("URLs with credentials are not fetched", code="invalid_url")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise BadRequest(f"invalid host name: {host!r}", code="invalid_url") from exc
    # A trailing dot only marks a name as absolute, and the resolver does not strip it from an
    # address: "127.0.0.1." would fail to resolve (a 502) rather than be refused as loopback.
    # Without it the address policy sees the address; the Host header and TLS SNI, which must
    # not carry the dot either, get the same name.
    host = host.rstrip(".")
    if not host:
        raise BadRequest("the URL has no host", code="invalid_url")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return _Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)


class _Watchdog:
    """Shuts a socket down at the deadline, so that no slow peer can stretch a blocking read.

    Socket timeouts bound each read, not their sum: a server sending one byte per second would
    otherwise hold a request for as long as it likes.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = threading.Event()
        self._sock = sock
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        # The base-class call reaches the file descriptor even for an SSLSocket, whose own
        # shutdown() would first tear down its TLS state under the reading thread.
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


@dataclass(frozen=True)
class UrlFetcher:
    """Downloads an image from a client-supplied URL without letting it reach internal services.

    Attributes:
        timeout_seconds: the total deadline, from the first DNS lookup to the last body byte.
        max_bytes: the largest body accepted (checked against Content-Length and while streaming).
        max_redirects: how many redirect hops are followed (each one checked like the first).
        allow_address: the address policy (``is_public_address``).
        private_endpoints: non-public ``(address, port)`` pairs allowed besides (the local
            stack's image server: PRIVATE_URL_ENDPOINTS); a redirect hop is checked the same way.
    """

    timeout_seconds: float = 5.0
    max_bytes: int = 4_500_000
    max_redirects: int = 3
    allow_address: Callable[[IPAddress], bool] = is_public_address
    private_endpoints: frozenset[tuple[IPAddress, int]] = frozenset()

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> UrlFetcher:
        """Builds the fetcher the settings describe."""
        return cls(
            timeout_seconds=settings.url_timeout_seconds,
            max_bytes=settings.url_max_bytes,
            max_redirects=settings.url_max_redirects,
            private_endpoints=settings.private_url_endpoints,
        )

    def fetch(self, url: str) -> bytes:
        """Downloads the body of ``url`` (http or https, following a few checked redirects).

        Args:
            url: the client's URL.

        Returns:
            The response body of the final hop (a 200).

        Raises:
            BadRequest: a malformed URL, a scheme other than http/https, or a host that is (or
                redirects to, or resolves to) an address the policy refuses.
            PayloadTooLarge: the body is larger than ``max_bytes``.
            UpstreamError: the host cannot be resolved or reached, answers with an error status,
                or redirects too often.
            UpstreamTimeout: the whole exchange took longer than ``timeout_seconds``.
        """
        deadline = time.monotonic() + self.timeout_seconds
        for _ in range(self.max_redirects + 1):
            target = _parse(url)
            addresses = self._resolve(target, deadline)
            status, location, body = self._get(target, addresses, deadline)
            if status not in _REDIRECTS:
                if status != 200:
                    raise UpstreamError(f"the URL answered with HTTP status {status}")
                return body
            if not location:
                raise UpstreamError(f"the URL answered {status} without a Location")
            url = urljoin(url, location)
        raise UpstreamError(
            f"the URL redirected more than {self.max_redirects} times", code="too_many_redirects"
        )

    def _resolve(self, target: _Target, deadline: float) -> list[IPAddress]:
        """Resolves the host once and returns its addresses, if every one of them is allowed."""
        future = _RESOLVER.submit(
            socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM
        )
        try:
            infos = future.result(timeout=max(deadline - time.monotonic(), 0.0))
        except FutureTimeout as exc:
            raise UpstreamTimeout(f"resolving {target.host} took too long") from exc
        except (OSError, UnicodeError) as exc:
            raise UpstreamError(f"cannot resolve {target.host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        # One refused address refuses the host: a name answering with both a public and an
        # internal address is exactly what a rebinding attack looks like.
        refused = [
            a
            for a in addresses
            if not self.allow_address(a) and (a, target.port) not in self.private_endpoints
        ]
        if refused:
            raise BadRequest(
                f"{target.host} resolves to an address that is not allowed ({refused[0]})",
                code="url_not_allowed",
            )
        return addresses

    @staticmethod
    def _connect(target: _Target, addresses: list[IPAddress], deadline: float) -> socket.socket:
        """Connects to the first of the checked addresses that answers (never to the name)."""
        error: OSError | None = None
        for address in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamTimeout(f"connecting to {target.host} took too long")
            try:
                return socket.create_connection((str(address), target.port), timeout=remaining)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"connecting to {target.host} took too long") from exc
            except OSError as exc:
                error = exc
        raise UpstreamError(f"cannot connect to {target.host}: {error}")

    def _get(
        self, target: _Target, addresses: list[IPAddress], deadline: float
    ) -> tuple[int, str | None, bytes]:
        """Sends one GET to the host's checked addresses; returns (status, Location, body)."""
        sock = self._connect(target, addresses, deadline)
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(
                sock, server_hostname=target.host, do_handshake_on_connect=False
            )
            conn = http.client.HTTPSConnection(target.host, target.port, context=context)
        else:
            conn = http.client.HTTPConnection(target.host, target.port)
        # A connection that already has a socket never connects (nor resolves) by itself.
        conn.sock = sock
        watchdog = _Watchdog(sock, deadline - time.monotonic())
        try:
            with watchdog:
                if isinstance(sock, ssl.SSLSocket):
                    sock.do_handshake()
                conn.request(
                    "GET",
                    target.path,
                    headers={
                        "User-Agent": f"imgclf/{__version__}",
                        "Accept": "image/*",
                        "Accept-Encoding": "identity",
                    },
                )
                response = conn.getresponse()
                if response.status != 200:
                    return response.status, response.getheader("Location"), b""
                body = self._read_body(response)
            if watchdog.fired.is_set():
                # The watchdog's shutdown can read as an early end of the body.
                raise UpstreamTimeout("the URL took too long to answer")
            return response.status, None, body
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamError(f"TLS certificate of {target.host} not trusted: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            if watchdog.fired.is_set() or isinstance(exc, TimeoutError):
                raise UpstreamTimeout("the URL took too long to answer") from exc
            raise UpstreamError(f"the request to {target.host} failed: {exc!r}") from exc
        finally:
            conn.close()

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        """Reads the body in chunks, refusing it as soon as it exceeds ``max_bytes``."""
        too_large = PayloadTooLarge(f"the URL's body is larger than {self.max_bytes} bytes")
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)
