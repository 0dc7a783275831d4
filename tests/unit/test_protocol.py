"""The CONNECT grammar, tested with bytes alone: no sockets, no server.

Every head is parsed twice, fed whole and fed one byte at a time, because a
TCP peer may split a head anywhere and the answer must not depend on where.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
from collections.abc import Callable
from typing import Union

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gconnect.tunnel.head as head
from gconnect import errors
from gconnect.config import Config
from gconnect.tunnel.head import RESPONSE_200, ConnectRequest, RequestParser, render_error
from gconnect.tunnel.names import MAX_NAME_CHARS as MAX_HOSTNAME_CHARS

from .budget import examples

MAX_HEADER_BYTES = Config().max_header_bytes
CRLF = b"\r\n"


def make_head(
    target: bytes = b"example.com:443",
    headers: list[bytes] | None = None,
    *,
    method: bytes = b"CONNECT",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    """A request head; by default a valid CONNECT whose Host matches *target*."""
    if headers is None:
        headers = [b"Host: " + target]
    lines = [method + b" " + target + b" " + version, *headers]
    return CRLF.join(lines) + CRLF + CRLF


Outcome = Union[ConnectRequest, errors.GConnectError, None]


def feed_whole(data: bytes, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[Outcome, bytes]:
    """Feed *data* in one call; return the outcome and the bytes never fed."""
    try:
        return RequestParser(max_header_bytes).feed(data), b""
    except errors.GConnectError as exc:
        return exc, b""


def feed_bytewise(data: bytes, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[Outcome, bytes]:
    """Feed *data* one byte per call, stopping as soon as the parser answers."""
    parser = RequestParser(max_header_bytes)
    for i in range(len(data)):
        try:
            request = parser.feed(data[i : i + 1])
        except errors.GConnectError as exc:
            return exc, data[i + 1 :]
        if request is not None:
            return request, data[i + 1 :]
    return None, b""


FEEDERS = [pytest.param(feed_whole, id="whole"), pytest.param(feed_bytewise, id="bytewise")]
Feeder = Callable[[bytes], tuple[Outcome, bytes]]


def parse_ok(feeder: Feeder, data: bytes) -> ConnectRequest:
    request, unfed = feeder(data)
    assert isinstance(request, ConnectRequest), request
    # Whatever the parser has not seen yet is tunnel data the caller still relays.
    return request._replace(trailing=request.trailing + unfed)


def parse_error(feeder: Feeder, data: bytes) -> errors.GConnectError:
    exc, _ = feeder(data)
    assert isinstance(exc, errors.GConnectError), f"accepted {data!r}: {exc!r}"
    return exc


# --- valid heads ----------------------------------------------------------------------------

V4 = socket.AF_INET
V6 = socket.AF_INET6
LONGEST_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
assert len(LONGEST_NAME) == MAX_HOSTNAME_CHARS

VALID_TARGETS = [
    # (request-target, host, port, family, ConnectRequest.target)
    (b"example.com:443", "example.com", 443, 0, "example.com:443"),
    (b"EXAMPLE.Com:443", "example.com", 443, 0, "example.com:443"),
    (b"example.com.:443", "example.com", 443, 0, "example.com:443"),
    (b"localhost:1", "localhost", 1, 0, "localhost:1"),
    (b"a-b.c9.example:65535", "a-b.c9.example", 65535, 0, "a-b.c9.example:65535"),
    (b"1a.example:8443", "1a.example", 8443, 0, "1a.example:8443"),
    (b"xn--bcher-kva.example:443", "xn--bcher-kva.example", 443, 0, "xn--bcher-kva.example:443"),
    (LONGEST_NAME.encode() + b":443", LONGEST_NAME, 443, 0, LONGEST_NAME + ":443"),
    (b"93.184.216.34:443", "93.184.216.34", 443, V4, "93.184.216.34:443"),
    (b"127.0.0.1:8080", "127.0.0.1", 8080, V4, "127.0.0.1:8080"),
    (b"0.0.0.0:443", "0.0.0.0", 443, V4, "0.0.0.0:443"),
    (b"[::1]:443", "::1", 443, V6, "[::1]:443"),
    (b"[2001:db8::1]:8443", "2001:db8::1", 8443, V6, "[2001:db8::1]:8443"),
    # The host is canonicalised, so policy and logs see one spelling.
    (b"[2001:DB8:0:0::0:1]:443", "2001:db8::1", 443, V6, "[2001:db8::1]:443"),
    (b"[fe80::1]:443", "fe80::1", 443, V6, "[fe80::1]:443"),
]


@pytest.mark.parametrize("feeder", FEEDERS)
@pytest.mark.parametrize(("raw", "host", "port", "family", "target"), VALID_TARGETS)
def test_valid_target(feeder, raw, host, port, family, target):
    request = parse_ok(feeder, make_head(raw))
    assert (request.host, request.port, request.family, request.target) == (host, port, family, target)
    assert request.version == "1.1"
    assert request.trailing == b""
    assert request.headers == [(b"Host", raw)]


TRAILING = [
    b"x",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS ClientHello's start
    b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: other\r\n\r\n",  # looks like HTTP, but it is tunnel data
    b"\x00" * 5000,
]


@pytest.mark.parametrize("feeder", FEEDERS)
@pytest.mark.parametrize("trailing", TRAILING, ids=range(len(TRAILING)))
def test_trailing_bytes_kept_exactly(feeder, trailing):
    head = make_head(b"example.com:443")
    request = parse_ok(feeder, head + trailing)
    assert request.trailing == trailing


def test_trailing_bytes_in_the_same_chunk_are_returned_by_feed():
    request = RequestParser(MAX_HEADER_BYTES).feed(make_head() + b"\x16\x03\x01")
    assert request is not None
    assert request.trailing == b"\x16\x03\x01"


def test_a_parsed_head_leaves_nothing_for_the_garbage_collector():
    # One parser per client: a reference cycle would be freed only by a collection.
    gc.collect()
    gc.disable()
    try:
        parser = RequestParser(MAX_HEADER_BYTES)
        assert parser.feed(make_head()) is not None
        del parser
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_every_split_point_gives_the_same_request():
    data = make_head(b"[2001:db8::7]:443", [b"Host: [2001:db8::7]:443", b"Proxy-Authorization: Basic Zm9vOmJhcg=="])
    data += b"\x16\x03\x01tunnel"
    whole, _ = feed_whole(data)
    assert isinstance(whole, ConnectRequest)
    for split in range(1, len(data)):
        parser = RequestParser(MAX_HEADER_BYTES)
        first = parser.feed(data[:split])
        if first is None:
            request = parser.feed(data[split:])
            assert request is not None
        else:
            request = first._replace(trailing=first.trailing + data[split:])
        assert request == whole, split


def test_headers_kept_in_order_and_spelling():
    head = make_head(
        b"example.com:443",
        [b"User-Agent: curl/8.5.0", b"Host: example.com:443", b"proxy-authorization: Basic Zm9v", b"X-A: 1", b"x-a: 2"],
    )
    request = parse_ok(feed_whole, head)
    assert request.headers == [
        (b"User-Agent", b"curl/8.5.0"),
        (b"Host", b"example.com:443"),
        (b"proxy-authorization", b"Basic Zm9v"),
        (b"X-A", b"1"),
        (b"x-a", b"2"),
    ]
    assert request.header(b"Proxy-Authorization") == b"Basic Zm9v"
    assert request.header(b"X-A") == b"2"  # the last value
    assert request.header(b"Missing") is None


@pytest.mark.parametrize("feeder", FEEDERS)
@pytest.mark.parametrize(
    ("target", "host_header"),
    [
        (b"example.com:443", b"example.com:443"),
        (b"example.com:443", b"example.com"),  # no port: the target's port is implied
        (b"example.com:443", b"EXAMPLE.COM:443"),
        (b"example.com:443", b"example.com."),
        (b"example.com.:443", b"example.com"),
        (b"example.com:8443", b"example.com:8443"),
        (b"10.1.2.3:443", b"10.1.2.3"),
        (b"10.1.2.3:443", b"10.1.2.3:443"),
        (b"[::1]:443", b"[::1]"),
        (b"[::1]:443", b"[::1]:443"),
        (b"[2001:db8::1]:443", b"[2001:DB8:0::1]:443"),
        (b"example.com:443", b"example.com:443 "),  # RFC 9110 §5.5: OWS is not part of the value
        (b"example.com:443", b"example.com:443\t"),
    ],
)
def test_host_header_matching_target_is_accepted(feeder, target, host_header):
    request = parse_ok(feeder, make_head(target, [b"Host: " + host_header]))
    assert request.port == int(target.rpartition(b":")[2])


@pytest.mark.parametrize("feeder", FEEDERS)
def test_http_10_needs_no_host(feeder):
    request = parse_ok(feeder, make_head(b"example.com:443", [], version=b"HTTP/1.0") + b"abc")
    assert (request.version, request.target, request.headers, request.trailing) == (
        "1.0",
        "example.com:443",
        [],
        b"abc",
    )


@pytest.mark.parametrize("feeder", FEEDERS)
def test_http_10_host_is_still_checked(feeder):
    exc = parse_error(feeder, make_head(b"example.com:443", [b"Host: other.example"], version=b"HTTP/1.0"))
    assert type(exc) is errors.MalformedRequestError


@pytest.mark.parametrize("feeder", FEEDERS)
def test_content_length_zero_is_accepted(feeder):
    request = parse_ok(feeder, make_head(b"example.com:443", [b"Host: example.com", b"Content-Length: 0"]) + b"x")
    assert request.header(b"content-length") == b"0"
    assert request.trailing == b"x"


@pytest.mark.parametrize("feeder", FEEDERS)
def test_leading_empty_line_is_ignored(feeder):
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    assert parse_ok(feeder, CRLF + make_head()).target == "example.com:443"


def test_head_of_exactly_the_limit_is_accepted_and_trailing_does_not_count():
    head = make_head(b"example.com:443", [b"Host: example.com", b"X-Pad: "])
    head = head[:-4] + b"p" * (512 - len(head)) + CRLF + CRLF
    assert len(head) == 512
    request = RequestParser(512).feed(head + b"t" * 4096)
    assert request is not None and request.trailing == b"t" * 4096


# --- errors ---------------------------------------------------------------------------------

Bad = errors.MalformedRequestError
H = b"Host: example.com:443"

ERRORS = [
    # Methods. RFC 9110 §9.1: the method token is case-sensitive, so "connect" is
    # another method, not CONNECT: refused with 405, never tunnelled.
    ("lowercase-method", make_head(method=b"connect"), errors.MethodNotAllowedError),
    ("mixed-case-method", make_head(method=b"Connect"), errors.MethodNotAllowedError),
    ("CONNECT-prefix", make_head(method=b"CONNECTX"), errors.MethodNotAllowedError),
    ("GET-authority", make_head(method=b"GET"), errors.MethodNotAllowedError),
    ("POST-authority", make_head(method=b"POST"), errors.MethodNotAllowedError),
    ("OPTIONS-authority", make_head(method=b"OPTIONS"), errors.MethodNotAllowedError),
    ("FOO-authority", make_head(method=b"FOO"), errors.MethodNotAllowedError),
    ("GET-origin", make_head(b"/", [H], method=b"GET"), errors.MethodNotAllowedError),
    (
        "GET-absolute",
        make_head(b"http://example.com/", [b"Host: example.com"], method=b"GET"),
        errors.MethodNotAllowedError,
    ),
    (
        "POST-absolute",
        make_head(b"http://example.com/", [b"Host: example.com"], method=b"POST"),
        errors.MethodNotAllowedError,
    ),
    ("OPTIONS-asterisk", make_head(b"*", [H], method=b"OPTIONS"), errors.MethodNotAllowedError),
    ("FOO-origin", make_head(b"/", [H], method=b"FOO"), errors.MethodNotAllowedError),
    ("garbage-method", b"\x16\x03\x01\x02\x00 example.com:443 HTTP/1.1\r\n\r\n", Bad),
    ("method-with-separator", make_head(method=b"CON(NECT"), Bad),
    ("empty-method", make_head(method=b""), Bad),
    ("method-then-LF", b"FOO\n /x HTTP/1.1\r\n\r\n", Bad),
    ("method-then-tab", b"FOO\texample.com:443 HTTP/1.1\r\n\r\n", Bad),
    # Versions.
    ("HTTP/2.0", make_head(version=b"HTTP/2.0"), errors.VersionNotSupportedError),
    ("HTTP/3.0", make_head(version=b"HTTP/3.0"), errors.VersionNotSupportedError),
    ("HTTP/9.9", make_head(version=b"HTTP/9.9"), errors.VersionNotSupportedError),
    ("HTTP/0.9", make_head(version=b"HTTP/0.9"), errors.VersionNotSupportedError),
    ("HTTP/1.2", make_head(version=b"HTTP/1.2"), errors.VersionNotSupportedError),
    ("HTTP/0.9-after-empty-line", CRLF + make_head(version=b"HTTP/0.9"), errors.VersionNotSupportedError),
    # RFC 9112 §3: the version is part of the request line; a line without one is
    # malformed (llhttp reads it as HTTP/0.9, which would be a 505).
    ("no-version", b"CONNECT example.com:443\r\nHost: example.com:443\r\n\r\n", Bad),
    ("no-version-no-headers", b"CONNECT example.com:443\r\n\r\n", Bad),
    ("no-version-after-empty-lines", b"\r\n\r\nCONNECT example.com:443\r\n\r\n", Bad),
    ("no-version-v6", b"CONNECT [::1]:443\r\n\r\n", Bad),
    ("version-missing-after-space", b"CONNECT example.com:443 \r\n\r\n", Bad),
    ("version-garbage", make_head(version=b"HTTP/1.1x"), Bad),
    ("version-lowercase", make_head(version=b"http/1.1"), Bad),
    ("version-not-http", make_head(version=b"HTTPS/1.1"), Bad),
    # Line endings and field syntax. RFC 9112 §2.2 lets a recipient accept bare LF;
    # we do not, since two parsers that disagree on line ends can be played off.
    ("bare-LF-request-line", b"CONNECT example.com:443 HTTP/1.1\nHost: example.com\r\n\r\n", Bad),
    ("bare-LF-header", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\nX: y\r\n\r\n", Bad),
    ("bare-LF-everywhere", b"CONNECT example.com:443 HTTP/1.1\nHost: example.com\n\n", Bad),
    ("bare-CR-in-value", make_head(headers=[H, b"X: a\rb"]), Bad),
    ("bare-CR-request-line", b"CONNECT example.com:443 HTTP/1.1\rHost: example.com\r\n\r\n", Bad),
    ("obs-fold", make_head(headers=[H, b"X-Long: a", b" b"]), Bad),
    ("obs-fold-tab", make_head(headers=[H, b"X-Long: a", b"\tb"]), Bad),
    ("obs-fold-of-host", make_head(headers=[b"Host: example.com", b" :443"]), Bad),
    ("NUL-in-value", make_head(headers=[H, b"X: a\x00b"]), Bad),
    ("NUL-in-name", make_head(headers=[H, b"X\x00: a"]), Bad),
    ("NUL-in-target", make_head(b"exa\x00mple.com:443"), Bad),
    ("DEL-in-value", make_head(headers=[H, b"X: a\x7fb"]), Bad),
    ("ctrl-in-value", make_head(headers=[H, b"X: a\x01b"]), Bad),
    ("space-before-colon", make_head(headers=[b"Host : example.com:443"]), Bad),
    ("tab-before-colon", make_head(headers=[H, b"X\t: y"]), Bad),
    ("space-in-name", make_head(headers=[H, b"X Y: z"]), Bad),
    ("separator-in-name", make_head(headers=[H, b"X(Y): z"]), Bad),
    ("no-colon", make_head(headers=[H, b"NoColon"]), Bad),
    ("empty-name", make_head(headers=[H, b": value"]), Bad),
    # Host (RFC 9112 §3.2: missing, repeated or invalid is a 400).
    ("missing-host", make_head(headers=[]), Bad),
    ("missing-host-other-headers", make_head(headers=[b"User-Agent: x"]), Bad),
    ("two-hosts", make_head(headers=[H, H]), Bad),
    ("two-hosts-case", make_head(headers=[b"host: example.com", b"HOST: example.com"]), Bad),
    ("two-hosts-differ", make_head(headers=[H, b"Host: other.example"]), Bad),
    ("empty-host-header", make_head(headers=[b"Host: "]), Bad),
    ("host-bad-port", make_head(headers=[b"Host: example.com:0"]), Bad),
    ("host-empty-port", make_head(headers=[b"Host: example.com:"]), Bad),
    ("host-two-colons", make_head(headers=[b"Host: example.com:443:443"]), Bad),
    ("host-space", make_head(headers=[b"Host: exa mple.com"]), Bad),
    ("host-userinfo", make_head(headers=[b"Host: user@example.com"]), Bad),
    ("host-url", make_head(headers=[b"Host: http://example.com/"]), Bad),
    ("host-unclosed-bracket", make_head(b"[::1]:443", [b"Host: [::1"]), Bad),
    ("host-unbracketed-v6", make_head(b"[::1]:443", [b"Host: ::1"]), Bad),
    ("host-numeric", make_head(b"127.0.0.1:443", [b"Host: 2130706433"]), Bad),
    ("host-utf8", make_head(headers=["Host: exämple.com".encode()]), Bad),
    ("host-other-name", make_head(headers=[b"Host: other.example:443"]), Bad),
    ("host-other-port", make_head(headers=[b"Host: example.com:8443"]), Bad),
    ("host-suffix", make_head(headers=[b"Host: example.com.evil.example"]), Bad),
    ("host-ip-for-name", make_head(headers=[b"Host: 93.184.216.34:443"]), Bad),
    ("host-other-v6", make_head(b"[::1]:443", [b"Host: [::2]:443"]), Bad),
    # A CONNECT has no content (RFC 9110 §9.3.6); framing headers are refused, not guessed at.
    ("content-length", make_head(headers=[H, b"Content-Length: 5"]), Bad),
    ("content-length-bad", make_head(headers=[H, b"Content-Length: abc"]), Bad),
    ("content-length-signed", make_head(headers=[H, b"Content-Length: +0"]), Bad),
    ("content-length-list", make_head(headers=[H, b"Content-Length: 0, 0"]), Bad),
    ("transfer-encoding", make_head(headers=[H, b"Transfer-Encoding: chunked"]), Bad),
    ("transfer-encoding-identity", make_head(headers=[H, b"Transfer-Encoding: identity"]), Bad),
    ("CL-and-TE", make_head(headers=[H, b"Content-Length: 0", b"Transfer-Encoding: chunked"]), Bad),
    ("TE-and-CL", make_head(headers=[H, b"Transfer-Encoding: chunked", b"Content-Length: 5"]), Bad),
    # Only authority-form targets (RFC 9112 §3.2.3).
    ("absolute-form", make_head(b"http://a:443/"), Bad),
    ("absolute-form-https", make_head(b"https://example.com:443"), Bad),
    ("origin-form", make_head(b"/"), Bad),
    ("asterisk-form", make_head(b"*"), Bad),
    ("path-after-port", make_head(b"example.com:443/x"), Bad),
    ("query-after-port", make_head(b"example.com:443?x"), Bad),
    ("fragment-after-port", make_head(b"example.com:443#x"), Bad),
    ("userinfo", make_head(b"user@example.com:443"), Bad),
    ("userinfo-password", make_head(b"user:pw@example.com:443"), Bad),
    # RFC 9110 §9.3.6: the port is mandatory and there is no default.
    ("missing-port", make_head(b"example.com"), Bad),
    ("missing-port-v6", make_head(b"[::1]", [b"Host: [::1]"]), Bad),
    ("missing-port-v4", make_head(b"10.0.0.1"), Bad),
    ("empty-port", make_head(b"example.com:"), Bad),
    ("port-0", make_head(b"example.com:0"), Bad),
    ("port-65536", make_head(b"example.com:65536"), Bad),
    ("port-65979-wraps-to-443", make_head(b"example.com:65979"), Bad),
    ("port-99999", make_head(b"example.com:99999"), Bad),
    ("port-sign", make_head(b"example.com:+443"), Bad),
    ("port-minus", make_head(b"example.com:-443"), Bad),
    ("port-hex", make_head(b"example.com:0x1bb"), Bad),
    ("port-suffix", make_head(b"example.com:443a"), Bad),
    ("port-too-many-digits", make_head(b"example.com:000443"), Bad),
    ("port-huge", make_head(b"example.com:" + b"9" * 30), Bad),
    ("port-v6-empty", make_head(b"[::1]:", [b"Host: [::1]"]), Bad),
    ("port-v6-no-colon", make_head(b"[::1]443", [b"Host: [::1]"]), Bad),
    ("two-ports", make_head(b"a:1:2"), Bad),
    # IPv6 needs brackets and no zone identifier (RFC 9110 §4.2.3; zones are host-local).
    ("unbracketed-v6", make_head(b"::1:443", [b"Host: [::1]:443"]), Bad),
    ("unbracketed-v6-long", make_head(b"2001:db8::1:443", [b"Host: [2001:db8::1]:443"]), Bad),
    ("zone-id", make_head(b"[fe80::1%25eth0]:443"), Bad),
    ("zone-id-raw", make_head(b"[fe80::1%eth0]:443"), Bad),
    ("bracketed-v4", make_head(b"[10.0.0.1]:443"), Bad),
    ("bad-v6", make_head(b"[2001:db8:::1]:443"), Bad),
    ("ipvfuture", make_head(b"[v1.x]:443"), Bad),
    ("unclosed-bracket", make_head(b"[::1:443"), Bad),
    # inet_aton()-style numbers name an address that the dotted form does not show.
    ("numeric-short", make_head(b"127.1:443"), Bad),
    ("numeric-hex", make_head(b"0x7f.0.0.1:443"), Bad),
    ("numeric-hex-whole", make_head(b"0x7f000001:443"), Bad),
    ("numeric-decimal", make_head(b"2130706433:443"), Bad),
    ("numeric-octal", make_head(b"010.0.0.1:443"), Bad),
    ("numeric-octal-last", make_head(b"10.0.0.010:443"), Bad),
    ("numeric-five-parts", make_head(b"1.2.3.4.5:443"), Bad),
    ("numeric-overflow", make_head(b"256.0.0.1:443"), Bad),
    ("numeric-tld", make_head(b"example.123:443"), Bad),
    # RFC 1035 §2.3.4 lengths and the label syntax.
    ("name-254", make_head(LONGEST_NAME.encode() + b"e:443"), Bad),
    ("name-300", make_head(b"a." * 150 + b"com:443"), Bad),
    ("label-64", make_head(b"a" * 64 + b".example:443"), Bad),
    ("label-leading-hyphen", make_head(b"-a.example:443"), Bad),
    ("label-trailing-hyphen", make_head(b"a-.example:443"), Bad),
    ("empty-label", make_head(b"a..example:443"), Bad),
    ("leading-dot", make_head(b".example:443"), Bad),
    ("empty-host", make_head(b":443"), Bad),
    ("only-dot", make_head(b".:443"), Bad),
    ("percent-encoded", make_head(b"ex%61mple.com:443"), Bad),
    ("comma", make_head(b"a,b.example:443"), Bad),
    # IDNs must arrive as xn-- labels: raw UTF-8 would let two normalisations disagree.
    ("idn-utf8", make_head("bücher.example:443".encode()), Bad),
    ("idn-utf8-fullwidth-dot", make_head("example。com:443".encode()), Bad),
    ("latin-1-byte", make_head(b"b\xfccher.example:443"), Bad),
]


def _error_params():
    seen = set()
    for name, data, cls in ERRORS:
        assert name not in seen, name
        seen.add(name)
        yield pytest.param(data, cls, id=name)


@pytest.mark.parametrize("feeder", FEEDERS)
@pytest.mark.parametrize(("data", "cls"), _error_params())
def test_error_class_and_status(feeder, data, cls):
    exc = parse_error(feeder, data + b"\x16\x03\x01trailing")
    assert isinstance(exc, cls), exc
    assert type(exc) is cls, exc
    assert isinstance(exc, errors.ClientError)
    assert (
        exc.status
        == {
            errors.MalformedRequestError: 400,
            errors.MethodNotAllowedError: 405,
            errors.VersionNotSupportedError: 505,
        }[cls]
    )
    assert str(exc)  # a reason a human can read


@pytest.mark.parametrize("feeder", FEEDERS)
@pytest.mark.parametrize("method", [b"GET", b"POST", b"OPTIONS", b"FOO", b"connect", b"PRI", b"BREW"])
def test_405_carries_allow_connect(feeder, method):
    exc = parse_error(feeder, make_head(method=method))
    assert exc.status == 405
    assert ("Allow", "CONNECT") in exc.headers
    assert method.decode() in str(exc)


def test_error_statuses_are_class_attributes():
    assert errors.MalformedRequestError.status == 400
    assert errors.MethodNotAllowedError.status == 405
    assert errors.MethodNotAllowedError.headers == (("Allow", "CONNECT"),)
    assert errors.HeadTooLargeError.status == 431
    assert errors.VersionNotSupportedError.status == 505


@pytest.mark.parametrize("feeder", FEEDERS)
def test_a_missing_version_says_so(feeder):
    exc = parse_error(feeder, b"CONNECT example.com:443\r\n\r\n")
    assert exc.status == 400
    assert "no HTTP version" in str(exc)


def test_error_message_names_the_target_and_is_printable():
    exc = parse_error(feed_whole, make_head(b"example.com:99999", [b"Host: example.com"]))
    assert "99999" in str(exc)
    exc = parse_error(feed_whole, make_head(b"http://evil\x7f.example/", [b"Host: x"]))
    assert all(" " <= ch <= "~" for ch in str(exc)), str(exc)


# --- size limit (431) ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [256, 1024, MAX_HEADER_BYTES])
def test_oversized_head_in_one_chunk(limit):
    head = make_head(headers=[H, b"X-Pad: " + b"p" * limit])
    exc = parse_error(lambda d: feed_whole(d, limit), head)
    assert type(exc) is errors.HeadTooLargeError and exc.status == 431


@pytest.mark.parametrize("limit", [256, 1024, MAX_HEADER_BYTES])
def test_oversized_head_without_end_in_one_chunk(limit):
    # No blank line at all: the parser must not wait for one forever.
    data = b"CONNECT example.com:443 HTTP/1.1\r\n" + b"X-Pad: " + b"p" * limit
    exc = parse_error(lambda d: feed_whole(d, limit), data)
    assert type(exc) is errors.HeadTooLargeError


@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_oversized_head_trickled_is_refused_at_the_limit(chunk):
    limit = Config(max_header_bytes=1024).max_header_bytes
    parser = RequestParser(limit)
    stream = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n" + b"X: y\r\n" * 1000
    fed = 0
    with pytest.raises(errors.HeadTooLargeError) as info:
        while True:
            assert parser.feed(stream[fed : fed + chunk]) is None
            fed += chunk
            assert fed <= limit, "the limit was passed without a 431"
    assert info.value.status == 431
    assert fed + chunk > limit  # not refused before the limit either


@pytest.mark.parametrize("start", [b"CONNECT ", b"", b"FOO", b"connect"])
def test_oversized_request_line_trickled(start):
    # Also while an unknown method is still being read: it must end within the limit.
    parser = RequestParser(256)
    assert parser.feed(start) is None
    for _ in range(256 - len(start)):
        assert parser.feed(b"a") is None
    with pytest.raises(errors.HeadTooLargeError):
        parser.feed(b"a")


@pytest.mark.parametrize("feeder", FEEDERS)
def test_one_byte_over_the_limit_is_refused(feeder):
    head = make_head(b"example.com:443", [b"Host: example.com", b"X-Pad: "])
    head = head[:-4] + b"p" * (513 - len(head)) + CRLF + CRLF
    assert len(head) == 513
    exc, _ = feeder(head, 512)
    assert type(exc) is errors.HeadTooLargeError


# --- responses ----------------------------------------------------------------------------------


def parse_response(data: bytes) -> tuple[h11.Response, bytes]:
    """Parse a response to a CONNECT with h11, as a client would."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="CONNECT", target="example.com:443", headers=[("Host", "example.com:443")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        else:
            assert isinstance(event, h11.EndOfMessage), event
            break
    return response, body


