"""gconnect.tunnel.h2.connection in-process: bytes from an h2 client, no sockets.
A request whose DATA disagrees with its content-length is a stream error
(RFC 9113 §8.1.1), and the connection and its other streams go on."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes

from gconnect.tunnel.h2.connection import ServerConnection, StreamMalformed

pytestmark = pytest.mark.timeout(30)


def pair() -> tuple[h2.connection.H2Connection, ServerConnection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = ServerConnection(
        h2.config.H2Configuration(client_side=False, validate_inbound_headers=False, header_encoding=None)
    )
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the client's SETTINGS ack
    return client, server


def post(client: h2.connection.H2Connection, stream_id: int, length: str, *, end: bool = False) -> None:
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]
    client.send_headers(stream_id, [*headers, (b"content-length", length.encode())], end_stream=end)


def test_more_data_than_the_content_length_resets_that_stream_only():
    client, server = pair()
    post(client, 1, "10")
    client.send_data(1, b"abcd")
    client.send_data(1, b"efghijklmn", end_stream=True)  # 14 bytes in all
    client.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")])
    events = server.receive_data(client.data_to_send())  # one read: every frame at once
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["RequestReceived", "DataReceived"] and events[1].data == b"abcd"
    malformed = next(e for e in events if isinstance(e, StreamMalformed))
    assert malformed.stream_id == 1 and malformed.flow_controlled_length == 10 and "content-length 10" in malformed.why
    assert not any(isinstance(e, h2.events.DataReceived) and e.data == b"efghijklmn" for e in events)
    assert any(isinstance(e, h2.events.RequestReceived) and e.stream_id == 3 for e in events)  # after it, in order
    answer = client.receive_data(server.data_to_send())
    resets = [e for e in answer if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, ErrorCodes.PROTOCOL_ERROR)]
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in answer)
    server.send_headers(3, [(b":status", b"200")], end_stream=True)  # the connection goes on
    assert any(isinstance(e, h2.events.ResponseReceived) for e in client.receive_data(server.data_to_send()))


def test_end_stream_short_of_the_content_length_delivers_none_of_that_frame():
    client, server = pair()
    post(client, 1, "10")
    client.send_data(1, b"abcd", end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert [type(e).__name__ for e in events] == ["RequestReceived", "StreamMalformed"]
    assert "DATA 4 bytes" in events[1].why
    resets = [e for e in client.receive_data(server.data_to_send()) if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, ErrorCodes.PROTOCOL_ERROR)]


def test_data_sent_after_the_reset_is_a_closed_streams():
    client, server = pair()
    post(client, 1, "2")
    client.send_data(1, b"abc")
    server.receive_data(client.data_to_send())
    # DATA the client sent before it saw the reset (frame header: length 3, DATA, no flags, stream 1).
    events = server.receive_data(b"\x00\x00\x03\x00\x00\x00\x00\x00\x01xyz")
    assert not any(isinstance(e, (h2.events.DataReceived, StreamMalformed)) for e in events)
    answer = client.receive_data(server.data_to_send())
    assert [e.error_code for e in answer if isinstance(e, h2.events.StreamReset)] == [ErrorCodes.PROTOCOL_ERROR]
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in answer)


def test_a_matching_content_length_is_left_alone():
    client, server = pair()
    post(client, 1, "6")
    client.send_data(1, b"abc")
    client.send_data(1, b"def", end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert [type(e).__name__ for e in events] == ["RequestReceived", "DataReceived", "DataReceived", "StreamEnded"]


@pytest.mark.parametrize("lengths", [["abc"], ["5", "6"]])
def test_an_invalid_content_length_resets_that_stream_only(lengths):
    client, server = pair()
    headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")]
    client.send_headers(1, headers + [(b"content-length", v.encode()) for v in lengths])
    client.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.test"), (b":path", b"/")])
    events = server.receive_data(client.data_to_send())
    assert [(type(e).__name__, e.stream_id) for e in events] == [("RequestReceived", 3)]
    answer = client.receive_data(server.data_to_send())
    assert [(e.stream_id, e.error_code) for e in answer if isinstance(e, h2.events.StreamReset)] == [
        (1, ErrorCodes.PROTOCOL_ERROR)
    ]
    assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in answer)
