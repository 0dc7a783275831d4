"""Limits, end to end: --max-clients answers 503 and keeps accepting,
--max-clients-per-ip answers 429 to one address only, --max-tunnel-lifetime
ends busy tunnels, and running out of descriptors pauses accept() quietly and
recovers."""

from __future__ import annotations

import resource
import socket
import time

import pytest

from gconnect.testing.procfs import cpu_seconds

from ..conftest import HAVE_IPV6, exchange, open_tunnel, recv_exactly, wait_until
from .test_errors import proxy_status_error

pytestmark = pytest.mark.timeout(90)


def connect_head(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def ping(sock: socket.socket, data: bytes = b"ping") -> None:
    sock.sendall(data)
    assert recv_exactly(sock, len(data)) == data


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback")
def test_per_ip_limit_over_ipv6(start_proxy, echo):
    proxy = start_proxy("--listen", "[::1]:0", "--max-clients-per-ip", "1")
    wait_until(lambda: len(proxy.addresses) == 2)  # one "listening on" line per listener
    v6 = next(address for address in proxy.addresses if ":" in address[0])
    held = socket.create_connection(v6, timeout=10)
    held.sendall(connect_head(echo.target))
    assert held.recv(4096).startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(v6, timeout=10) as sock:
        sock.sendall(connect_head(echo.target))
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 429 ") and b"::/64" in answer, answer
    held.close()


def test_max_clients_answers_503_and_keeps_accepting(start_proxy, echo):
    proxy = start_proxy("--max-clients", "2")
    held = [open_tunnel(proxy, echo.target) for _ in range(2)]
    # Twenty over the limit: every one gets its answer, none is left hanging.
    for _ in range(20):
        status, headers, body = exchange(proxy, connect_head(echo.target))
        assert status == 503, body
        assert headers["retry-after"] == "1"
        assert b"maximum of 2 clients" in body
        assert proxy_status_error(headers["proxy-status"]) == "connection_limit_reached"
    assert echo.accepted == 2
    for sock in held:
        ping(sock)
    held.pop().close()
    # The slot is freed when the tunnel's handler returns, which the access line marks.
    wait_until(lambda: sum("status=200" in line for line in proxy.access_lines()) == 1)
    with open_tunnel(proxy, echo.target) as sock:
        ping(sock)
    assert "reason=too_many_clients" in proxy.wait_access("status=503")
    held[0].close()


def test_max_clients_per_ip_answers_429_to_that_address_only(start_proxy, echo):
    proxy = start_proxy("--max-clients-per-ip", "2")
    held = [open_tunnel(proxy, echo.target) for _ in range(2)]
    status, headers, body = exchange(proxy, connect_head(echo.target))
    assert status == 429 and headers["retry-after"] == "1"
    assert b"127.0.0.1 already has 2 connections" in body
    assert proxy_status_error(headers["proxy-status"]) == "connection_limit_reached"
    # Another address on loopback is a different client.
    other = socket.socket()
    other.bind(("127.0.0.2", 0))
    other.connect((proxy.host, proxy.port))
    other.sendall(connect_head(echo.target))
    assert other.recv(4096).startswith(b"HTTP/1.1 200 ")
    ping(other)
    other.close()
    for sock in held:
        sock.close()
    wait_until(lambda: sum("status=200" in line for line in proxy.access_lines()) == 3)
    with open_tunnel(proxy, echo.target) as sock:
        ping(sock)
    assert "reason=too_many_per_address" in proxy.wait_access("status=429")


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_max_tunnel_lifetime_ends_a_busy_tunnel(start_proxy, echo, relay):
    proxy = start_proxy("--relay", relay, "--max-tunnel-lifetime", "0.5")
    sock = open_tunnel(proxy, echo.target)
    started = time.monotonic()
    # Never idle: a ping every few ms, until the proxy ends the tunnel.
    with pytest.raises((AssertionError, OSError)):
        while time.monotonic() - started < 10:
            ping(sock)
    lived = time.monotonic() - started
    sock.close()
    assert 0.4 < lived < 3, lived
    assert "reason=lifetime" in proxy.wait_access(f"target={echo.target}")


def _limit_descriptors(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def test_descriptor_exhaustion_pauses_accept_logs_once_and_recovers(start_proxy, echo):
    limit = 64
    proxy = start_proxy("--relay", "copy", "--header-timeout", "60", preexec_fn=_limit_descriptors(limit))
    assert proxy.fd_count() < limit // 2, proxy.fd_count()
    # Hold tunnels (two descriptors each) until the proxy cannot open another.
    held: list[socket.socket] = []
    refusal = b""
    for _ in range(limit):
        sock = proxy.connect()
        sock.settimeout(2)
        sock.sendall(connect_head(echo.target))
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b""
        if not answer.startswith(b"HTTP/1.1 200 "):
            sock.close()
            refusal = answer
            break
        held.append(sock)
    assert len(held) > 10, len(held)
    if refusal:
        # Accepted, but no descriptor left for the upstream socket: the proxy's own
        # overload (503), not a failure of the destination (502).
        assert refusal.startswith(b"HTTP/1.1 503 ") and b"cannot open a socket" in refusal, refusal
    # A few more clients: the first take the last descriptors, the rest wait in the backlog.
    waiting = []
    for _ in range(5):
        sock = proxy.connect()
        sock.sendall(connect_head(echo.target))
        waiting.append(sock)
    wait_until(lambda: any("accept: Too many open files (EMFILE)" in line for line in proxy.lines))
    # Backing off, not spinning on the readable listener: little CPU, one log line.
    cpu_before = sum(cpu_seconds(proxy.pid))
    time.sleep(1.5)  # the observation window itself, not synchronisation
    assert sum(cpu_seconds(proxy.pid)) - cpu_before < 0.3
    assert sum("Too many open files" in line for line in proxy.lines) == 1, proxy.stderr
    assert proxy.proc.poll() is None
    # Descriptors come back: the proxy serves the clients that waited, then new ones.
    for sock in held:
        sock.close()
    for sock in waiting:
        sock.settimeout(10)
        data = sock.recv(4096)
        assert data.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 503 ")), data
        sock.close()
    with open_tunnel(proxy, echo.target) as sock:
        ping(sock)
    # One episode: one error line, one recovery line once accept() stays healthy.
    wait_until(lambda: any("descriptors available again" in line for line in proxy.lines))
    assert sum("descriptors available again" in line for line in proxy.lines) == 1
    assert sum("Too many open files" in line for line in proxy.lines) == 1