ERROR_INSTANCES = [
    errors.MalformedRequestError("invalid port 'x'"),
    errors.PolicyDeniedError("port 25 is not allowed"),
    errors.MethodNotAllowedError("method 'GET' not allowed: only CONNECT"),
    errors.ProxyAuthRequiredError("credentials required"),
    errors.HeadTimeoutError("no request head within 20 s"),
    errors.HeadTooLargeError("request head exceeds 16384 bytes"),
    errors.VersionNotSupportedError("HTTP/2.0 not supported"),
    errors.ResolveError("example.invalid: name does not exist"),
    errors.ResolveTimeoutError("example.com: DNS timeout"),
    errors.OutboundConnectError("example.com:443: connection refused"),
    errors.OutboundTimeoutError("example.com:443: connect timeout"),
]


@pytest.mark.parametrize("exc", ERROR_INSTANCES, ids=lambda e: type(e).__name__)
def test_render_error(exc):
    data = render_error(exc.status, exc.phrase, str(exc), exc.headers)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {exc.status} {exc.phrase}\r\n".encode())
    response, parsed_body = parse_response(data)
    assert response.status_code == exc.status
    assert body == parsed_body == str(exc).encode() + b"\n"
    fields = dict(response.headers)
    assert fields[b"content-length"] == str(len(body)).encode()
    assert fields[b"connection"] == b"close"
    assert fields[b"content-type"].startswith(b"text/plain")
    for name, value in exc.headers:
        assert fields[name.lower().encode()] == value.encode()


