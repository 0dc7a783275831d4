"""Bandwidth limits on what is not a TCP tunnel, end to end: HTTP/2 CONNECT
streams on the TLS listener (tests/h2client.py) and forwarded request bodies
(curl). alice is limited by her ``[users.alice]`` table, carol by nothing, so
a stream of carol's on alice's connection shows the limit holds one stream
back, not the connection. Each transfer takes about two seconds.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from ..conftest import read_head, wait_until
from ..h2client import H2Client
from ..unit.test_auth import basic
from .test_bandwidth import RATE, assert_near, bulk_handler, sink_handler

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def alice_limited(tmp_path) -> str:
    config = tmp_path / "gconnect.toml"
    config.write_text(f'[users.alice]\nrate-per-user = "{RATE // 1000}k"\n')
    return str(config)


def credentials(user: str) -> list[tuple[str, str]]:
    return [("proxy-authorization", basic(user, "pw" if user == "alice" else "file-pw").decode())]


def until_ended(client: H2Client, streams: list[int], timeout: float = 30) -> dict[int, float]:
    """When (time.monotonic()) each of *streams* ended, pumping the connection."""
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(streams):
        assert time.monotonic() < deadline, f"streams {streams} not ended within {timeout} s"
        assert not client.closed and not client.resets, client.resets
        client.pump(0.05)
        now = time.monotonic()
        for stream_id in streams:
            if stream_id in client.ended and stream_id not in ended:
                ended[stream_id] = now
    return ended


def test_h2_stream_download_at_the_users_rate_beside_an_unlimited_one(
    start_tls_proxy, htpasswd, upstream_factory, client_context, alice_limited
):
    origin = upstream_factory(bulk_handler)
    proxy = start_tls_proxy("--config", alice_limited, "--auth-file", htpasswd)
    client = H2Client((proxy.host, proxy.port), client_context)
    try:
        alice = client.connect(origin.target, credentials("alice"))
        carol = client.connect(origin.target, credentials("carol"))
        assert client.status(alice) == 200 and client.status(carol) == 200
        started = time.monotonic()
        client.send(alice, b"GET /%d HTTP/1.1\r\n\r\n" % (2 * RATE))
        client.send(carol, b"GET /%d HTTP/1.1\r\n\r\n" % (4 * RATE))
        ended = until_ended(client, [alice, carol])
        assert len(client.data[alice]) > 2 * RATE and len(client.data[carol]) > 4 * RATE
        assert_near(2 * RATE / (ended[alice] - started), RATE)
        # carol's stream shares alice's connection, and finished long before hers.
        assert 4 * RATE / (ended[carol] - started) > 3 * RATE
    finally:
        client.close()


def test_h2_stream_upload_at_the_users_rate_beside_an_unlimited_one(
    start_tls_proxy, htpasswd, upstream_factory, client_context, alice_limited
):
    sink = upstream_factory(sink_handler)
    # The client may always send one stream window before the first WINDOW_UPDATE
    # (the head start the rate is measured without). A small one, not so small that
    # window / round trip on a loaded machine would cap the upload below the rate.
    window = 256 * 1024
    proxy = start_tls_proxy("--config", alice_limited, "--auth-file", htpasswd, "--h2-window-bytes", str(window))
    client = H2Client((proxy.host, proxy.port), client_context)
    try:
        alice = client.connect(sink.target, credentials("alice"))
        carol = client.connect(sink.target, credentials("carol"))
        assert client.status(alice) == 200 and client.status(carol) == 200
        started = time.monotonic()
        client.send(alice, b"u" * (2 * RATE), end=True)
        client.send(carol, b"c" * (4 * RATE), end=True)
        ended = until_ended(client, [alice, carol])
        assert int(client.data[alice]) == 2 * RATE and int(client.data[carol]) == 4 * RATE
        assert_near((2 * RATE - window) / (ended[alice] - started), RATE)
        assert 4 * RATE / (ended[carol] - started) > 3 * RATE
    finally:
        client.close()


def post_sink_handler(conn: socket.socket) -> None:
    """An HTTP/1.1 origin that reads a POST's Content-Length body and answers its size."""
    conn.settimeout(30)
    head, body = read_head(conn)
    if not head:
        return
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    total = len(body)
    while total < length and (data := conn.recv(1 << 20)):
        total += len(data)
    answer = str(total).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(answer), answer))


def test_forwarded_request_bodies_are_limited(start_proxy, htpasswd, upstream_factory, tmp_path, alice_limited):
    sink = upstream_factory(post_sink_handler)
    proxy = start_proxy(
        "--config", alice_limited, "--auth-file", htpasswd, "--forward-port", sink.target.rpartition(":")[2]
    )
    payload = tmp_path / "payload"
    payload.write_bytes(b"p" * (2 * RATE))

    def post(user: str) -> tuple[str, float]:
        cmd = ["curl", "-sS", "--max-time", "30", "-H", "Expect:", "--data-binary", f"@{payload}"]
        cmd += ["-x", f"http://{user}:{'pw' if user == 'alice' else 'file-pw'}@{proxy.host}:{proxy.port}"]
        cmd += ["-w", " %{http_code} %{speed_upload}", f"http://{sink.target}/upload"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
        assert result.returncode == 0, result.stderr
        size, status, speed = result.stdout.split()
        assert (status, int(size)) == ("200", 2 * RATE), result.stdout
        return status, float(speed)

    assert_near(post("alice")[1], RATE)
    assert post("carol")[1] > 3 * RATE


def test_sighup_changes_the_rate_of_an_open_h2_upload(start_tls_proxy, upstream_factory, client_context, tmp_path):
    sink = upstream_factory(sink_handler)
    config = tmp_path / "gconnect.toml"
    config.write_text('rate-per-client = "1M"\n')
    # The window comes back in halves of it: small enough that a measure holds many,
    # large enough that window / round trip (a loaded machine's Python client) stays
    # above the rate.
    proxy = start_tls_proxy("--config", str(config), "--h2-window-bytes", str(256 * 1024))
    client = H2Client((proxy.host, proxy.port), client_context)
    try:
        stream_id = client.connect(sink.target)
        assert client.status(stream_id) == 200
        total = 20 * RATE
        client.send(stream_id, b"u" * total, end=True)

        def rate_over(seconds: float) -> float:
            """Bytes the proxy's window let the client send, per second."""
            before, started = len(client.outgoing[stream_id]), time.monotonic()
            while time.monotonic() - started < seconds:
                client.pump(0.05)
            return (before - len(client.outgoing[stream_id])) / (time.monotonic() - started)

        rate_over(0.5)  # the first window, sent at once
        assert_near(rate_over(1.5), 1_000_000, 0.25)
        config.write_text('rate-per-client = "3M"\n')
        proxy.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any("policy reloaded" in line for line in proxy.lines))
        rate_over(0.2)
        assert_near(rate_over(1.5), 3_000_000, 0.25)
    finally:
        client.close()
