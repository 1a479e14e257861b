"""Safe URL fetching (imgclf.serving.fetch) against real servers on loopback.

The SSRF table runs with the production address policy and a real listener on 127.0.0.1 (and
::1) that must never see a connection. The behaviour tests (redirects, slow servers, size caps)
allow exactly the loopback origin's address and port (PRIVATE_URL_ENDPOINTS), as the local stack
does for its image server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import FETCH_BODY, serve
from imgclf.errors import BadRequest, PayloadTooLarge, UpstreamError, UpstreamTimeout
from imgclf.serving.fetch import IPAddress, UrlFetcher, is_public_address
from imgclf.settings import ServeSettings


@pytest.fixture(scope="module")
def origin() -> Iterator[ThreadingHTTPServer]:
    with serve() as server:
        yield server


def url(server: ThreadingHTTPServer, path: str, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


def fetcher_for(port: int) -> UrlFetcher:
    """The fetcher the local stack's settings build for an image server on loopback at ``port``
    (``localhost`` names both addresses), with a short deadline."""
    env = {"PRIVATE_URL_ENDPOINTS": f"127.0.0.1:{port},[::1]:{port}", "URL_TIMEOUT_SECONDS": "1"}
    return UrlFetcher.from_settings(ServeSettings.from_env(env))


@pytest.fixture
def dev_fetcher(origin: ThreadingHTTPServer) -> UrlFetcher:
    return fetcher_for(origin.server_address[1])


class Listener:
    """Listening sockets on 127.0.0.1 and ::1 (one port) that record connections, never accept."""

    def __init__(self) -> None:
        self.v4 = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.v4.getsockname()[1]
        self.sockets = [self.v4]
        with contextlib.suppress(OSError):
            self.sockets.append(
                socket.create_server(("::1", self.port), family=socket.AF_INET6, backlog=64)
            )
        for sock in self.sockets:
            sock.setblocking(False)

    def connections(self) -> int:
        count = 0
        for sock in self.sockets:
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
        return count

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    listen = Listener()
    yield listen
    listen.close()


def refused_urls(port: int) -> list[str]:
    """Ways of writing an internal address (most of them reach the listener if fetched)."""
    return [
        f"http://127.0.0.1:{port}/",
        f"http://2130706433:{port}/",  # decimal
        f"http://0x7f000001:{port}/",  # hex
        f"http://0x7f.0.0.1:{port}/",  # hex, dotted
        f"http://0177.0.0.1:{port}/",  # octal
        f"http://017700000001:{port}/",  # octal, one number
        f"http://127.1:{port}/",  # short form
        f"http://0.0.0.0:{port}/",  # unspecified: Linux connects it to loopback
        f"http://0:{port}/",
        f"http://[::1]:{port}/",
        f"http://[0:0:0:0:0:0:0:1]:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{port}/",
        f"http://[::]:{port}/",
        f"http://localhost:{port}/",  # a name that resolves to loopback
        f"http://LOCALHOST:{port}/",
        f"https://localhost:{port}/",
        f"http://169.254.169.254:{port}/latest/meta-data/",  # instance metadata
        f"http://169.254.170.2:{port}/v2/credentials",  # ECS container credentials
        f"http://169.254.170.23:{port}/v1/credentials",  # EKS pod identity
        f"http://[fd00:ec2::254]:{port}/",  # IMDS over IPv6
        f"http://10.0.0.1:{port}/",
        f"http://172.16.0.1:{port}/",
        f"http://192.168.1.1:{port}/",
        f"http://100.64.0.1:{port}/",  # carrier-grade NAT
        f"http://224.0.0.1:{port}/",  # multicast
        f"http://[ff02::1]:{port}/",
        f"http://[fe80::1]:{port}/",
        f"http://[fc00::1]:{port}/",
        f"http://[64:ff9b::7f00:1]:{port}/",  # NAT64 of 127.0.0.1
        f"http://[2002:7f00:1::]:{port}/",  # 6to4 of 127.0.0.1
        # A trailing dot (an absolute name): the resolver does not take it off an address.
        f"http://127.0.0.1.:{port}/",
        f"http://2130706433.:{port}/",
        f"http://localhost.:{port}/",
        f"http://169.254.169.254.:{port}/latest/meta-data/",
    ]


def test_internal_addresses_are_refused_and_never_connected(listener: Listener) -> None:
    # GIVEN the production policy and a listener on loopback
    fetcher = UrlFetcher(timeout_seconds=2)
    # WHEN each way of naming an internal address is fetched
    for bad in refused_urls(listener.port):
        with pytest.raises(BadRequest) as caught:
            fetcher.fetch(bad)
        # THEN it is refused before any connection
        assert caught.value.code == "url_not_allowed", bad
    assert listener.connections() == 0


@pytest.mark.parametrize(
    "bad",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.jpg",
        "gopher://127.0.0.1:70/",
        "dict://127.0.0.1:11211/",
        "data:image/png;base64,iVBORw0KGgo=",
        "//example.com/x.jpg",
        "example.com/x.jpg",
        "http:///x.jpg",
        "http://user:pass@example.com/x.jpg",
        "http://[::1/",
        "http://example.com:99999/",
        "http://example.com/a.jpg\r\nX-Injected: 1",
        "http://example.com/a b.jpg",
        "http://./x.jpg",
        "http://127.0.0.1../x.jpg",
        "",
    ],
)
def test_malformed_urls_and_other_schemes_are_bad_requests(bad: str) -> None:
    with pytest.raises(BadRequest) as caught:
        UrlFetcher(timeout_seconds=1).fetch(bad)
    assert caught.value.code == "invalid_url"


def test_a_redirect_to_an_internal_address_is_refused_at_that_hop(listener: Listener) -> None:
    # GIVEN an origin on 127.0.0.2 that the policy trusts as if it were public
    trusted = ipaddress.ip_address("127.0.0.2")

    def policy(ip: IPAddress) -> bool:
        return ip == trusted or is_public_address(ip)

    fetcher = UrlFetcher(timeout_seconds=2, allow_address=policy)
    with serve("127.0.0.2") as server:
        assert fetcher.fetch(url(server, "/image", "127.0.0.2")) == FETCH_BODY
        for target in [
            f"http://127.0.0.1:{listener.port}/",
            f"http://localhost:{listener.port}/",
            f"http://[::1]:{listener.port}/",
            f"http://2130706433:{listener.port}/",
            "http://169.254.169.254/latest/meta-data/iam/",
        ]:
            # WHEN it redirects to an internal address
            with pytest.raises(BadRequest) as caught:
                fetcher.fetch(url(server, f"/redirect?to={target}", "127.0.0.2"))
            # THEN the redirect hop is refused
            assert caught.value.code == "url_not_allowed", target
        with pytest.raises(BadRequest) as caught:
            fetcher.fetch(url(server, "/redirect?to=file:///etc/passwd", "127.0.0.2"))
        assert caught.value.code == "invalid_url"
    assert listener.connections() == 0


def test_address_policies() -> None:
    public = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]
    internal = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "::1", "fe80::1"]
    always_refused = ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"]
    for text in public:
        assert is_public_address(ipaddress.ip_address(text)), text
    for text in internal + always_refused:
        assert not is_public_address(ipaddress.ip_address(text)), text
    assert not is_public_address(ipaddress.ip_address("::ffff:8.8.8.8"))


def test_private_endpoints_are_allowed_only_by_the_explicit_setting() -> None:
    assert UrlFetcher.from_settings(ServeSettings()).private_endpoints == frozenset()
    settings = ServeSettings.from_env({"PRIVATE_URL_ENDPOINTS": "127.0.0.1:3001, [::1]:3001"})
    assert UrlFetcher.from_settings(settings).private_endpoints == {
        (ipaddress.ip_address("127.0.0.1"), 3001),
        (ipaddress.ip_address("::1"), 3001),
    }


@pytest.mark.parametrize(
    "bad", ["127.0.0.1", "localhost:3001", "127.0.0.1:0", "::1:3001", "1.2.3.4:x"]
)
def test_a_private_endpoint_must_be_an_address_and_a_port(bad: str) -> None:
    with pytest.raises(ValueError, match="PRIVATE_URL_ENDPOINTS"):
        ServeSettings.from_env({"PRIVATE_URL_ENDPOINTS": bad})


def test_a_private_endpoint_allows_that_port_only_and_no_other_internal_address(
    origin: ThreadingHTTPServer, listener: Listener, dev_fetcher: UrlFetcher
) -> None:
    # GIVEN the fetcher allowed to reach the origin's address and port (the local stack's policy)
    assert dev_fetcher.fetch(url(origin, "/image")) == FETCH_BODY
    # WHEN a URL, or a redirect from the allowed origin, names another port or internal address
    for target in [
        f"http://127.0.0.1:{listener.port}/",
        f"http://[::1]:{listener.port}/",
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://10.0.0.1/",
        f"http://127.0.0.2:{origin.server_address[1]}/",
    ]:
        for request in (target, url(origin, f"/redirect?to={target}")):
            with pytest.raises(BadRequest) as caught:
                dev_fetcher.fetch(request)
            # THEN it is refused before any connection
            assert caught.value.code == "url_not_allowed", request
    assert listener.connections() == 0


def test_fetches_the_body_with_the_original_host_header(
    origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher
) -> None:
    port = origin.server_address[1]
    assert dev_fetcher.fetch(url(origin, "/image?size=1", "localhost")) == FETCH_BODY
    assert origin.seen[-1] == ("/image?size=1", f"localhost:{port}")


def test_a_trailing_dot_names_the_same_host(
    origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher
) -> None:
    # GIVEN hosts written as absolute names, an address and a name
    port = origin.server_address[1]
    for host in ("127.0.0.1.", "localhost."):
        # WHEN fetched (with the policy that allows loopback)
        assert dev_fetcher.fetch(url(origin, "/image", host)) == FETCH_BODY
        # THEN the origin sees the host without the dot
        assert origin.seen[-1] == ("/image", f"{host.rstrip('.')}:{port}")


def test_follows_a_few_redirects(origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher) -> None:
    target = url(origin, "/image")
    assert dev_fetcher.fetch(url(origin, f"/redirect?to={target}")) == FETCH_BODY
    assert dev_fetcher.fetch(url(origin, "/redirect?to=/image")) == FETCH_BODY  # relative Location


def test_too_many_redirects_is_502(origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher) -> None:
    before = len(origin.seen)
    with pytest.raises(UpstreamError) as caught:
        dev_fetcher.fetch(url(origin, "/loop"))
    assert caught.value.status == 502 and caught.value.code == "too_many_redirects"
    assert len(origin.seen) - before == dev_fetcher.max_redirects + 1


@pytest.mark.parametrize("path", ["/missing", "/no-location"])
def test_upstream_errors_are_502(
    origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher, path: str
) -> None:
    with pytest.raises(UpstreamError) as caught:
        dev_fetcher.fetch(url(origin, path))
    assert caught.value.status == 502


def test_refused_connection_and_unknown_host_are_502(
    listener: Listener,
) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    dev_fetcher = fetcher_for(port)
    with pytest.raises(UpstreamError) as caught:
        dev_fetcher.fetch(f"http://127.0.0.1:{port}/")
    assert caught.value.status == 502
    with pytest.raises(UpstreamError) as caught:
        dev_fetcher.fetch("http://no-such-host.invalid/x.jpg")
    assert caught.value.status == 502


@pytest.mark.parametrize("path", ["/declared-big", "/chunked-big"])
def test_oversized_bodies_are_413(
    origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher, path: str
) -> None:
    fetcher = dataclasses.replace(dev_fetcher, timeout_seconds=2, max_bytes=100_000)
    with pytest.raises(PayloadTooLarge) as caught:
        fetcher.fetch(url(origin, path))
    assert caught.value.status == 413


@pytest.mark.parametrize("path", ["/slow-headers", "/drip-headers", "/drip-body"])
def test_slow_servers_hit_the_total_deadline(
    origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher, path: str
) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout) as caught:
        dev_fetcher.fetch(url(origin, path))
    elapsed = time.monotonic() - started
    assert caught.value.status == 504
    # The deadline is 1 s; the drip servers would take 4-10 s without a total deadline.
    assert elapsed < dev_fetcher.timeout_seconds + 1.0


def test_a_deadline_already_spent_by_redirects_is_504(
    origin: ThreadingHTTPServer, dev_fetcher: UrlFetcher
) -> None:
    fetcher = dataclasses.replace(dev_fetcher, timeout_seconds=0.0)
    with pytest.raises(UpstreamTimeout):
        fetcher.fetch(url(origin, "/image"))


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, list[str]]]:
    """An HTTPS server with a self-signed certificate for localhost; yields (port, SNI names)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
        + ["-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    names: list[str] = []

    def record_sni(sock: ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(str(name))

    context.sni_callback = record_sni
    with serve() as server:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        yield server.server_address[1], names


def test_https_sends_sni_and_verifies_the_certificate(tls_origin: tuple[int, list[str]]) -> None:
    port, names = tls_origin
    dev_fetcher = fetcher_for(port)
    # The connection goes to the resolved 127.0.0.1, yet SNI and the check use the name.
    with pytest.raises(UpstreamError) as caught:
        dev_fetcher.fetch(f"https://localhost:{port}/image")
    assert caught.value.status == 502 and "not trusted" in caught.value.message
    assert names == ["localhost"]