def test_render_error_405_has_allow():
    exc = errors.MethodNotAllowedError("no")
    response, _ = parse_response(render_error(exc.status, exc.phrase, str(exc), exc.headers))
    assert (b"allow", b"CONNECT") in list(response.headers)


def test_render_error_407_has_proxy_authenticate():
    exc = errors.ProxyAuthRequiredError("no", realm="inside")
    response, _ = parse_response(render_error(exc.status, exc.phrase, str(exc), exc.headers))
    assert (b"proxy-authenticate", b'Basic realm="inside"') in list(response.headers)


@pytest.mark.parametrize(
    "message",
    [
        "bad\r\nSet-Cookie: a=b",
        "bad\r\n\r\nHTTP/1.1 200 Connection established\r\n\r\n",
        "bad\nX-Injected: 1",
        "bad\rX-Injected: 1",
        "two\n\nlines",
        "naïve ünïcode",
    ],
)
def test_render_error_message_cannot_inject(message):
    data = render_error(400, "Bad Request", message)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep
    assert body.count(b"\n") == 1 and body.endswith(b"\n")
    assert b"\r" not in body
    assert head.count(b"\r\n") == 3  # status line + three fields, nothing injected
    response, parsed = parse_response(data)
    names = {name for name, _ in response.headers}
    assert names == {b"content-type", b"content-length", b"connection"}
    assert parsed == body
    assert int(dict(response.headers)[b"content-length"]) == len(body)


