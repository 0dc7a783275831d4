"""Attacks against a running proxy, end to end. The single malformed heads
(garbage, NUL, bare LF, obs-fold, bad ports, absolute-form, conflicting Host,
CONNECT with a body, names resolving to loopback or 169.254.169.254) are in
test_errors.py; here are the crowds (idle clients, slowloris), request
smuggling, pipelining, IDN and over-long names, and floods. After every attack
a normal tunnel still works."""

from __future__ import annotations

import os
import resource
import select
import socket
import time

import pytest

from ..conftest import exchange, open_tunnel, recv_exactly, wait_until
from .test_errors import assert_refused, head, still_serves

pytestmark = pytest.mark.timeout(120)

IDLE_CLIENTS = 2000


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def timed_tunnel(proxy, echo) -> float:
    started = time.monotonic()
    with open_tunnel(proxy, echo.target) as sock:
        sock.sendall(b"prompt")
        assert recv_exactly(sock, 6) == b"prompt"
    return time.monotonic() - started


def test_2000_idle_clients_do_not_delay_a_new_tunnel(start_proxy, echo):
    _raise_nofile(IDLE_CLIENTS + 500)
    proxy = start_proxy("--header-timeout", "60")
    idle = []
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(socket.create_connection((proxy.host, proxy.port), timeout=10))
        # Every one accepted and parked on its head (one descriptor each in the proxy).
        wait_until(lambda: proxy.fd_count() >= IDLE_CLIENTS, timeout=30)
        assert timed_tunnel(proxy, echo) < 1.0
        # They are still there, still waiting: nothing was dropped to make room.
        ready, _, _ = select.select(idle[:500], [], [], 0)
        assert not ready
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: proxy.fd_count() < 100, timeout=30)
    still_serves(proxy, echo)


def test_slowloris_crowd_is_cut_at_the_head_deadline_and_others_are_served(start_proxy, echo):
    clients = 300
    proxy = start_proxy("--header-timeout", "1")
    socks = [socket.create_connection((proxy.host, proxy.port), timeout=10) for _ in range(clients)]
    for sock in socks:
        sock.setblocking(False)
    trickle = b"CONNECT " + f"{echo.target} HTTP/1.1\r\nX-Slow: ".encode() + b"a" * 10_000
    answered: dict[socket.socket, bytes] = {}
    started = time.monotonic()
    position = 0
    while len(answered) < clients and time.monotonic() - started < 10:
        # One byte per client every 20 ms: each byte arrives well within any per-read timeout.
        for sock in socks:
            if sock not in answered:
                try:
                    sock.send(trickle[position : position + 1])
                except OSError:
                    pass
        position += 1
        ready, _, _ = select.select([s for s in socks if s not in answered], [], [], 0.02)
        for sock in ready:
            try:
                answered[sock] = sock.recv(4096)
            except OSError:
                answered[sock] = b""
        if position == 10:
            # Mid-attack, a normal client is served at once.
            assert timed_tunnel(proxy, echo) < 1.0
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    assert len(answered) == clients
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in answered.values())
    assert elapsed < 4, elapsed  # the deadline (1 s) cut them, not the end of their trickle
    still_serves(proxy, echo)


# Request smuggling: a CONNECT has no body (RFC 9110 §9.3.6). Content-Length
# other than 0 and any Transfer-Encoding are refused with 400 before anything is
# dialled; with no body, every byte after the head is tunnel data, handed to the
# destination verbatim and never parsed as another request.

