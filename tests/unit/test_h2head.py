"""The HTTP/2 CONNECT header block grammar, with header lists alone (no sockets)."""

from __future__ import annotations

import socket

import pytest

from gconnect.errors import HeadTooLargeError, MalformedRequestError, MethodNotAllowedError
from gconnect.tunnel.h2.head import parse_h2_connect

pytestmark = pytest.mark.timeout(10)


def parse(*fields: tuple[str, str], limit: int = 16384):
    return parse_h2_connect([(k.encode(), v.encode()) for k, v in fields], max_header_bytes=limit)


def test_a_plain_connect_gives_the_request():
    request = parse((":method", "CONNECT"), (":authority", "Example.COM:443"), ("user-agent", "x"))
    assert (request.host, request.port, request.family, request.version) == ("example.com", 443, 0, "2")
    assert request.headers == [(b"user-agent", b"x")]
    v6 = parse((":method", "CONNECT"), (":authority", "[::1]:8443"))
    assert (v6.host, v6.family, v6.target) == ("::1", socket.AF_INET6, "[::1]:8443")
    assert parse((":method", "CONNECT"), (":authority", "a.test:1"), ("te", "trailers")).port == 1
    assert parse((":method", "CONNECT"), (":authority", "a.test:1"), ("host", "a.test:1")).host == "a.test"


@pytest.mark.parametrize(
    "fields",
    [
        [(":method", "CONNECT")],  # no :authority
        [(":method", "CONNECT"), (":authority", "a.test:443"), (":scheme", "https")],  # RFC 9113 §8.5
        [(":method", "CONNECT"), (":authority", "a.test:443"), (":path", "/")],
        [(":method", "CONNECT"), (":authority", "a.test:443"), (":protocol", "websocket")],  # RFC 8441, not offered
        [(":method", "CONNECT"), (":authority", "a.test")],  # no port
        [(":method", "CONNECT"), (":authority", "a.test:0")],
        [(":method", "CONNECT"), (":authority", "user@a.test:443")],
        [(":method", "CONNECT"), (":authority", "a.test:443"), (":authority", "b.test:443")],  # repeated
        [(":method", "CONNECT"), ("x", "y"), (":authority", "a.test:443")],  # pseudo after regular
        [(":method", "CONNECT"), (":authority", "a.test:443"), (":status", "200")],  # response-only
        [(":method", "CONNECT"), (":authority", "a.test:443"), ("X-Upper", "1")],  # §8.2.1
        [(":method", "CONNECT"), (":authority", "a.test:443"), ("connection", "close")],  # §8.2.2
        [(":method", "CONNECT"), (":authority", "a.test:443"), ("te", "gzip")],
        [(":method", "CONNECT"), (":authority", "a.test:443"), ("x", "a\r\nb")],
        [(":method", "CONNECT"), (":authority", "a.test:443"), ("x", " padded")],
        [(":method", "CONNECT"), (":authority", "a.test:443"), ("host", "b.test:443")],  # two targets
        [(":authority", "a.test:443")],  # no :method
    ],
)
def test_malformed_blocks_are_400(fields):
    with pytest.raises(MalformedRequestError):
        parse(*fields)


def test_other_methods_are_405_and_big_blocks_431():
    with pytest.raises(MethodNotAllowedError):
        parse((":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "a.test"))
    with pytest.raises(HeadTooLargeError):
        parse((":method", "CONNECT"), (":authority", "a.test:443"), ("x", "y" * 300), limit=256)