def test_response_200():
    assert RESPONSE_200.startswith(b"HTTP/1.1 200 ")
    assert RESPONSE_200.endswith(b"\r\n\r\n") and RESPONSE_200.count(b"\r\n") == 2
    lowered = RESPONSE_200.lower()
    assert b"content-length" not in lowered and b"transfer-encoding" not in lowered
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="CONNECT", target="example.com:443", headers=[("Host", "example.com:443")]))
    client.send(h11.EndOfMessage())
    client.receive_data(RESPONSE_200 + b"tunnel")
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    # h11 sees the tunnel start right after the head: no body framing to misread.
    assert client.next_event() is h11.PAUSED
    assert client.our_state is h11.SWITCHED_PROTOCOL
    assert client.trailing_data == (b"tunnel", False)


# --- differential test against h11 ------------------------------------------------------------
#
# h11 is a second, independent HTTP/1.1 parser. On valid CONNECT heads the two must
# agree on method, target, version, fields and the bytes after the head. On heads
# that h11 rejects for a reason RFC 9112 or 9110 makes mandatory, ours must reject
# too. The converse is not asserted: h11 is more lenient in places (bare LF line ends,
# obs-fold, Content-Length with Transfer-Encoding, any Host value, lowercase methods,
# port and host syntax it leaves to the application), and ours is more lenient in one
# that the RFC allows (RFC 9112 §3: whitespace runs in the request-line; §2.2: an
# empty line before it).

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_TLD = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z]", fullmatch=True).filter(lambda s: not s.startswith("xn"))
_NAMES = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(_LABEL, min_size=0, max_size=4), _TLD)


