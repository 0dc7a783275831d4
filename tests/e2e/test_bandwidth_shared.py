"""Bandwidth limits and quotas that hold across processes, end to end: one
user's rate shared by the two workers of ``--workers 2`` and by two instances
sharing a real redis-server, and a quota spent through one refusing through
the other. Downloads over tunnels from a bulk origin on loopback; the tolerance is
the issue's ±15 %."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ..conftest import connect_over, open_tunnel, read_head, wait_until
from .test_auth import auth_header
from .test_bandwidth import RATE, TOLERANCE, assert_near, bulk_handler
from .test_errors import proxy_status_error
from .test_shared_state import (  # noqa: F401
    connect_head,
    fleet_member,
    idle_connections_on_each,
    owner,
    redis_server,
    workers_of,
)

pytestmark = pytest.mark.timeout(90)

#: Parallel downloads of one user, each on its own connection.
PARALLEL = 8
#: How long two instances take to agree on their shares of a rate: a sync
#: period (0.2 s here) to see each other's tunnels, the once-a-second rebalance
#: to act on it, and slack for a busy machine.
SETTLE_SECONDS = 1.5


@pytest.fixture
def origin(upstream_factory):
    return upstream_factory(bulk_handler)


def test_eight_downloads_over_two_workers_share_the_users_rate(start_proxy, htpasswd, origin):
    extra = ("--auth-file", htpasswd, "--rate-per-user", str(RATE), "--header-timeout", "30")
    proxy = start_proxy("--workers", "2", *extra)
    # Four connections accepted by each worker, arranged rather than left to the
    # kernel's spread (eight curls all landed on one worker in a CI run). The
    # first waits for its request head while the others are found.
    held = idle_connections_on_each(proxy, workers_of(proxy), PARALLEL // 2)
    size = 3 * RATE // PARALLEL
    stop = threading.Event()
    started = time.monotonic()
    receivers = []
    for sock in (sock for socks in held.values() for sock in socks):
        connect_over(
            sock, origin.target, headers=f"Host: {origin.target}\r\n".encode() + auth_header("alice", "pw") + b"\r\n"
        )
        sock.sendall(b"GET /%d HTTP/1.1\r\nHost: origin\r\n\r\n" % size)
        receivers.append(Receiver(sock, stop))
        receivers[-1].start()
    try:
        for receiver in receivers:
            receiver.join(30)
            assert not receiver.is_alive(), "every download ends"
        # All the bytes (bodies and heads) over the time to the last one's end:
        # the shares need not be even, so some end before others.
        total = sum(n for receiver in receivers for _, n in receiver.arrivals)
        assert total >= PARALLEL * size
        assert_near(total / (max(r.arrivals[-1][0] for r in receivers) - started), RATE)
    finally:
        stop.set()
        for receiver in receivers:
            receiver.sock.close()


def spend_quota_through(proxy, workers: list[int], target: str) -> int:
    """Download past alice's 1 MB quota on one connection; the worker that served it."""
    sock = proxy.connect()
    served_by = owner(proxy, workers, sock)
    sock.sendall(connect_head(target, auth_header("alice", "pw") + b"\r\n"))
    assert read_head(sock)[0].startswith(b"HTTP/1.1 200 ")
    sock.sendall(b"GET /1500000 HTTP/1.1\r\nHost: origin\r\n\r\n")
    sock.settimeout(20)
    while sock.recv(1 << 20):
        pass
    sock.close()
    return served_by


def assert_quota_refusal(head: bytes) -> None:
    """A 429 naming alice's quota, with Retry-After and Proxy-Status."""
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 429 "), head
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:] if line)}
    assert 0 < int(headers["retry-after"]) <= 86_400
    assert proxy_status_error(headers["proxy-status"]) == "http_request_denied"
    assert "quota" in headers["proxy-status"] and "alice" in headers["proxy-status"]


