"""HTTP/2 on the TLS listener: CONNECT streams over one connection (RFC 9113 §8.5).

Driven by python-hyper's h2 in-process (tests/h2client.py); headless Chromium and
curl --proxy-http2 are in tests/interop/test_h2_listener.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from gconnect.testing.procfs import tree_rss_kib
from gconnect.tunnel.h2.frames import data_frames

from ..authhelper import command as helper_cmd
from ..conftest import connect_over, recv_all, recv_exactly, silent_listener, wait_until
from ..h2client import H2Client
from ..unit.test_auth import basic

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


@pytest.fixture
def h2_client(client_context):
    clients: list[H2Client] = []

    def make(proxy, **kwargs) -> H2Client:
        client = H2Client((proxy.host, proxy.port), client_context, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def echo_round(client: H2Client, stream_id: int, data: bytes) -> None:
    before = len(client.data[stream_id])
    client.send(stream_id, data)
    client.wait(lambda: len(client.data[stream_id]) >= before + len(data))
    assert bytes(client.data[stream_id][before:]) == data


# --- real clients ---------------------------------------------------------------------


def test_http11_clients_are_served_as_before(start_tls_proxy, client_context, echo):
    proxy = start_tls_proxy()
    client_context.set_alpn_protocols(["http/1.1"])
    tls = client_context.wrap_socket(proxy.connect(), server_hostname="127.0.0.1")
    with connect_over(tls, echo.target) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
    line = proxy.wait_access(f"target={echo.target}")
    assert "status=200" in line and "proto=" not in line


# --- data -----------------------------------------------------------------------------


def test_200_streams_on_one_connection_are_byte_exact_both_ways(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--h2-max-streams", "200")
    client = h2_client(proxy)
    assert client.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 200
    sent = {client.connect(echo.target): os.urandom(MiB) for _ in range(200)}
    client.wait(lambda: all(sid in client.responses for sid in sent))
    assert {int(client.responses[sid][b":status"]) for sid in sent} == {200}
    for stream_id, data in sent.items():
        client.send(stream_id, data, end=True)
    client.wait(lambda: all(sid in client.ended for sid in sent), timeout=60)
    for stream_id, data in sent.items():
        assert hashlib.sha256(client.data[stream_id]).digest() == hashlib.sha256(data).digest(), stream_id
    wait_until(lambda: sum(f"up={MiB} down={MiB} " in line for line in proxy.access_lines()) == 200)
    assert all("proto=h2" in line for line in proxy.access_lines())


def test_data_sent_before_the_200_is_delivered_after_it(start_tls_proxy, h2_client, echo):
    client = h2_client(start_tls_proxy())
    data = os.urandom(300 * 1024)
    stream_id = client.connect(echo.target)
    client.send(stream_id, data, end=True)  # not waiting for the 200 (RFC 9110 §9.3.6)
    client.wait(lambda: stream_id in client.ended)
    assert client.status(stream_id) == 200 and bytes(client.data[stream_id]) == data


def test_client_end_stream_is_a_half_close_and_the_target_keeps_talking(start_tls_proxy, h2_client, upstream_factory):
    def handler(conn: socket.socket) -> None:
        data = recv_all(conn)  # until the client's END_STREAM arrives as a FIN
        conn.sendall(b"got " + data)

    server = upstream_factory(handler)
    client = h2_client(start_tls_proxy())
    stream_id = client.connect(server.target)
    assert client.status(stream_id) == 200
    client.send(stream_id, b"question", end=True)
    client.wait(lambda: stream_id in client.ended)
    assert bytes(client.data[stream_id]) == b"got question"


def test_target_eof_is_end_stream_and_the_client_keeps_sending(start_tls_proxy, h2_client, upstream_factory):
    received = {}

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        received["data"] = recv_all(conn)

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    client = h2_client(proxy)
    stream_id = client.connect(server.target)
    client.wait(lambda: stream_id in client.ended)
    assert bytes(client.data[stream_id]) == b"bye"
    client.send(stream_id, b"after", end=True)
    wait_until(lambda: "data" in received)
    assert received["data"] == b"after"
    assert "reason=upstream_eof" in proxy.wait_access(f"target={server.target}")


def test_client_reset_ends_that_stream_only_and_resets_the_target(start_tls_proxy, h2_client, upstream_factory, echo):
    outcome = {}

    def handler(conn: socket.socket) -> None:
        try:
            outcome["data"] = recv_all(conn)
        except ConnectionResetError:
            outcome["data"] = "reset"

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    client = h2_client(proxy)
    doomed, other = client.connect(server.target), client.connect(echo.target)
    assert client.status(doomed) == client.status(other) == 200
    client.send(doomed, b"partial")
    client.reset(doomed, ErrorCodes.CANCEL)
    wait_until(lambda: "data" in outcome)
    assert outcome["data"] == "reset"  # passed on as a reset, not a clean EOF
    echo_round(client, other, b"still here")
    assert "reason=client_reset" in proxy.wait_access(f"target={server.target}")


def test_target_reset_is_rst_stream_connect_error_for_that_stream_only(
    start_tls_proxy, h2_client, upstream_factory, echo
):
    def handler(conn: socket.socket) -> None:
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    client = h2_client(proxy)
    doomed, other = client.connect(server.target), client.connect(echo.target)
    assert client.status(doomed) == client.status(other) == 200
    client.send(doomed, b"x")
    client.wait(lambda: doomed in client.resets)
    assert client.resets[doomed] == ErrorCodes.CONNECT_ERROR  # RFC 9113 §8.5
    echo_round(client, other, b"unaffected")
    assert "reason=upstream_reset" in proxy.wait_access(f"target={server.target}")


def test_a_stream_the_client_does_not_read_stalls_alone(start_tls_proxy, h2_client, upstream_factory, echo):
    window = 256 * 1024
    payload = os.urandom(8 * MiB)
    progress = {"sent": 0}

    def handler(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)  # no send-side autotuning
        view = memoryview(payload)
        while view:  # blocks while the proxy stops reading for want of window
            sent = conn.send(view[: 64 * 1024])
            progress["sent"] += sent
            view = view[sent:]
        conn.shutdown(socket.SHUT_WR)
        recv_all(conn)

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    client = h2_client(proxy, window=window)
    stalled = client.connect(server.target)
    client.held.add(stalled)
    other = client.connect(echo.target)
    client.wait(lambda: len(client.data[stalled]) == window)
    for _ in range(20):  # the other stream keeps flowing meanwhile
        echo_round(client, other, os.urandom(16 * 1024))
    assert len(client.data[stalled]) == window  # not a byte past the window
    # The proxy stopped reading that target: what it sent sits in socket buffers.
    plateau = progress["sent"]
    client.pump(0.3)
    assert progress["sent"] == plateau < len(payload)
    client.release(stalled)
    client.held.clear()
    client.wait(lambda: stalled in client.ended)
    assert bytes(client.data[stalled]) == payload


def test_a_stream_whose_target_does_not_read_stalls_alone(start_tls_proxy, h2_client, upstream_factory, echo):
    payload = os.urandom(32 * MiB)
    reading = threading.Event()
    got = bytearray()

    def handler(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no receive-side autotuning
        reading.wait(60)
        while chunk := conn.recv(MiB):
            got.extend(chunk)

    server = upstream_factory(handler)
    proxy = start_tls_proxy()  # a stream's window: 1 MiB
    client = h2_client(proxy)
    stalled = client.connect(server.target)
    assert client.status(stalled) == 200
    client.send(stalled, payload, end=True)
    other = client.connect(echo.target)
    client.wait(lambda: client.conn.local_flow_control_window(stalled) == 0)
    for _ in range(20):  # the other stream keeps flowing meanwhile
        echo_round(client, other, os.urandom(16 * 1024))
    # The proxy gives the window back only as the target takes the bytes: the
    # client sent its window and what the target's socket buffers hold, no more.
    assert client.conn.local_flow_control_window(stalled) == 0
    assert len(payload) - len(client.outgoing[stalled]) < 8 * MiB
    reading.set()
    client.wait(lambda: len(got) == len(payload), timeout=60)
    assert got == payload


def test_a_target_that_resets_while_its_stream_is_stalled_is_noticed_at_once(
    start_tls_proxy, h2_client, upstream_factory
):
    stuck = threading.Event()

    def handler(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        conn.settimeout(0.5)
        try:
            while True:
                conn.sendall(b"x" * 65536)
        except TimeoutError:
            stuck.set()  # the proxy stopped reading: the stream has no window
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    client = h2_client(proxy, window=128 * 1024)
    stalled = client.connect(server.target)
    client.held.add(stalled)
    client.wait(lambda: stuck.is_set())
    client.wait(lambda: stalled in client.resets, timeout=5)  # no window opened, no idle timeout
    assert client.resets[stalled] == ErrorCodes.CONNECT_ERROR
    assert "reason=upstream_reset" in proxy.wait_access(f"target={server.target}")


def test_idle_deadline_is_per_stream(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--idle-timeout", "0.4")
    client = h2_client(proxy)
    idle, busy = client.connect(echo.target), client.connect(echo.target)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # the busy stream keeps talking past the deadline
        echo_round(client, busy, b"tick")
        client.pump(0.05)
    assert idle in client.resets and busy not in client.resets
    assert client.resets[idle] == ErrorCodes.CANCEL
    assert "reason=idle" in proxy.wait_access("reason=idle")


def test_half_close_and_lifetime_deadlines_are_per_stream(start_tls_proxy, h2_client, upstream_factory, echo):
    def handler(conn: socket.socket) -> None:
        conn.shutdown(socket.SHUT_WR)  # the target is done at once; the client never ends
        recv_all(conn)

    server = upstream_factory(handler)
    proxy = start_tls_proxy("--half-close-timeout", "0.3")
    client = h2_client(proxy)
    half, other = client.connect(server.target), client.connect(echo.target)
    client.wait(lambda: half in client.ended)
    client.wait(lambda: half in client.resets, timeout=5)
    assert client.resets[half] == ErrorCodes.CANCEL and other not in client.resets
    assert "reason=half_close_timeout" in proxy.wait_access(f"target={server.target}")

    proxy = start_tls_proxy("--max-tunnel-lifetime", "0.5")
    client = h2_client(proxy)
    first = client.connect(echo.target)
    assert client.status(first) == 200
    time.sleep(0.3)  # the second stream is younger: its lifetime counts from its own 200
    second = client.connect(echo.target)
    client.wait(lambda: first in client.resets, timeout=5)
    assert second not in client.resets
    echo_round(client, second, b"younger")
    client.wait(lambda: second in client.resets, timeout=5)
    assert "reason=lifetime" in proxy.wait_access("reason=lifetime")


# --- refusals, auth, limits -----------------------------------------------------------


def refusal(client: H2Client, authority: str | None, extra=None) -> tuple[int, dict[bytes, bytes], int]:
    stream_id = client.connect(authority, extra)
    status = client.status(stream_id)
    client.wait(lambda: stream_id in client.ended or stream_id in client.resets)
    assert stream_id in client.ended  # HEADERS with END_STREAM
    return status, client.responses[stream_id], stream_id


def test_every_refusal_is_headers_with_end_stream(start_tls_proxy, h2_client, echo, dns_server):
    proxy = start_tls_proxy("--deny-dest", "127.0.0.3/32", "--max-header-bytes", "1024", "--connect-timeout", "0.3")
    client = h2_client(proxy)
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    dead = closed_port.getsockname()[1]
    closed_port.close()
    cases = [
        (400, None, [(":scheme", "https"), (":path", "/")]),  # RFC 9113 §8.5: :authority only
        (400, echo.target, [(":path", "/")]),
        (400, None, []),
        (400, "no-port.test", []),
        (400, "a/b:443", []),
        (403, f"127.0.0.3:{echo.port}", []),
        (431, echo.target, [("x-big", "y" * 2000)]),
        (502, "missing.test:443", []),
        (502, f"127.0.0.1:{dead}", []),
    ]
    for status, authority, extra in cases:
        assert refusal(client, authority, extra)[0] == status, (authority, extra)
    get = client.connect("web.test", [(":scheme", "https"), (":path", "/")], method="GET")
    assert client.status(get) == 405 and client.responses[get][b"allow"] == b"CONNECT"
    with silent_listener() as port:
        assert refusal(client, f"127.0.0.1:{port}")[0] == 504
    for status in (400, 403, 405, 431, 502, 504):
        assert " proto=h2 " in proxy.wait_access(f"status={status} ")
    assert echo.accepted == 0
    echo_round(client, client.connect(echo.target), b"the connection serves on")


def test_get_with_scheme_and_path_is_405_not_a_connection_error(start_tls_proxy, h2_client):
    client = h2_client(start_tls_proxy())
    stream_id = client.connect("web.test", [(":scheme", "https"), (":path", "/")], method="GET")
    assert client.status(stream_id) == 405
    assert client.goaway is None


def test_each_stream_counts_against_the_client_limits(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--max-clients-per-ip", "2")
    client = h2_client(proxy)
    first, second = client.connect(echo.target), client.connect(echo.target)
    assert client.status(first) == client.status(second) == 200
    status, headers, _ = refusal(client, echo.target)
    assert status == 429 and headers[b"retry-after"] == b"1"
    client.send(first, b"", end=True)
    client.wait(lambda: first in client.ended)
    assert client.status(client.connect(echo.target)) == 200  # room again
    proxy = start_tls_proxy("--max-clients", "1")
    client = h2_client(proxy)
    assert client.status(client.connect(echo.target)) == 200
    status, headers, _ = refusal(client, echo.target)
    assert status == 503 and headers[b"retry-after"] == b"1"


def test_auth_is_per_stream(start_tls_proxy, h2_client, echo, tmp_path):
    import base64

    import bcrypt

    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
    proxy = start_tls_proxy("--auth-file", str(path))
    client = h2_client(proxy)

    def basic(credentials: str) -> list[tuple[str, str]]:
        return [("proxy-authorization", "Basic " + base64.b64encode(credentials.encode()).decode())]

    status, headers, _ = refusal(client, echo.target)
    assert status == 407 and headers[b"proxy-authenticate"] == b'Basic realm="gconnect"'
    assert refusal(client, echo.target, basic("alice:wrong"))[0] == 407
    stream_id = client.connect(echo.target, basic("alice:pw"))
    assert client.status(stream_id) == 200
    echo_round(client, stream_id, b"authenticated")
    client.send(stream_id, b"", end=True)
    line = proxy.wait_access("status=200")
    assert "user=alice " in line and "proto=h2" in line


def test_streams_past_the_limit_are_refused_and_the_rest_go_on(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--h2-max-streams", "3")
    client = h2_client(proxy)
    assert client.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 3
    # A client that ignores the limit: its h2 told the proxy allows 10.
    client.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 10
    client.conn.remote_settings.acknowledge()
    streams = [client.connect(echo.target) for _ in range(4)]
    client.wait(lambda: streams[3] in client.resets)
    assert client.resets[streams[3]] == ErrorCodes.REFUSED_STREAM  # RFC 9113 §5.1.2
    for stream_id in streams[:3]:
        echo_round(client, stream_id, b"ok")
    assert client.goaway is None


# --- the connection -------------------------------------------------------------------


def test_a_protocol_error_ends_the_connection_with_goaway(start_tls_proxy, client_context, h2_client, echo):
    proxy = start_tls_proxy()
    client = h2_client(proxy)
    client.sock.sendall(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00junk")  # DATA on stream 0 (§6.1)
    client.wait(lambda: client.goaway is not None)
    assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert "reason=protocol_error proto=h2 stream=0" in proxy.wait_access("stream=0")


def test_data_past_a_stream_window_is_a_flow_control_error(start_tls_proxy, h2_client):
    # The target's SYNs vanish, so nothing the stream holds is handed on: its window
    # (65,535, RFC 9113's initial one) only shrinks, and one octet more ends the connection.
    with silent_listener() as port:
        proxy = start_tls_proxy("--h2-window-bytes", "65535")
        client = h2_client(proxy)
        stream_id = client.connect(f"127.0.0.1:{port}")
        frames = data_frames(stream_id, memoryview(b"x" * 65_535), 16_384)
        client.sock.sendall(b"".join(frames))  # past h2's own checks: raw frames
        client.sock.sendall(b"".join(data_frames(stream_id, memoryview(b"y"), 16_384)))
        client.wait(lambda: client.goaway is not None)
        assert client.goaway.error_code == ErrorCodes.FLOW_CONTROL_ERROR
        assert "reason=protocol_error proto=h2 stream=0" in proxy.wait_access("stream=0")


def padded(stream_id: int, payload: bytes, pad: int) -> bytes:
    """A DATA frame with PADDED set and *pad* octets of padding (RFC 9113 §6.1)."""
    body = bytes([pad]) + payload + b"\0" * pad
    return len(body).to_bytes(3, "big") + b"\x00\x08" + stream_id.to_bytes(4, "big") + body


def test_padded_data_reaches_the_target_without_its_padding(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy()
    client = h2_client(proxy)
    stream_id = client.connect(echo.target)
    assert client.status(stream_id) == 200
    payloads = [os.urandom(n) for n in (1, 1000, 16_000)]
    client.sock.sendall(b"".join(padded(stream_id, p, pad) for p, pad in zip(payloads, (0, 255, 17), strict=True)))
    client.wait(lambda: len(client.data[stream_id]) == sum(map(len, payloads)))
    assert bytes(client.data[stream_id]) == b"".join(payloads)


def test_data_on_a_closed_stream_gives_the_connection_window_back(start_tls_proxy, h2_client, echo):
    # Two streams of 65,535: a connection window of 131,070, which three windows'
    # worth of DATA on a refused stream would exceed if it were not given back.
    proxy = start_tls_proxy("--h2-max-streams", "2", "--h2-window-bytes", "65535")
    client = h2_client(proxy)
    refused = client.connect("127.0.0.1:1")  # nothing listens there: 502
    assert client.status(refused) == 502
    client.wait(lambda: refused in client.resets or refused in client.ended)
    for _ in range(3):
        client.sock.sendall(b"".join(data_frames(refused, memoryview(os.urandom(65_535)), 16_384)))
    stream_id = client.connect(echo.target)
    assert client.status(stream_id) == 200
    echo_round(client, stream_id, os.urandom(50_000))
    assert client.goaway is None


def test_data_after_end_stream_is_a_stream_error_and_not_delivered(start_tls_proxy, h2_client, upstream_factory):
    got = bytearray()
    done = threading.Event()

    def handler(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            got.extend(chunk)
        done.set()

    server = upstream_factory(handler)
    proxy = start_tls_proxy()
    client = h2_client(proxy)
    stream_id = client.connect(server.target)
    assert client.status(stream_id) == 200
    frames = [*data_frames(stream_id, memoryview(b"a" * 20_000), 16_384), padded(stream_id, b"b", 0)]
    client.sock.sendall(b"".join(frames))  # two runs of DATA: the stream's DATA is h2's no more
    client.wait(lambda: len(got) == 20_001)
    end = b"\x00\x00\x01\x00\x01" + stream_id.to_bytes(4, "big") + b"c"  # DATA with END_STREAM
    client.sock.sendall(end + b"".join(data_frames(stream_id, memoryview(b"late"), 16_384)))
    client.wait(lambda: stream_id in client.resets)
    assert client.resets[stream_id] == ErrorCodes.STREAM_CLOSED  # RFC 9113 §5.1, half-closed (remote)
    assert done.wait(10) and bytes(got) == b"a" * 20_000 + b"bc"


def test_sigterm_sends_goaway_and_open_streams_drain(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--drain-timeout", "20")
    client = h2_client(proxy)
    stream_id = client.connect(echo.target)
    assert client.status(stream_id) == 200
    proxy.proc.send_signal(signal.SIGTERM)
    client.wait(lambda: client.goaway is not None)
    assert client.goaway.error_code == ErrorCodes.NO_ERROR
    assert client.goaway.last_stream_id == stream_id
    echo_round(client, stream_id, b"still draining")  # the open stream goes on
    late = client.connect(echo.target)
    client.wait(lambda: late in client.resets)
    assert client.resets[late] == ErrorCodes.REFUSED_STREAM
    client.send(stream_id, b"", end=True)
    client.wait(lambda: stream_id in client.ended)
    assert proxy.proc.wait(15) == 0
    assert "reason=client_eof proto=h2" in proxy.wait_access(f"stream={stream_id}")


def test_a_client_that_vanishes_ends_every_stream_and_leaks_nothing(start_tls_proxy, h2_client, echo, dns_server):
    hold = threading.Event()
    dns_server.add("slowh2.test", a=["127.0.0.1"], hold=hold)
    proxy = start_tls_proxy("--dns-timeout", "5")
    baseline = proxy.fd_count()
    client = h2_client(proxy)
    relaying = [client.connect(echo.target) for _ in range(5)]
    for stream_id in relaying:
        echo_round(client, stream_id, b"x")
    client.connect(f"slowh2.test:{echo.port}")  # in its handshake, waiting for DNS
    wait_until(lambda: dns_server.count("slowh2.test"))
    client.sock.close()
    try:
        wait_until(lambda: sum("reason=client_reset proto=h2" in line for line in proxy.access_lines()) == 6)
        assert "stream=0" in proxy.wait_access("stream=0")
        wait_until(lambda: proxy.fd_count() == baseline)
    finally:
        hold.set()
    other = h2_client(proxy)
    echo_round(other, other.connect(echo.target), b"next client")


#: Idle connections for the RSS bound, and what each may keep (its TLS session, h2's
#: state, the session's objects); a connection's own read buffers and DATA framer
#: alone came to over 1 MiB.
IDLE_CONNECTIONS = 40
IDLE_KIB_PER_CONNECTION = 300


def test_an_idle_connection_keeps_no_large_buffer(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy()

    def used_once(client: H2Client) -> None:
        stream_id = client.connect(echo.target)
        data = os.urandom(16 * 1024)
        client.send(stream_id, data, end=True)  # both ways: the read buffers and the framer
        client.wait(lambda: stream_id in client.ended)
        assert bytes(client.data[stream_id]) == data

    used_once(h2_client(proxy))  # the process's own buffers, imports and caches
    wait_until(lambda: len(proxy.access_lines()) == 1)
    before = tree_rss_kib(proxy.pid)
    for _ in range(IDLE_CONNECTIONS):
        used_once(h2_client(proxy))
    wait_until(lambda: len(proxy.access_lines()) == 1 + IDLE_CONNECTIONS)  # every stream closed
    grown = tree_rss_kib(proxy.pid) - before
    assert grown < IDLE_CONNECTIONS * IDLE_KIB_PER_CONNECTION, f"{grown / IDLE_CONNECTIONS:.0f} KiB a connection"


def test_a_stream_reset_in_its_dns_step_leaves_the_shared_lookup_to_the_others(
    start_tls_proxy, h2_client, echo, dns_server
):
    # Two streams wait on one lookup of a slow name; the first one's client gives up.
    # The lookup goes on for the second, which gets its tunnel: a cancelled asker
    # must not fail everyone waiting on the same name.
    hold = threading.Event()
    dns_server.add("sharedh2.test", a=["127.0.0.1"], hold=hold)
    proxy = start_tls_proxy("--dns-timeout", "10")
    client = h2_client(proxy)
    doomed = client.connect(f"sharedh2.test:{echo.port}")
    wait_until(lambda: dns_server.count("sharedh2.test"))
    kept = client.connect(f"sharedh2.test:{echo.port}")
    client.pump()  # both streams' HEADERS are with the proxy, both waiting on the lookup
    client.reset(doomed)
    line = proxy.wait_access(f"stream={doomed}")
    assert "status=499" in line and "reason=client_reset" in line
    hold.set()
    client.wait(lambda: client.status(kept) == 200)
    echo_round(client, kept, b"after the other gave up")
    assert dns_server.count("sharedh2.test", "A") == 1


def test_a_stream_reset_during_its_login_check_leaves_the_check_to_the_others(start_tls_proxy, h2_client, echo):
    # Two streams with the same credentials share one helper check (the helper takes
    # 3 s for "slow"); the first one's client gives up meanwhile. The second must
    # still be let in: a cancelled asker must not turn the shared answer into a 407.
    proxy = start_tls_proxy("--auth-helper", helper_cmd())
    client = h2_client(proxy)
    credentials = [("proxy-authorization", basic("slow", "pw").decode())]
    doomed = client.connect(echo.target, credentials)
    kept = client.connect(echo.target, credentials)
    client.pump()  # both streams' HEADERS are with the proxy, both waiting on the one check
    client.reset(doomed)
    line = proxy.wait_access(f"stream={doomed}")
    assert "status=499" in line and "reason=client_reset" in line
    client.wait(lambda: client.status(kept) == 200)
    echo_round(client, kept, b"let in after the other gave up")


def test_a_connection_without_streams_is_closed_at_the_idle_timeout(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--idle-timeout", "0.3")
    client = h2_client(proxy)
    stream_id = client.connect(echo.target)
    echo_round(client, stream_id, b"busy")
    client.send(stream_id, b"", end=True)
    client.wait(lambda: stream_id in client.ended)
    client.wait(lambda: client.goaway is not None, timeout=5)  # 0.3 s after its last stream
    assert client.goaway.error_code == ErrorCodes.NO_ERROR
    assert "reason=idle proto=h2 stream=0" in proxy.wait_access("stream=0")


def test_json_log_names_the_protocol_and_stream(start_tls_proxy, h2_client, echo):
    proxy = start_tls_proxy("--log-format", "json")
    client = h2_client(proxy)
    stream_id = client.connect(echo.target)
    echo_round(client, stream_id, b"12345")
    client.send(stream_id, b"", end=True)
    client.wait(lambda: stream_id in client.ended)
    line = proxy.wait_access('"event":"close"')
    record = json.loads(line)
    assert (record["proto"], record["stream"], record["status"], record["up"]) == ("h2", stream_id, 200, 5)