SMUGGLING = [
    head("{t}", "Host: {t}", "Content-Length: 44") + b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n",
    head("{t}", "Host: {t}", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    head("{t}", "Host: {t}", "Transfer-Encoding: identity"),
    head("{t}", "Host: {t}", "Content-Length: 0", "Transfer-Encoding: chunked"),
    head("{t}", "Host: {t}", "Content-Length: 0", "Content-Length: 5") + b"hello",
    head("{t}", "Host: {t}", "Content-Length: 0, 5") + b"hello",
    head("{t}", "Host: {t}", "Content-Length: -1"),
    head("{t}", "Host: {t}", "Transfer-Encoding : chunked"),
    head("{t}", "Host: {t}", " Transfer-Encoding: chunked"),
]


@pytest.mark.parametrize("template", SMUGGLING)
def test_smuggling_attempts_are_400_and_nothing_is_dialled(proxy, echo, template):
    raw = template.replace(b"{t}", echo.target.encode())
    status, _, _ = exchange(proxy, raw)
    assert status == 400
    assert echo.accepted == 0
    still_serves(proxy, echo)


def test_bytes_after_a_bodiless_head_are_tunnel_data_never_a_request(proxy, upstream_factory, echo):
    received = []

    def record(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        received.append(data)

    server = upstream_factory(record)
    second = head(echo.target, f"Host: {echo.target}")
    smuggled = b"GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n" + second
    sock = proxy.connect()
    sock.sendall(head(server.target, f"Host: {server.target}", "Content-Length: 0") + smuggled)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(10) == b""
    sock.close()
    wait_until(lambda: received)
    assert received == [smuggled]  # delivered byte for byte to the first target ...
    assert echo.accepted == 0  # ... and the pipelined second CONNECT was never acted on
    still_serves(proxy, echo)


def test_idn_targets_must_be_a_labels(start_proxy, dns_server, echo):
    dns_server.add("xn--bcher-kva.test", a=["127.0.0.1"])
    proxy = start_proxy()
    target = f"xn--bcher-kva.test:{echo.port}"
    with open_tunnel(proxy, target) as sock:
        sock.sendall(b"idn")
        assert recv_exactly(sock, 3) == b"idn"
    for raw in (
        f"CONNECT bücher.test:{echo.port} HTTP/1.1\r\nHost: bücher.test:{echo.port}\r\n\r\n".encode(),
        f"CONNECT {target} HTTP/1.1\r\nHost: bücher.test:{echo.port}\r\n\r\n".encode(),
        f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode().replace(b"xn--", b"\xef\xbc\xb8n--"),
    ):
        assert_refused(proxy, raw, 400)
    still_serves(proxy, echo)


def test_over_long_names_and_labels_are_400_before_dns(start_proxy, dns_server, echo):
    proxy = start_proxy()
    queries_before = sum(dns_server.queries.values())
    label63, label64 = "a" * 63, "a" * 64
    longest = ".".join([label63, label63, label63, "a" * 61])  # 253 characters
    assert len(longest) == 253
    for name in (label64 + ".test", longest + "a", longest + ".b", "a." * 200 + "test", "a..test", "-a.test"):
        target = f"{name}:{echo.port}"
        assert_refused(proxy, head(target, f"Host: {target}"), 400)
    assert sum(dns_server.queries.values()) == queries_before  # refused by grammar, not by DNS
    # The longest legal name passes the grammar and is looked up (and does not exist).
    raw = head(f"{longest}:{echo.port}", f"Host: {longest}:{echo.port}")
    assert_refused(proxy, raw, 502, error="destination_not_found")
    still_serves(proxy, echo)


def test_random_byte_flood_and_a_tls_hello_to_the_plain_listener(proxy, echo):
    status, _, _ = exchange(proxy, os.urandom(1 << 20))
    assert status in (400, 405, 431)
    # A ClientHello (what a client configured for an https:// proxy sends first).
    hello = bytes.fromhex("16030100c4010000c00303") + os.urandom(32) + b"\x00" * 40
    status, _, _ = exchange(proxy, hello)
    assert status == 400
    still_serves(proxy, echo)


def test_many_headers_within_the_limit_are_fine_beyond_it_431(start_proxy, echo):
    proxy = start_proxy("--max-header-bytes", "4096")
    small = [f"X-{i}: {i}" for i in range(300)]  # about 3 KiB
    with proxy.connect() as sock:
        sock.sendall(head(echo.target, f"Host: {echo.target}", *small))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert_refused(proxy, head(echo.target, f"Host: {echo.target}", *small, *small), 431)
    still_serves(proxy, echo)
