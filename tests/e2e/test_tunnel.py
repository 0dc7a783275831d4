"""The relay, end to end through the CLI: byte-exact both ways, early data,
half-close carried each way, resets passed on, idle and half-close timeouts,
every descriptor released. Each test runs on every relay mode."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from ..conftest import open_tunnel, recv_all, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=["auto", "splice", "copy"])
def relay_proxy(request, start_proxy):
    return start_proxy("--relay", request.param)


def test_64mib_both_directions_at_once_byte_exact(relay_proxy, upstream_factory):
    size = 64 * 1024 * 1024
    up_data = os.urandom(size)
    down_data = os.urandom(size)
    received_up = {}

    def handler(conn: socket.socket) -> None:
        # Upstream sends its 64 MiB while reading the client's: neither side waits.
        sender = threading.Thread(target=conn.sendall, args=(down_data,))
        sender.start()
        received_up["digest"] = hashlib.sha256(recv_all(conn)).hexdigest()
        sender.join()
        conn.shutdown(socket.SHUT_WR)

    server = upstream_factory(handler)
    sock = open_tunnel(relay_proxy, server.target)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("down", recv_all(sock)))
    reader.start()
    sock.sendall(up_data)
    sock.shutdown(socket.SHUT_WR)
    reader.join(60)
    sock.close()
    assert hashlib.sha256(got["down"]).hexdigest() == hashlib.sha256(down_data).hexdigest()
    wait_until(lambda: "digest" in received_up)
    assert received_up["digest"] == hashlib.sha256(up_data).hexdigest()
    line = relay_proxy.wait_access(f"target={server.target}")
    assert f"up={size} down={size}" in line


@pytest.mark.parametrize("mode", ["auto", "splice", "copy"])
def test_concurrent_bulk_with_a_small_turn_budget_is_byte_exact(mode, start_proxy, upstream_factory):
    # Eight tunnels push at once under a tiny --turn-budget-bytes, so most reads
    # take a small share of it; every byte still arrives, in order, both ways.
    proxy = start_proxy("--relay", mode, "--turn-budget-bytes", "16384")
    size = 8 * 1024 * 1024
    payloads = [os.urandom(size) for _ in range(8)]

    def handler(conn: socket.socket) -> None:
        # A tunnel's download is its own upload coming back.
        data = recv_all(conn)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)

    server = upstream_factory(handler)
    socks = [open_tunnel(proxy, server.target) for _ in payloads]
    got: dict[int, str] = {}

    def push(i: int) -> None:
        socks[i].sendall(payloads[i])
        socks[i].shutdown(socket.SHUT_WR)
        got[i] = hashlib.sha256(recv_all(socks[i])).hexdigest()

    threads = [threading.Thread(target=push, args=(i,), daemon=True) for i in range(len(socks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for sock in socks:
        sock.close()
    assert got == {i: hashlib.sha256(p).hexdigest() for i, p in enumerate(payloads)}
    wait_until(lambda: len(proxy.access_lines()) == len(payloads))
    assert all(f"up={size} down={size}" in line for line in proxy.access_lines())


def test_bytes_after_head_in_same_packet_are_forwarded(relay_proxy, echo):
    sock = relay_proxy.connect()
    sock.sendall(f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode() + b"early-bytes")
    data = b""
    while not data.endswith(b"early-bytes"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    assert data == b"HTTP/1.1 200 Connection established\r\n\r\nearly-bytes"
    sock.close()


def test_client_half_close_keeps_download_flowing(relay_proxy, upstream_factory):
    # The client sends a request and shuts down its sending side; the upstream
    # sees EOF, and only then sends its answer, which must still arrive.
    answer = os.urandom(3 * 1024 * 1024)

    def handler(conn: socket.socket) -> None:
        request = recv_all(conn)
        assert request == b"request then EOF"
        conn.sendall(answer)

    server = upstream_factory(handler)
    sock = open_tunnel(relay_proxy, server.target)
    sock.sendall(b"request then EOF")
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock) == answer
    sock.close()
    line = relay_proxy.wait_access(f"target={server.target}")
    assert "reason=client_eof" in line


def test_upstream_half_close_keeps_upload_flowing(relay_proxy, upstream_factory):
    payload = os.urandom(2 * 1024 * 1024)
    got = {}

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"banner")
        conn.shutdown(socket.SHUT_WR)
        got["up"] = recv_all(conn)

    server = upstream_factory(handler)
    sock = open_tunnel(relay_proxy, server.target)
    assert recv_all(sock) == b"banner"  # EOF from upstream reached the client
    sock.sendall(payload)  # ... and the client can still send
    sock.shutdown(socket.SHUT_WR)
    wait_until(lambda: "up" in got)
    assert got["up"] == payload
    sock.close()
    assert "reason=upstream_eof" in relay_proxy.wait_access(f"target={server.target}")


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_upstream_reset_is_passed_to_client(relay_proxy, upstream_factory):
    def handler(conn: socket.socket) -> None:
        conn.recv(100)
        _reset(conn)

    server = upstream_factory(handler)
    sock = open_tunnel(relay_proxy, server.target)
    sock.sendall(b"x")
    with pytest.raises(ConnectionResetError):
        while sock.recv(100):
            pass
    sock.close()
    assert "reason=upstream_reset" in relay_proxy.wait_access(f"target={server.target}")


def test_client_reset_is_passed_to_upstream(relay_proxy, upstream_factory):
    outcome = {}
    started = threading.Event()

    def handler(conn: socket.socket) -> None:
        started.set()
        try:
            outcome["data"] = recv_all(conn)
        except ConnectionResetError:
            outcome["reset"] = True

    server = upstream_factory(handler)
    sock = open_tunnel(relay_proxy, server.target)
    assert started.wait(10)
    _reset(sock)
    wait_until(lambda: outcome)
    assert outcome == {"reset": True}
    assert "reason=client_reset" in relay_proxy.wait_access(f"target={server.target}")


def test_idle_tunnel_is_closed(start_proxy, echo):
    proxy = start_proxy("--idle-timeout", "0.3")
    sock = open_tunnel(proxy, echo.target)
    sock.settimeout(10)
    assert sock.recv(100) == b""  # closed by the proxy, not by us
    line = proxy.wait_access(f"target={echo.target}")
    assert "reason=idle" in line


def test_one_way_traffic_keeps_tunnel_alive(start_proxy, upstream_factory):
    # A long download has a silent upload side: the idle limit is per tunnel.
    ticks = 12

    def handler(conn: socket.socket) -> None:
        for _ in range(ticks):
            conn.sendall(b"t")
            threading.Event().wait(0.1)  # a paced source, not synchronisation
        conn.shutdown(socket.SHUT_WR)
        recv_all(conn)

    server = upstream_factory(handler)
    proxy = start_proxy("--idle-timeout", "0.5")
    sock = open_tunnel(proxy, server.target)
    assert recv_all(sock) == b"t" * ticks  # 1.2 s of traffic outlived a 0.5 s idle limit
    sock.close()
    assert "reason=upstream_eof" in proxy.wait_access(f"target={server.target}")


def test_half_close_timeout(start_proxy, upstream_factory):
    held = threading.Event()

    def handler(conn: socket.socket) -> None:
        assert recv_all(conn) == b""  # client half-closed at once
        held.wait(10)  # ... and we never answer nor close

    server = upstream_factory(handler)
    proxy = start_proxy("--half-close-timeout", "0.3")
    sock = open_tunnel(proxy, server.target)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    assert sock.recv(10) == b""
    held.set()
    assert "reason=half_close_timeout" in proxy.wait_access(f"target={server.target}")


def test_slow_reader_backpressure_is_byte_exact(relay_proxy, upstream_factory):
    # The upstream pushes 16 MiB while the client reads slowly in small pieces:
    # bytes wait in the proxy (a pipe, or a remainder) and must come out intact.
    data = os.urandom(16 * 1024 * 1024)

    def handler(conn: socket.socket) -> None:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        recv_all(conn)

    server = upstream_factory(handler)
    sock = open_tunnel(relay_proxy, server.target)
    # Reading 3,000 bytes a call, the client drains far slower than loopback fills.
    out = bytearray()
    while True:
        chunk = sock.recv(3000)
        if not chunk:
            break
        out += chunk
    sock.close()
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


def test_descriptors_return_to_baseline(relay_proxy, upstream_factory, echo):
    proxy = relay_proxy
    with open_tunnel(proxy, echo.target) as warm:  # lazy set-up (a pooled pipe) happens here
        warm.sendall(b"warm")
        assert recv_exactly(warm, 4) == b"warm"
    wait_until(lambda: len(proxy.access_lines()) == 1)
    baseline = proxy.fd_kinds()

    def resetter(conn: socket.socket) -> None:
        conn.recv(10)
        _reset(conn)

    resetting = upstream_factory(resetter)
    for _ in range(5):
        with open_tunnel(proxy, echo.target) as sock:  # normal, closed by client
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
        sock = open_tunnel(proxy, resetting.target)  # reset by upstream
        sock.sendall(b"x")
        try:
            recv_all(sock)
        except ConnectionResetError:
            pass
        sock.close()
        with proxy.connect() as bad:  # refused request
            bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_all(bad)
        with proxy.connect() as gone:  # client leaves mid-head
            gone.sendall(b"CONNECT 127.0.0.1:1")
        with proxy.connect() as refused:  # nothing listens upstream
            refused.sendall(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n")
            recv_all(refused)
        held = open_tunnel(proxy, echo.target)  # client resets an open tunnel
        _reset(held)
    wait_until(lambda: len(proxy.access_lines()) >= 31)
    wait_until(lambda: proxy.fd_kinds()["socket"] <= baseline["socket"], timeout=10)
    after = proxy.fd_kinds()
    assert after["socket"] == baseline["socket"]
    assert after["file"] == baseline["file"]
    # Idle pipes stay pooled for reuse; sequential tunnels need at most one per direction.
    assert after["pipe"] <= baseline["pipe"] + 4


def test_many_concurrent_tunnels(relay_proxy, echo):
    socks = [open_tunnel(relay_proxy, echo.target) for _ in range(200)]
    for i, sock in enumerate(socks):
        sock.sendall(b"%05d" % i)
    for i, sock in enumerate(socks):
        assert recv_exactly(sock, 5) == b"%05d" % i
        sock.close()


def test_echo_handler_round_trip_splice_and_copy_agree(start_proxy, echo):
    # The same payload through both relays comes back identical.
    payload = os.urandom(1 << 20)
    for mode in ("splice", "copy"):
        proxy = start_proxy("--relay", mode)
        sock = open_tunnel(proxy, echo.target)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == payload
        sock.close()


def test_idle_tunnels_hold_two_sockets_and_no_pipe(relay_proxy, echo):
    # An idle tunnel costs the proxy its two sockets: no pipe, no other descriptor.
    proxy = relay_proxy
    with open_tunnel(proxy, echo.target) as warm:
        warm.sendall(b"warm")
        assert recv_exactly(warm, 4) == b"warm"
    wait_until(lambda: len(proxy.access_lines()) == 1)
    before = proxy.fd_kinds()
    held = []
    for i in range(100):
        sock = open_tunnel(proxy, echo.target)
        sock.sendall(b"%03d" % i)  # each tunnel carried bytes, then went idle
        assert recv_exactly(sock, 3) == b"%03d" % i
        held.append(sock)
    during = proxy.fd_kinds()
    assert during["socket"] == before["socket"] + 200
    assert during["pipe"] == before["pipe"]
    assert during["other"] == before["other"] and during["file"] == before["file"]
    for sock in held:
        sock.close()
    wait_until(lambda: proxy.fd_kinds()["socket"] == before["socket"])


def test_active_tunnels_borrow_pipes_and_give_them_back(start_proxy, upstream_factory):
    # Slow readers keep bytes in flight: each stuck direction holds one pipe,
    # and the pipes come back (pooled, bounded) when the bytes have moved.
    proxy = start_proxy("--relay", "splice", "--pipe-pool-size", "4")
    data = os.urandom(8 * 1024 * 1024)

    def handler(conn: socket.socket) -> None:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        recv_all(conn)

    server = upstream_factory(handler)
    before = proxy.fd_kinds()
    socks = [open_tunnel(proxy, server.target) for _ in range(8)]
    # Nobody reads yet: every tunnel's download stalls with bytes in a pipe.
    wait_until(lambda: proxy.fd_kinds()["pipe"] >= before["pipe"] + 2 * 8)
    for sock in socks:
        assert hashlib.sha256(recv_all(sock)).digest() == hashlib.sha256(data).digest()
        sock.close()
    wait_until(lambda: proxy.fd_kinds()["socket"] == before["socket"])
    # Back in the pool, at most --pipe-pool-size of them kept.
    assert proxy.fd_kinds()["pipe"] <= before["pipe"] + 2 * 4


def test_client_reset_under_back_pressure_frees_the_tunnel_at_once(relay_proxy, upstream_factory):
    # The target stops reading, so the relay stops reading the client. A reset
    # from the client must still end the tunnel now, not at --idle-timeout.
    proxy = relay_proxy
    stalled = threading.Event()
    release = threading.Event()

    def never_reads(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.set()
        release.wait(30)

    server = upstream_factory(never_reads)
    baseline = proxy.fd_count()
    sock = open_tunnel(proxy, server.target)
    stalled.wait(5)
    sock.settimeout(0.5)
    sent = 0
    try:
        while True:
            sent += sock.send(b"\0" * 65536)
    except (TimeoutError, BlockingIOError):
        pass  # every buffer on the way is full
    assert sent > 0
    wait_until(lambda: proxy.fd_count() >= baseline + 2)
    _reset(sock)
    started = time.monotonic()
    wait_until(lambda: proxy.fd_count() == baseline, timeout=5, interval=0.01)
    assert time.monotonic() - started < 1.0
    assert "reason=client_reset" in proxy.wait_access(f"target={server.target}")
    release.set()
