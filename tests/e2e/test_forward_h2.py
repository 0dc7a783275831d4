"""Plain http:// requests as HTTP/2 streams (``:scheme http``) on the TLS
listener, what Chromium sends through an HTTPS proxy for an http:// URL: the
same forwarding as HTTP/1.1, end to end with an h2 client."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading

import pytest

from ..h2client import H2Client
from ..origins import Seen, h11_origin, recording_handler

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def h2_client(start_tls_proxy, client_context):
    proxy = start_tls_proxy("--forward-port", "1-65535")
    client = H2Client((proxy.host, proxy.port), client_context)
    yield proxy, client
    client.close()


def request(client: H2Client, method: str, authority: str, path: str, *, body: bytes | None = None, fields=()) -> int:
    stream_id = client.conn.get_next_available_stream_id()
    headers = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *fields]
    client.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers], end_stream=body is None)
    client.flush()
    if body is not None:
        client.send(stream_id, body, end=True)
    return stream_id


def test_get_head_and_bodies_both_ways(h2_client, upstream_factory) -> None:
    proxy, client = h2_client
    origin, _ = h11_origin(upstream_factory)
    authority = f"127.0.0.1:{origin.port}"
    get = request(client, "GET", authority, "/a?b=1")
    assert client.status(get) == 200
    client.wait(lambda: get in client.ended)
    got = json.loads(client.data[get])
    assert got["target"] == "/a?b=1" and ["Host", authority] in got["headers"]
    assert ["Via", "2 gconnect"] in got["headers"]
    assert client.responses[get][b"via"] == b"1.1 gconnect"
    head = request(client, "HEAD", authority, "/")
    assert client.status(head) == 200
    client.wait(lambda: head in client.ended)
    assert client.data[head] == b"" and b"content-length" in client.responses[head]
    # A body with a content-length, and one without (sent on chunked).
    data = os.urandom(200_000)
    for fields in ([("content-length", str(len(data)))], []):
        post = request(client, "POST", authority, "/up", body=data, fields=fields)
        assert client.status(post) == 200
        client.wait(lambda post=post: post in client.ended)
        assert json.loads(client.data[post])["sha256"] == hashlib.sha256(data).hexdigest()
    # A large chunked response, through the stream's flow control.
    big = request(client, "GET", authority, "/bytes/3000000")
    client.wait(lambda: big in client.ended)
    assert bytes(client.data[big]) == (bytes(range(256)) * 256 * 46)[:3_000_000]
    line = proxy.wait_access(f"stream={big}")
    assert "proto=h2" in line and "method=GET" in line and "status=200" in line


def test_policy_and_refusals_on_a_stream(start_tls_proxy, client_context, upstream_factory) -> None:
    origin, _ = h11_origin(upstream_factory)
    proxy = start_tls_proxy()  # port 80 only for http://
    client = H2Client((proxy.host, proxy.port), client_context)
    try:
        refused = request(client, "GET", f"127.0.0.1:{origin.port}", "/")
        assert client.status(refused) == 403
        assert client.responses[refused][b"proxy-status"].startswith(b"gconnect; error=http_request_denied")
        trace = request(client, "TRACE", f"127.0.0.1:{origin.port}", "/")
        assert client.status(trace) == 405
        assert origin.accepted == 0
    finally:
        client.close()


def test_a_reset_stream_stops_its_request_and_not_the_others(h2_client, upstream_factory) -> None:
    proxy, client = h2_client
    origin, _ = h11_origin(upstream_factory)
    authority = f"127.0.0.1:{origin.port}"
    stream_id = client.conn.get_next_available_stream_id()
    client.held.add(stream_id)  # the client reads nothing of it: the proxy waits on its window
    assert request(client, "GET", authority, "/bytes/50000000") == stream_id
    assert client.status(stream_id) == 200
    client.wait(lambda: len(client.data[stream_id]) > 0)
    client.reset(stream_id)
    assert "reason=client_reset" in proxy.wait_access(f"stream={stream_id}")
    other = request(client, "GET", authority, "/after")
    assert client.status(other) == 200
    client.wait(lambda: other in client.ended)
    assert json.loads(client.data[other])["target"] == "/after"


def test_each_stream_counts_against_the_limits(start_tls_proxy, client_context, upstream_factory) -> None:
    proxy = start_tls_proxy("--forward-port", "1-65535", "--max-clients-per-ip", "1")
    client = H2Client((proxy.host, proxy.port), client_context)
    origin, _ = h11_origin(upstream_factory)
    authority = f"127.0.0.1:{origin.port}"
    try:
        first = client.conn.get_next_available_stream_id()
        client.held.add(first)  # unread: the first request stays under way
        assert request(client, "GET", authority, "/bytes/50000000") == first
        assert client.status(first) == 200
        second = request(client, "GET", authority, "/")
        assert client.status(second) == 429
        client.reset(first)
        third = request(client, "GET", authority, "/")
        assert client.status(third) == 200
    finally:
        client.close()


# --- RFC 9113 §8.1.1: content-length against DATA -------------------------------------

PROTOCOL_ERROR = 1


class StreamingOrigin:
    """An origin that records every byte of its one connection as it arrives, until EOF, and never answers."""

    def __init__(self) -> None:
        self.data = b""
        self.lock = threading.Condition()
        self.eof = threading.Event()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(20)
        try:
            while chunk := conn.recv(65536):
                with self.lock:
                    self.data += chunk
                    self.lock.notify_all()
        except OSError:
            pass
        self.eof.set()

    def wait_for(self, ending: bytes) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: self.data.endswith(ending), 10), self.data


def post_head(client: H2Client, authority: str, length: int, *, end: bool = False) -> int:
    stream_id = client.conn.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", authority), (":path", "/up")]
    headers.append(("content-length", str(length)))
    client.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers], end_stream=end)
    client.flush()
    return stream_id


def still_serves(client: H2Client, upstream_factory) -> None:
    """The connection outlived the stream error: another stream is answered."""
    origin, _ = h11_origin(upstream_factory)
    other = request(client, "GET", f"127.0.0.1:{origin.port}", "/after")
    assert client.status(other) == 200 and client.goaway is None


def test_more_data_than_the_content_length_is_a_stream_error(h2_client, upstream_factory) -> None:
    proxy, client = h2_client
    origin = StreamingOrigin()
    server = upstream_factory(origin.handle)
    stream_id = post_head(client, f"127.0.0.1:{server.port}", 10)
    client.send(stream_id, b"abcd")
    origin.wait_for(b"\r\n\r\nabcd")  # head and the first DATA reached the origin
    client.send(stream_id, b"efghijklmn", end=True)  # 14 bytes of a 10-byte body
    client.wait(lambda: stream_id in client.resets)
    assert client.resets[stream_id] == PROTOCOL_ERROR and stream_id not in client.responses
    # The origin got what had already gone, then its connection closed: no byte of the frame that overran.
    assert origin.eof.wait(10)
    head, _, body = origin.data.partition(b"\r\n\r\n")
    assert b"Content-Length: 10" in head and body == b"abcd"
    assert "reason=malformed_stream" in proxy.wait_access(f"stream={stream_id}")
    still_serves(client, upstream_factory)


def test_end_stream_short_of_the_content_length_is_a_stream_error(h2_client, upstream_factory) -> None:
    proxy, client = h2_client
    origin = StreamingOrigin()
    server = upstream_factory(origin.handle)
    stream_id = post_head(client, f"127.0.0.1:{server.port}", 10)
    origin.wait_for(b"\r\n\r\n")
    client.send(stream_id, b"abcd", end=True)
    client.wait(lambda: stream_id in client.resets)
    assert client.resets[stream_id] == PROTOCOL_ERROR
    assert origin.eof.wait(10) and origin.data.endswith(b"\r\n\r\n")  # the head alone, then EOF
    assert "reason=malformed_stream" in proxy.wait_access(f"stream={stream_id}")
    still_serves(client, upstream_factory)


def test_a_content_length_on_a_stream_without_data_is_a_stream_error(h2_client, upstream_factory) -> None:
    proxy, client = h2_client
    origin, _ = h11_origin(upstream_factory)
    stream_id = post_head(client, f"127.0.0.1:{origin.port}", 5, end=True)
    client.wait(lambda: stream_id in client.resets)
    assert client.resets[stream_id] == PROTOCOL_ERROR and stream_id not in client.responses
    assert "reason=malformed_stream" in proxy.wait_access(f"stream={stream_id}")
    still_serves(client, upstream_factory)
    assert origin.accepted == 0


def test_a_response_cut_short_of_its_content_length_is_a_stream_error(h2_client, upstream_factory) -> None:
    _, client = h2_client
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabcd"  # then the origin closes
    origin = upstream_factory(recording_handler(Seen(), response))
    stream_id = request(client, "GET", f"127.0.0.1:{origin.port}", "/")
    client.wait(lambda: stream_id in client.resets)
    # The HEADERS said 10 and 4 bytes followed: the stream is reset, never ended as if complete.
    assert client.responses[stream_id][b"content-length"] == b"10" and bytes(client.data[stream_id]) == b"abcd"
    assert client.resets[stream_id] == PROTOCOL_ERROR and stream_id not in client.ended
    still_serves(client, upstream_factory)


def test_two_different_content_lengths_are_a_stream_error(h2_client, upstream_factory) -> None:
    _, client = h2_client
    origin, _ = h11_origin(upstream_factory)
    stream_id = client.conn.get_next_available_stream_id()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{origin.port}"), (":path", "/")]
    headers += [("content-length", "5"), ("content-length", "6")]
    client.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers])
    client.flush()
    client.wait(lambda: stream_id in client.resets)
    assert client.resets[stream_id] == PROTOCOL_ERROR and stream_id not in client.responses
    still_serves(client, upstream_factory)
    assert origin.accepted == 0
