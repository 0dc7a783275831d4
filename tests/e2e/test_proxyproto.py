"""PROXY protocol v1/v2 end to end: the real CLI behind a hand-written header (the parser
on bytes alone: tests/unit/; HAProxy in front: tests/interop/)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gconnect.tunnel.proxyproto import render_v1, render_v2

from ..conftest import exchange, open_tunnel, read_head, recv_exactly
from ..unit.test_proxyproto import DST4, SRC4

pytestmark = pytest.mark.timeout(60)


def lb_proxy(start_proxy, trusted: str = "127.0.0.1/32"):
    return start_proxy("--proxy-protocol", "--proxy-protocol-from", trusted)


@pytest.mark.parametrize("render", [render_v1, render_v2])
def test_the_header_names_the_client_in_log_and_policy(start_proxy, echo, render):
    proxy = lb_proxy(start_proxy)
    header = render(SRC4, (proxy.host, proxy.port))
    # The header and the CONNECT in one write, as HAProxy often sends them.
    sock = proxy.connect()
    sock.sendall(header + f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\nearly".encode())
    head, rest = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest + recv_exactly(sock, 5 - len(rest)) == b"early"
    sock.close()
    assert "client=203.0.113.7:51234" in proxy.wait_access("client=203.0.113.7")


def test_local_command_keeps_the_connection_address(start_proxy, echo):
    proxy = lb_proxy(start_proxy)
    sock = proxy.connect()
    sock.sendall(render_v2(None) + f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    head, _ = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    port = sock.getsockname()[1]
    sock.close()
    proxy.wait_access(f"client=127.0.0.1:{port} ")


def test_trusted_source_without_a_header_is_400(start_proxy, echo):
    proxy = lb_proxy(start_proxy)
    status, _, body = exchange(proxy, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 400 and b"PROXY protocol header" in body
    assert "reason=bad_proxy_header" in proxy.wait_access("status=400")


def test_untrusted_source_cannot_claim_an_address(start_proxy, echo):
    proxy = lb_proxy(start_proxy, trusted="10.0.0.0/8")
    # Its header is not read as one: "PROXY" is just a method we do not serve
    # (neither CONNECT nor one gconnect forwards: 501; 405 with --forward-http off).
    status, _, _ = exchange(proxy, render_v1(SRC4, DST4) + b"CONNECT a.test:1 HTTP/1.1\r\n\r\n")
    assert status == 501
    assert "203.0.113.7" not in "\n".join(proxy.access_lines())
    # A direct client from there is served as itself.
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"direct")
        assert recv_exactly(sock, 6) == b"direct"


def test_proxy_protocol_requires_trusted_sources():
    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--proxy-protocol"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "proxy_protocol needs proxy_protocol_from" in result.stderr
