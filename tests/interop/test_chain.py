"""A real third-party parent proxy: tinyproxy behind gconnect."""

from __future__ import annotations

import pytest

from ..conftest import exchange, open_tunnel, recv_exactly

pytestmark = pytest.mark.timeout(60)


def test_through_tinyproxy(start_proxy, echo, tinyproxy):
    child = start_proxy("--upstream", f"http://127.0.0.1:{tinyproxy}")
    with open_tunnel(child, f"127.0.0.1:{echo.port}") as sock:
        sock.sendall(b"tiny")
        assert recv_exactly(sock, 4) == b"tiny"
    assert f"addr=127.0.0.1:{tinyproxy}" in child.wait_access(f"target=127.0.0.1:{echo.port}")


def test_tinyproxy_refusal_is_relayed_as_502(start_proxy, tinyproxy):
    child = start_proxy("--upstream", f"http://127.0.0.1:{tinyproxy}")
    # A name nobody resolves: tinyproxy answers an error status of its own.
    status, _, body = exchange(
        child, b"CONNECT no-such-host.invalid:443 HTTP/1.1\r\nHost: no-such-host.invalid:443\r\n\r\n"
    )
    assert status == 502 and b"parent proxy http://127.0.0.1:" in body and b"answered" in body
