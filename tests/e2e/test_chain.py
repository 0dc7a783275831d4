"""Tunnels through a parent proxy end to end: a second real gconnect and a scripted parent
that records what it was sent (Debian's tinyproxy as a parent: tests/interop/test_chain.py)."""

from __future__ import annotations

import socket
import threading

import bcrypt
import pytest

from gconnect.testing.process import free_port

from ..conftest import exchange, open_tunnel, read_head, recv_exactly

pytestmark = pytest.mark.timeout(60)


def test_through_a_parent_gconnect(start_proxy, echo):
    parent = start_proxy()
    child = start_proxy("--upstream", f"http://127.0.0.1:{parent.port}")
    with open_tunnel(child, f"echo.test:{echo.port}") as sock:
        sock.sendall(b"via parent")
        assert recv_exactly(sock, 10) == b"via parent"
    # The parent resolved and dialled the name; the child dialled the parent.
    assert f"addr=127.0.0.1:{echo.port}" in parent.wait_access(f"target=echo.test:{echo.port}")
    assert f"addr=127.0.0.1:{parent.port}" in child.wait_access(f"target=echo.test:{echo.port}")


def test_parent_named_by_host_name(start_proxy, echo):
    parent = start_proxy()
    # "web.test" comes from the fixture's hosts file, through our own resolver.
    child = start_proxy("--upstream", f"http://web.test:{parent.port}")
    with open_tunnel(child, echo.target) as sock:
        sock.sendall(b"named")
        assert recv_exactly(sock, 5) == b"named"
    parent.wait_access(f"target={echo.target}")


def test_parents_403_is_our_403_with_its_reason(start_proxy, echo):
    parent = start_proxy("--deny-dest", "127.0.0.1/32")
    child = start_proxy("--upstream", f"http://127.0.0.1:{parent.port}")
    status, _, body = exchange(child, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 403
    assert b"answered 403 Forbidden" in body
    assert "reason=parent_denied" in child.wait_access(f"target={echo.target}")


def test_parents_407_is_our_502(start_proxy, echo, tmp_path):
    # The parent wants credentials we did not give: our configuration, not the client's request.
    users = tmp_path / "parent.htpasswd"
    users.write_text("u:" + bcrypt.hashpw(b"p", bcrypt.gensalt(4)).decode() + "\n")
    parent = start_proxy("--auth-file", str(users))
    child = start_proxy("--upstream", f"http://127.0.0.1:{parent.port}")
    status, _, body = exchange(child, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 502
    assert b"answered 407" in body
    assert "reason=parent_refused" in child.wait_access(f"target={echo.target}")


def test_unreachable_parent_is_502(start_proxy, echo):
    child = start_proxy("--upstream", f"http://127.0.0.1:{free_port()}")
    status, _, body = exchange(child, f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
    assert status == 502 and b"connection refused" in body


def test_upstream_for_sends_only_matching_destinations(start_proxy, echo):
    parent = start_proxy()
    child = start_proxy("--upstream", f"http://127.0.0.1:{parent.port}", "--upstream-for", "*.test")
    open_tunnel(child, f"echo.test:{echo.port}").close()
    open_tunnel(child, echo.target).close()
    parent.wait_access(f"target=echo.test:{echo.port}")
    direct = child.wait_access(f"target={echo.target}")
    assert f"addr={echo.target}" in direct
    assert not any(f"target={echo.target}" in line for line in parent.access_lines())


class ScriptedParent:
    """A parent that records the request head and answers *response*, then
    (for a 200) sends *banner* at once and echoes."""

    def __init__(self, upstream_factory, response: bytes, banner: bytes = b"") -> None:
        self.heads: list[bytes] = []

        def handler(conn: socket.socket) -> None:
            head, rest = read_head(conn)
            self.heads.append(head)
            # One write: the banner arrives in the same segment as the 200.
            conn.sendall(response + banner)
            if not response.startswith(b"HTTP/1.1 200"):
                return
            if rest:
                conn.sendall(rest)
            while data := conn.recv(65536):
                conn.sendall(data)

        self.server = upstream_factory(handler)


def test_client_credentials_stay_here_and_parent_credentials_go(start_proxy, upstream_factory):
    parent = ScriptedParent(upstream_factory, b"HTTP/1.1 200 Connection established\r\n\r\n", b"220 banner\r\n")
    child = start_proxy("--upstream", f"http://alice:s3cret@127.0.0.1:{parent.server.port}")
    headers = b"Host: origin.test:443\r\nProxy-Authorization: Basic Y2xpZW50OnNlY3JldA==\r\nX-Client: 1\r\n"
    with open_tunnel(child, "origin.test:443", headers=headers) as sock:
        # Bytes the target sent right behind the parent's 200 reach the client.
        assert recv_exactly(sock, 12) == b"220 banner\r\n"
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
    (head,) = parent.heads
    assert head.startswith(b"CONNECT origin.test:443 HTTP/1.1\r\n")
    assert b"Y2xpZW50OnNlY3JldA==" not in head and b"X-Client" not in head
    assert b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0" in head


def test_parent_407_is_not_passed_to_the_client(start_proxy, upstream_factory):
    parent = ScriptedParent(
        upstream_factory,
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n',
    )
    child = start_proxy("--upstream", f"http://127.0.0.1:{parent.server.port}")
    status, headers, body = exchange(child, b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    assert status == 502 and "proxy-authenticate" not in headers
    assert b"answered 407 Proxy Authentication Required" in body


def test_silent_parent_is_504(start_proxy, upstream_factory):
    release = threading.Event()
    server = upstream_factory(lambda conn: release.wait(10))
    child = start_proxy("--upstream", f"http://127.0.0.1:{server.port}", "--connect-timeout", "0.3")
    try:
        status, _, body = exchange(child, b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
    finally:
        release.set()
    assert status == 504 and b"did not answer within 0.3 s" in body