def test_a_quota_spent_through_one_worker_refuses_through_the_other(start_proxy, htpasswd, origin):
    proxy = start_proxy("--workers", "2", "--auth-file", htpasswd, "--quota-bytes", "1M", "--quota-period", "day")
    workers = workers_of(proxy)
    spent_on = spend_quota_through(proxy, workers, origin.target)
    # The next connection the other worker accepts refuses alice at once: the
    # tunnel's close added its bytes to the shared total.
    for _ in range(100):
        sock = proxy.connect()
        if owner(proxy, workers, sock) != spent_on:
            break
        sock.close()
    else:
        pytest.fail("the other worker accepted none of 100 connections")
    with sock:
        sock.sendall(connect_head(origin.target, auth_header("alice", "pw") + b"\r\n"))
        sock.settimeout(10)
        assert_quota_refusal(read_head(sock)[0])


# --- two instances through a real Redis (its period: 0.2 s) -------------------------


class Receiver(threading.Thread):
    """Reads a tunnel's download, noting when each byte came."""

    def __init__(self, sock: socket.socket, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.stop = stop
        self.arrivals: list[tuple[float, int]] = []

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                break
            self.arrivals.append((time.monotonic(), len(data)))

    def between(self, start: float, end: float) -> int:
        return sum(n for at, n in self.arrivals if start <= at < end)


def downloading(proxy, user: str, target: str, stop: threading.Event) -> Receiver:
    password = "pw" if user == "alice" else "file-pw"
    sock = open_tunnel(proxy, target, headers=f"Host: {target}\r\n".encode() + auth_header(user, password) + b"\r\n")
    sock.sendall(b"GET /%d HTTP/1.1\r\nHost: origin\r\n\r\n" % (10 * RATE))
    receiver = Receiver(sock, stop)
    receiver.start()
    return receiver


def rate_of(receivers: list[Receiver], start: float, end: float) -> float:
    return sum(r.between(start, end) for r in receivers) / (end - start)


def test_one_users_downloads_through_two_instances_share_the_rate(start_proxy, redis_server, htpasswd, origin):  # noqa: F811
    extra = ("--auth-file", htpasswd, "--rate-per-user", str(RATE))
    a = fleet_member(start_proxy, redis_server, *extra)
    b = fleet_member(start_proxy, redis_server, *extra)
    stop = threading.Event()
    started = time.monotonic()
    alice = [downloading(proxy, "alice", origin.target, stop) for proxy in (a, b) for _ in range(PARALLEL // 2)]
    carol = [downloading(a, "carol", origin.target, stop)]
    try:
        # Each instance starts on its own view (the whole rate) until a sync
        # brings the other's tunnels and the next rebalance scales the buckets:
        # from then on alice's eight downloads share her rate.
        settled = started + SETTLE_SECONDS
        wait_until(lambda: time.monotonic() > settled + 2.0, timeout=10)
        first, after = rate_of(alice, started, started + 1.0), rate_of(alice, settled, settled + 2.0)
        assert_near(after, RATE)
        assert first <= 2 * RATE * (1 + TOLERANCE), f"first second {first:.0f} B/s"
        # carol shared instance a with alice's downloads and had her own rate.
        assert_near(rate_of(carol, settled, settled + 2.0), RATE)
    finally:
        stop.set()
        for receiver in [*alice, *carol]:
            receiver.join(5)
            receiver.sock.close()


def test_a_quota_spent_through_one_instance_refuses_through_the_other(start_proxy, redis_server, htpasswd, origin):  # noqa: F811
    extra = ("--auth-file", htpasswd, "--quota-bytes", "1M", "--quota-period", "day")
    a = fleet_member(start_proxy, redis_server, *extra)
    b = fleet_member(start_proxy, redis_server, *extra)
    spend_quota_through(a, [a.pid], origin.target)
    spent = time.monotonic()

    def refusal() -> bytes | None:
        with b.connect() as sock:
            sock.settimeout(10)
            sock.sendall(connect_head(origin.target, auth_header("alice", "pw") + b"\r\n"))
            head = read_head(sock)[0]
            return head if head.startswith(b"HTTP/1.1 429 ") else None

    head = wait_until(refusal, timeout=5)
    # a pushes at its next sync and b reads at its next: two periods of 0.2 s, and slack for a busy machine.
    assert time.monotonic() - spent < 1.0
    assert_quota_refusal(head)
