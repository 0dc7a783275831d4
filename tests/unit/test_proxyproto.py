"""The PROXY protocol header parser (v1 and v2), with bytes alone."""

from __future__ import annotations

import pytest

from gconnect.errors import ProxyHeaderError
from gconnect.tunnel import proxyproto
from gconnect.tunnel.proxyproto import ProxyHeader, parse, render_v1, render_v2

pytestmark = pytest.mark.timeout(60)

SRC4, DST4 = ("203.0.113.7", 51234), ("192.0.2.1", 3128)
SRC6, DST6 = ("2001:db8::7", 443), ("2001:db8::1", 3128)


@pytest.mark.parametrize(
    "header,expected",
    [
        (render_v1(SRC4, DST4), ProxyHeader(1, SRC4, DST4)),
        (render_v1(SRC6, DST6), ProxyHeader(1, SRC6, DST6)),
        (b"PROXY UNKNOWN whatever\r\n", ProxyHeader(1, None, None)),
        (render_v2(SRC4, DST4), ProxyHeader(2, SRC4, DST4)),
        (render_v2(SRC6, DST6), ProxyHeader(2, SRC6, DST6)),
        (render_v2(None), ProxyHeader(2, None, None)),
    ],
)
def test_parse_whole_and_byte_by_byte(header, expected):
    data = header + b"CONNECT a:1 HTTP/1.1\r\n"
    assert parse(data) == (expected, len(header))
    for n in range(len(header)):
        assert parse(data[:n]) is None if n else parse(b"") is None


def test_v2_tlvs_are_skipped():
    base = render_v2(SRC4, DST4)
    tlv = bytes([0x04]) + (3).to_bytes(2, "big") + b"abc"  # PP2_TYPE_NOOP
    length = int.from_bytes(base[14:16], "big") + len(tlv)
    header = base[:14] + length.to_bytes(2, "big") + base[16:] + tlv
    assert parse(header + b"rest") == (ProxyHeader(2, SRC4, DST4), len(header))


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT a:1 HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 200,
        proxyproto.V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in a v2 header
        proxyproto.V2_SIGNATURE + b"\x23\x11\x00\x0c" + b"\x00" * 12,  # command 3
        proxyproto.V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # short address block
        proxyproto.V2_SIGNATURE + b"\x21\x11\xff\xff",  # over V2_MAX_BYTES
    ],
)
def test_malformed_headers_are_400(data):
    with pytest.raises(ProxyHeaderError) as info:
        parse(data)
    assert info.value.status == 400