@st.composite
def connect_heads(draw):
    kind = draw(st.sampled_from(["name", "v4", "v6"]))
    port = draw(st.integers(1, 65535))
    if kind == "name":
        name = draw(_NAMES)
        name = "".join(c.upper() if draw(st.booleans()) else c for c in name) if draw(st.booleans()) else name
        host_text = name + ("." if draw(st.booleans()) else "")
        authority_host = host_text
    elif kind == "v4":
        host_text = str(draw(st.ip_addresses(v=4)))
        authority_host = host_text
    else:
        ip = draw(st.ip_addresses(v=6))
        host_text = draw(st.sampled_from([str(ip), ip.exploded, ip.exploded.upper()]))
        authority_host = f"[{host_text}]"
    target = f"{authority_host}:{port}".encode()
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    fields = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [b"User-Agent", b"Proxy-Authorization", b"Proxy-Connection", b"Accept", b"X-Forwarded-For"]
                )
                | st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True),
                st.from_regex(rb"([!-~\x80-\xff]([ \t!-~\x80-\xff]{0,30}[!-~\x80-\xff])?)?", fullmatch=True),
                st.sampled_from([b"", b" ", b"  ", b"\t"]),
                st.sampled_from([b"", b" ", b"\t "]),
            ),
            max_size=6,
        )
    )
    fields = [f for f in fields if f[0].lower() not in (b"host", b"content-length", b"transfer-encoding")]
    if version == b"1.1" or draw(st.booleans()):
        host_value = authority_host if draw(st.booleans()) else target.decode()
        host_name = draw(st.sampled_from([b"Host", b"host", b"HOST"]))
        position = draw(st.integers(0, len(fields)))
        fields.insert(position, (host_name, host_value.encode(), b" ", b""))
    lines = [b"CONNECT " + target + b" HTTP/" + version]
    lines += [name + b":" + lead + value + trail for name, value, lead, trail in fields]
    head = CRLF.join(lines) + CRLF + CRLF
    trailing = draw(st.binary(max_size=40))
    return head, trailing, fields


