"""TLS on the listening side (--tls-cert/--tls-key): Python's ssl module as a client, the TLS
relay's byte-exactness, timeouts and lifetime, and clients that fail the handshake (curl's
--proxy https://: tests/interop/test_tls_listener.py)."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import time

import pytest

from gconnect.testing.procfs import tree_rss_kib

from ..conftest import connect_over, echo_in_one_thread, recv_all, recv_exactly, wait_until

pytestmark = pytest.mark.timeout(90)


def tls_tunnel(proxy, context: ssl.SSLContext, target: str, extra: bytes = b"") -> ssl.SSLSocket:
    return connect_over(context.wrap_socket(proxy.connect(), server_hostname="127.0.0.1"), target, extra)


def test_tls_relay_is_byte_exact_both_ways_with_early_data(start_tls_proxy, client_context, echo):
    proxy = start_tls_proxy()
    data = os.urandom(4 * 1024 * 1024)
    sock = tls_tunnel(proxy, client_context, echo.target, extra=b"early")
    assert recv_exactly(sock, 5) == b"early"
    got = echo_in_one_thread(sock, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    sock.close()
    line = proxy.wait_access(f"target={echo.target}")
    assert f"up={len(data) + 5} down={len(data) + 5}" in line


def test_upstream_eof_is_a_clean_tls_eof_and_the_client_keeps_sending(
    start_tls_proxy, client_context, upstream_factory
):
    received = {}

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)  # the upstream is done talking ...
        received["data"] = recv_all(conn)  # ... but still listens

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    for _ in range(5):  # the race it guards against was timing-dependent
        received.clear()
        sock = tls_tunnel(proxy, client_context, server.target)
        assert recv_exactly(sock, 3) == b"bye"
        # close_notify, not a bare FIN: OpenSSL 3 clients (curl) would report a truncation ...
        assert sock.recv(10) == b""
        # ... and the client's direction is still open.
        sock.sendall(b"after")
        sock.close()
        wait_until(lambda: "data" in received)
        assert received["data"] == b"after"
    assert "reason=upstream_eof" in proxy.wait_access(f"target={server.target}")


def test_client_eof_is_carried_and_the_upstream_keeps_talking(start_tls_proxy, client_context, upstream_factory):
    def handler(conn: socket.socket) -> None:
        data = recv_all(conn)  # until the client's EOF arrives as a FIN
        conn.sendall(b"got " + data)

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    # TLS on memory BIOs: the ssl module's unwrap() on a socket reads behind our back.
    raw = proxy.connect()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")

    def pump(step) -> object:
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                chunk = raw.recv(65536)
                if not chunk:
                    incoming.write_eof()
                incoming.write(chunk)
                continue
            raw.sendall(outgoing.read())
            return result

    pump(tls.do_handshake)
    pump(lambda: tls.write(f"CONNECT {server.target} HTTP/1.1\r\nHost: {server.target}\r\n\r\nquestion".encode()))
    try:
        tls.unwrap()  # close_notify: the client's EOF; it keeps reading
    except ssl.SSLWantReadError:
        raw.sendall(outgoing.read())
    data = b""
    while b"got question" not in data:
        try:
            data += pump(lambda: tls.read(65536))  # type: ignore[operator]
        except ssl.SSLZeroReturnError:
            break
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\ngot question"), data
    raw.close()


def test_idle_and_lifetime_limits_apply_to_tls_tunnels(start_tls_proxy, client_context, echo):
    proxy = start_tls_proxy("--idle-timeout", "0.3")
    sock = tls_tunnel(proxy, client_context, echo.target)
    started = time.monotonic()
    try:
        assert sock.recv(10) == b""
    except (ssl.SSLEOFError, ConnectionResetError):
        pass
    assert 0.2 < time.monotonic() - started < 5
    assert "reason=idle" in proxy.wait_access(f"target={echo.target}")
    sock.close()

    proxy = start_tls_proxy("--max-tunnel-lifetime", "0.4")
    sock = tls_tunnel(proxy, client_context, echo.target)
    started = time.monotonic()
    with pytest.raises((AssertionError, OSError)):
        while time.monotonic() - started < 10:
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"
    assert 0.3 < time.monotonic() - started < 5
    assert "reason=lifetime" in proxy.wait_access(f"target={echo.target}")
    sock.close()


def test_plaintext_client_on_a_tls_listener_is_closed_and_the_proxy_serves_on(start_tls_proxy, client_context, echo):
    proxy = start_tls_proxy()
    with proxy.connect() as sock:
        sock.sendall(f"CONNECT {echo.target} HTTP/1.1\r\nHost: {echo.target}\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    assert not data.startswith(b"HTTP/1.1 200")
    assert "reason=tls_handshake" in proxy.wait_access("status=400")
    assert echo.accepted == 0
    with tls_tunnel(proxy, client_context, echo.target) as sock:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


def test_silent_client_is_dropped_at_the_header_deadline(start_tls_proxy):
    proxy = start_tls_proxy("--header-timeout", "0.3")
    with proxy.connect() as sock:
        started = time.monotonic()
        sock.settimeout(10)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - started < 5
    assert "reason=tls_handshake" in proxy.wait_access("status=400")


def test_missing_key_file_is_a_clear_start_error(tmp_path, proxy_cert):
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "gconnect", "serve", "--listen", "127.0.0.1:0", "--tls-cert", proxy_cert[0]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "tls_cert and tls_key go together" in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gconnect",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            proxy_cert[0],
            "--tls-key",
            str(tmp_path / "missing.key"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_tls_and_proxy_protocol_together_are_refused(proxy_cert):
    import sys

    result = subprocess.run(
        [
            *(sys.executable, "-m", "gconnect", "serve", "--tls-cert", proxy_cert[0], "--tls-key", proxy_cert[1]),
            *("--proxy-protocol", "--proxy-protocol-from", "127.0.0.0/8"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "cannot be combined with proxy_protocol" in result.stderr


def test_tls_tunnels_write_json_open_and_close_lines(start_tls_proxy, client_context, echo):
    import json

    proxy = start_tls_proxy("--log-format", "json")
    with tls_tunnel(proxy, client_context, echo.target, extra=b"early") as sock:
        assert recv_exactly(sock, 5) == b"early"
        sock.sendall(b"12345")
        assert recv_exactly(sock, 5) == b"12345"
    wait_until(lambda: len(proxy.access_lines()) >= 2)
    opened, closed = (json.loads(line) for line in proxy.access_lines()[:2])
    assert (opened["event"], closed["event"]) == ("open", "close") and opened["id"] == closed["id"]
    assert (closed["status"], closed["up"], closed["down"]) == (200, 10, 10)


def test_handshake_and_head_share_one_deadline(start_tls_proxy, client_context):
    # A client slow to start its handshake does not get a fresh deadline for its head.
    proxy = start_tls_proxy("--header-timeout", "1.2")
    raw = proxy.connect()
    started = time.monotonic()
    time.sleep(0.8)  # the slowness under test: ClientHello 0.8 s after connecting
    sock = client_context.wrap_socket(raw, server_hostname="127.0.0.1")
    sock.settimeout(10)
    answer = sock.recv(4096)  # no head sent: the proxy answers at the deadline
    elapsed = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 1.1 < elapsed < 1.7, elapsed  # one 1.2 s deadline, not 0.8 + 1.2


#: Idle tunnels for the RSS bound, and what each may keep after bulk (its TLS session
#: and the session's memory BIOs, which keep the largest size they ever held): a
#: session fed whole 512 KiB reads kept about 1 MiB.
IDLE_TUNNELS = 24
IDLE_KIB_PER_TUNNEL = 400


def test_an_idle_tunnel_after_bulk_keeps_no_large_buffer(start_tls_proxy, client_context, echo):
    proxy = start_tls_proxy()
    data = os.urandom(2 * 1024 * 1024)

    def used_once() -> ssl.SSLSocket:
        sock = tls_tunnel(proxy, client_context, echo.target)
        assert echo_in_one_thread(sock, data) == data  # both ways, in full reads
        return sock

    used_once().close()  # the process's own buffers, imports and caches
    proxy.wait_access(f"target={echo.target}")
    before = tree_rss_kib(proxy.pid)
    tunnels = [used_once() for _ in range(IDLE_TUNNELS)]
    grown = tree_rss_kib(proxy.pid) - before
    for sock in tunnels:
        sock.close()
    assert grown < IDLE_TUNNELS * IDLE_KIB_PER_TUNNEL, f"{grown / IDLE_TUNNELS:.0f} KiB a tunnel"