def h11_parse(data: bytes):
    """h11's reading of a request head: (Request, bytes after a CONNECT head), or
    raise RemoteProtocolError."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    request = server.next_event()
    if request is h11.NEED_DATA:
        return None, b""
    assert isinstance(request, h11.Request), request
    if request.method != b"CONNECT" or server.next_event() != h11.EndOfMessage():
        return request, None  # h11 expects a body: no tunnel
    # CONNECT without a body: h11 pauses with the rest kept as trailing_data.
    assert server.next_event() is h11.PAUSED
    return request, server.trailing_data[0]


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connect_heads())
def test_differential_valid_heads_agree_with_h11(case):
    head, trailing, _ = case
    theirs, their_trailing = h11_parse(head + trailing)
    ours = parse_ok(feed_whole, head + trailing)
    assert theirs.method == b"CONNECT"
    assert ours.version == theirs.http_version.decode()
    host, _, port = theirs.target.rpartition(b":")
    assert ours.port == int(port)
    if host.startswith(b"["):
        assert ours.family == socket.AF_INET6
        assert ipaddress.IPv6Address(ours.host) == ipaddress.IPv6Address(host[1:-1].decode())
    elif ours.family:
        assert ours.family == socket.AF_INET
        assert ipaddress.IPv4Address(ours.host) == ipaddress.IPv4Address(host.decode())
        assert ours.host == host.decode()
    else:
        assert ours.host == host.decode().lower().rstrip(".")
    assert [(name.lower(), value) for name, value in ours.headers] == list(theirs.headers)
    assert ours.trailing == their_trailing == trailing
    bytewise = parse_ok(feed_bytewise, head + trailing)
    assert bytewise == ours


def _mutations():
    """Ways to break a valid head that RFC 9110/9112 require a server to reject,
    each with the rule. Each takes (request_line, fields) and returns head bytes."""

    def join(request_line, fields):
        return CRLF.join([request_line, *fields]) + CRLF + CRLF

    return {
        # RFC 9112 §5.1: "A server MUST reject ... any received request message that
        # contains whitespace between a header field name and colon".
        "space-before-colon": lambda rl, f, x: join(rl, [*f, b"X-Y" + b" " * (1 + x % 3) + b": z"]),
        # RFC 9112 §3.2: "A server MUST respond with a 400 ... to any HTTP/1.1 request
        # message that lacks a Host header field and to any request message that
        # contains more than one Host header field line".
        "missing-host": lambda rl, f, x: join(
            rl.replace(b"HTTP/1.0", b"HTTP/1.1"), [h for h in f if not h.lower().startswith(b"host:")]
        ),
        "second-host": lambda rl, f, x: join(
            rl, [*f, b"Host: a.example", [b"Host", b"host", b"HOST"][x % 3] + b": a.example"]
        ),
        # RFC 9112 §6.3: an invalid Content-Length "MUST" be treated as unrecoverable.
        "bad-content-length": lambda rl, f, x: join(
            rl, [*f, b"Content-Length: " + [b"abc", b"-1", b"1 2", b"0x0"][x % 4]]
        ),
        # RFC 9110 §5.5: CR, LF and NUL in a field value are invalid; RFC 9110 §5.1:
        # a field name is a token.
        "NUL-in-value": lambda rl, f, x: join(rl, [*f, b"X: a" + b"\x00" + b"b" * (x % 3)]),
        "CR-in-value": lambda rl, f, x: join(rl, [*f, b"X: a\rb" + b"c" * (x % 3)]),
        "bad-field-name": lambda rl, f, x: join(rl, [*f, [b"X Y", b"X(Y)", b"X\x01", b"X/Y", b"[X]"][x % 5] + b": v"]),
        # RFC 9112 §3: request-line = method SP request-target SP HTTP-version.
        "bad-version-syntax": lambda rl, f, x: join(
            rl.rsplit(b" ", 1)[0] + b" " + [b"HTTP/1.1x", b"HTTP/11", b"HTTP/1", b"HTTP/a.b", b"HTTP1.1"][x % 5], f
        ),
        "ctl-in-target": lambda rl, f, x: join(rl.replace(b" ", b" \x01", 1), f),
        "extra-request-line-part": lambda rl, f, x: join(rl + b" extra", f),
    }


MUTATIONS = _mutations()


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connect_heads(), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 1000))
def test_differential_heads_h11_rejects_are_rejected(case, mutation, x):
    head, _, _ = case
    request_line, *fields = head[:-4].split(CRLF)
    broken = MUTATIONS[mutation](request_line, fields, x)
    # Each mutation is one h11 rejects; if it ever stops, the oracle has changed.
    with pytest.raises(h11.RemoteProtocolError):
        h11_parse(broken)
    for feeder in (feed_whole, feed_bytewise):
        exc, _ = feeder(broken)
        assert isinstance(exc, errors.ClientError), (mutation, broken, exc)
        assert exc.status in (400, 505), (mutation, broken, exc)


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT example.com:443 HTTP/1.1\nHost: example.com\n\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\nX: a\r\n b\r\n\r\n",
        make_head(headers=[b"Host: example.com", b"Content-Length: 0", b"Transfer-Encoding: chunked"]),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: other.example\r\n\r\n",
        b"connect example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"CONNECT example.com:65979 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"CONNECT 127.1:443 HTTP/1.1\r\nHost: 127.1\r\n\r\n",
    ],
    ids=["bare-LF", "obs-fold", "CL+TE", "host-mismatch", "lowercase-method", "port-wrap", "short-ipv4"],
)
def test_stricter_than_h11(data):
    # h11 accepts each of these (the lenient direction); we refuse them on purpose.
    theirs, _ = h11_parse(data)
    assert theirs is not None
    exc, _ = feed_whole(data)
    assert isinstance(exc, errors.ClientError)


def test_parse_authority_remembers_passed_targets_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head, "REMEMBERED_AUTHORITIES", 2)
    first = head.parse_authority(b"example.com:443")
    assert first == ("example.com", 443, 0)
    assert head.parse_authority(b"example.com:443") is first  # from memory
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(errors.MalformedRequestError):
            head.parse_authority(b"exa mple.com:443")
    assert head.parse_authority(bytearray(b"example.com:443")) == first  # unhashable: parsed, not remembered
    head.parse_authority(b"example.com:1")
    head.parse_authority(b"example.com:2")
    again = head.parse_authority(b"example.com:443")
    assert again == first and again is not first  # forgotten when the memory was full: parsed anew
