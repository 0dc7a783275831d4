"""The forwarding message layer, bytes only: request and response heads, body
framing, the heads sent on. Every case is fed whole and one byte at a time;
a differential test holds every message we accept to h11's reading of it."""

from __future__ import annotations

import h11
import pytest

from gconnect.errors import BadResponseError, ClientError, GConnectError
from gconnect.tunnel.forward.body import BodyError, BodyReader, whole_body
from gconnect.tunnel.forward.fields import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, Framing
from gconnect.tunnel.forward.render import Outgoing, request_head, response_head
from gconnect.tunnel.forward.request import ForwardRequestParser, is_connect
from gconnect.tunnel.forward.response import ResponseParser

MAX = 16 * 1024


def _feed_all(parser, raw: bytes, bytewise: bool):
    if not bytewise:
        return parser.feed(raw)
    for i in range(len(raw)):
        got = parser.feed(raw[i : i + 1])
        if got is not None:
            got.trailing += raw[i + 1 :]
            return got
    return None


def read_message(parser, raw: bytes, bytewise: bool):
    """(head, body as sent on unwrapped, rest) or the exception raised."""
    head = _feed_all(parser, raw, bytewise)
    if head is None:
        raise EOFError("incomplete head")
    reader = BodyReader(head.framing, rechunk=False)
    body, rest = b"", b""
    pieces = [head.trailing[i : i + 1] for i in range(len(head.trailing))] if bytewise else [head.trailing]
    for index, piece in enumerate(pieces):
        out, rest = reader.feed(piece)
        body += out
        if reader.done:
            rest += b"".join(pieces[index + 1 :])
            break
    else:
        reader.eof()
    return head, body, rest


def request(raw: bytes, bytewise: bool = False):
    return read_message(ForwardRequestParser(MAX), raw, bytewise)


def response(raw: bytes, bytewise: bool = False, head_request: bool = False):
    return read_message(ResponseParser(MAX, head_request), raw, bytewise)


GET = b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n"


def req(*lines: bytes, body: bytes = b"", start: bytes = GET) -> bytes:
    return start + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


# Request smuggling corpus: each must be refused, with this status.
BAD_REQUESTS = {
    "te_and_cl": (req(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"), 400),
    "cl_and_te": (req(b"Content-Length: 3", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    "te_not_final": (req(b"Transfer-Encoding: chunked, gzip"), 400),
    "te_gzip_chunked": (req(b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 400),
    "te_empty_element": (req(b"Transfer-Encoding: , chunked", body=b"0\r\n\r\n"), 400),
    "te_gzip_only": (req(b"Transfer-Encoding: gzip"), 400),
    "te_chunked_twice": (req(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    "te_identity": (req(b"Transfer-Encoding: identity", body=b"x"), 400),
    "te_in_http10": (req(b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", start=GET.replace(b"1.1", b"1.0")), 400),
    "te_xchunked": (req(b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"), 400),
    "te_space_before_colon": (req(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), 400),
    "cl_space_before_colon": (req(b"Content-Length : 5", body=b"hello"), 400),
    "cl_tab_before_colon": (req(b"Content-Length\t: 5", body=b"hello"), 400),
    "cl_twice_same": (req(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"), 400),
    "cl_twice_different": (req(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"), 400),
    "cl_list": (req(b"Content-Length: 5, 5", body=b"hello"), 400),
    "cl_plus": (req(b"Content-Length: +5", body=b"hello"), 400),
    "cl_negative": (req(b"Content-Length: -1"), 400),
    "cl_hex": (req(b"Content-Length: 0x5", body=b"hello"), 400),
    "cl_space_inside": (req(b"Content-Length: 1 2", body=b"x" * 12), 400),
    "cl_huge": (req(b"Content-Length: 99999999999999999999999"), 400),
    "obs_fold": (req(b"X-A: a", b" folded"), 400),
    "obs_fold_tab": (req(b"X-A: a", b"\tfolded"), 400),
    "bare_lf_request_line": (b"GET http://example.com/ HTTP/1.1\nHost: example.com\r\n\r\n", 400),
    "bare_lf_everywhere": (b"GET http://example.com/ HTTP/1.1\nHost: example.com\n\n", 400),
    "bare_cr": (req(b"X-A: a\rb"), 400),
    "nul_in_value": (req(b"X-A: a\x00b"), 400),
    "ctl_in_value": (req(b"X-A: a\x01b"), 400),
    "del_in_value": (req(b"X-A: a\x7fb"), 400),
    "space_in_name": (req(b"X A: b"), 400),
    "empty_name": (req(b": b"), 400),
    "no_host": (b"GET http://example.com/ HTTP/1.1\r\n\r\n", 400),
    "two_hosts": (req(b"Host: example.com"), 400),
    "host_mismatch": (req(start=b"GET http://example.com/ HTTP/1.1\r\nHost: evil.example\r\n"), 400),
    "host_port_mismatch": (req(start=b"GET http://example.com/ HTTP/1.1\r\nHost: example.com:81\r\n"), 400),
    "https_scheme": (req(start=b"GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "ftp_scheme": (req(start=b"GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "userinfo": (req(start=b"GET http://u:p@example.com/ HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "fragment": (req(start=b"GET http://example.com/#f HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "no_authority": (req(start=b"GET http:///x HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "numeric_host": (req(start=b"GET http://127.1/ HTTP/1.1\r\nHost: 127.1\r\n"), 400),
    "bad_port": (req(start=b"GET http://example.com:99999/ HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "space_in_url": (b"GET http://example.com/a b HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    "http2_version": (b"GET http://example.com/ HTTP/2.0\r\nHost: example.com\r\n\r\n", 505),
    "http09": (b"GET http://example.com/\r\n\r\n", 505),
    # llhttp reads CONNECT's authority-form target "HTTP/1.0" and then no version.
    "http09_target_is_version": (b"CONNECT  HTTP/1.0\r\n\r\n", 505),
    "upgrade": (req(b"Connection: Upgrade", b"Upgrade: websocket"), 501),
    "upgrade_without_connection": (req(b"Upgrade: h2c"), 501),
    "trace": (req(start=b"TRACE http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"), 405),
    "unknown_method": (req(start=b"FROB http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"), 501),
    "garbage_method": (req(start=b"G{T http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"), 400),
    "bad_connection_option": (req(b"Connection: a b"), 400),
}

# Bodies whose framing is broken after a good head: refused while streaming.
BAD_BODIES = {
    "chunk_lenient_terminator": b"5\r\nhelloXX0\r\n\r\n",  # h11 CVE-2025-43859
    "chunk_lf_terminator": b"5\r\nhello\n0\r\n\r\n",
    "chunk_size_space": b"5 \r\nhello\r\n0\r\n\r\n",
    "chunk_size_leading_space": b" 5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_0x": b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk_size_empty": b"\r\nhello\r\n0\r\n\r\n",
    "chunk_size_huge": b"fffffffffffffffff\r\n",
    "chunk_size_bare_lf": b"5\nhello\r\n0\r\n\r\n",
    "chunk_ext_space": b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
    "chunk_ext_bad": b"5;a b\r\nhello\r\n0\r\n\r\n",
    "trailer_obs_fold": b"0\r\nX-T: a\r\n b\r\n\r\n",
    "trailer_space_before_colon": b"0\r\nX-T : a\r\n\r\n",
    "trailer_ctl": b"0\r\nX-T: a\x01\r\n\r\n",
    "truncated": b"5\r\nhel",
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_refused(name: str, bytewise: bool) -> None:
    raw, status = BAD_REQUESTS[name]
    with pytest.raises(ClientError) as info:
        request(raw, bytewise)
    assert info.value.status == status, str(info.value)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_chunked_body_refused(name: str, bytewise: bool) -> None:
    with pytest.raises(BodyError):
        request(req(b"Transfer-Encoding: chunked", body=BAD_BODIES[name]), bytewise)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_chunked_response_body_refused(name: str, bytewise: bool) -> None:
    with pytest.raises(BodyError):
        response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + BAD_BODIES[name], bytewise)


def resp(*lines: bytes, body: bytes = b"", start: bytes = b"HTTP/1.1 200 OK\r\n") -> bytes:
    return start + b"".join(line + b"\r\n" for line in lines) + b"\r\n" + body


BAD_RESPONSES = {
    "te_and_cl": resp(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n"),
    "te_not_final": resp(b"Transfer-Encoding: chunked, gzip"),
    "te_gzip_only": resp(b"Transfer-Encoding: gzip"),
    "te_in_http10": resp(b"Transfer-Encoding: chunked", start=b"HTTP/1.0 200 OK\r\n"),
    "cl_space_before_colon": resp(b"Content-Length : 5", body=b"hello"),
    "cl_twice": resp(b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
    "cl_twice_different": resp(b"Content-Length: 5", b"Content-Length: 6", body=b"hello!"),
    "cl_list": resp(b"Content-Length: 5, 5", body=b"hello"),
    "cl_negative": resp(b"Content-Length: -5"),
    "obs_fold": resp(b"X-A: a", b" folded"),
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "nul_in_value": resp(b"X-A: a\x00b"),
    "ctl_in_value": resp(b"X-A: a\x01b"),
    "space_in_name": resp(b"X A: b"),
    "switching_protocols": resp(start=b"HTTP/1.1 101 Switching Protocols\r\n"),
    "bad_status": resp(start=b"HTTP/1.1 2000 OK\r\n"),
    "bad_version": resp(start=b"HTTP/2.0 200 OK\r\n"),
    "not_http": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
def test_bad_response_refused(name: str, bytewise: bool) -> None:
    with pytest.raises(BadResponseError) as info:
        response(BAD_RESPONSES[name], bytewise)
    assert info.value.status == 502


# Good requests: (raw, method, host, port, path, framing kind, body, rest)
GOOD_REQUESTS = {
    "get": (GET + b"\r\n", b"GET", "example.com", 80, b"/x", NO_BODY, b"", b""),
    "pipelined": (GET + b"\r\n" + GET + b"\r\n", b"GET", "example.com", 80, b"/x", NO_BODY, b"", GET + b"\r\n"),
    "leading_crlf": (b"\r\n" + GET + b"\r\n", b"GET", "example.com", 80, b"/x", NO_BODY, b"", b""),
    "post_cl": (
        req(b"Content-Length: 5", body=b"helloGET"),
        b"GET",
        "example.com",
        80,
        b"/x",
        LENGTH,
        b"hello",
        b"GET",
    ),
    "chunked_upper": (
        req(b"Transfer-Encoding: Chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        b"GET",
        "example.com",
        80,
        b"/x",
        CHUNKED,
        b"hello",
        b"",
    ),
    "chunked_ext_trailer": (
        req(b"Transfer-Encoding: chunked", body=b'3;a=b;c="d e"\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nX'),
        b"GET",
        "example.com",
        80,
        b"/x",
        CHUNKED,
        b"abc0123456789",
        b"X",
    ),
    "port_and_query": (
        b"PUT http://EXAMPLE.com:8080?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 0\r\n\r\n",
        b"PUT",
        "example.com",
        8080,
        b"/?q=1",
        NO_BODY,
        b"",
        b"",
    ),
    "ipv6": (
        b"GET http://[::1]:81/ HTTP/1.1\r\nHost: [::1]:81\r\n\r\n",
        b"GET",
        "::1",
        81,
        b"/",
        NO_BODY,
        b"",
        b"",
    ),
    "empty_port": (
        b"GET http://example.com:/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET",
        "example.com",
        80,
        b"/",
        NO_BODY,
        b"",
        b"",
    ),
    "host_with_default_port": (
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com:80\r\n\r\n",
        b"GET",
        "example.com",
        80,
        b"/",
        NO_BODY,
        b"",
        b"",
    ),
    "options_asterisk": (
        b"OPTIONS http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"OPTIONS",
        "example.com",
        80,
        b"*",
        NO_BODY,
        b"",
        b"",
    ),
    "http10_no_host": (b"GET http://example.com/ HTTP/1.0\r\n\r\n", b"GET", "example.com", 80, b"/", NO_BODY, b"", b""),
    "origin_form": (b"GET /proxy.pac HTTP/1.1\r\nHost: proxy\r\n\r\n", b"GET", "", 0, b"/proxy.pac", NO_BODY, b"", b""),
}


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("name", sorted(GOOD_REQUESTS))
def test_good_request(name: str, bytewise: bool) -> None:
    raw, method, host, port, path, kind, body, rest = GOOD_REQUESTS[name]
    head, got_body, got_rest = request(raw, bytewise)
    assert (head.method, head.host, head.port, head.path, head.framing.kind) == (method, host, port, path, kind)
    assert (got_body, got_rest) == (body, rest)


def _renewed() -> ForwardRequestParser:
    """A parser that has read one bodyless keep-alive request, renewed for the next."""
    parser = ForwardRequestParser(MAX)
    first = parser.feed(GET + b"\r\n")
    assert first is not None
    renewed = parser.renew(first)
    assert renewed is parser  # llhttp is at a message boundary: the same parser goes on
    return renewed


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_renewed_parser_refuses_what_a_new_one_does(name: str) -> None:
    raw, status = BAD_REQUESTS[name]
    with pytest.raises(ClientError) as info:
        read_message(_renewed(), raw, False)
    assert info.value.status == status, str(info.value)


@pytest.mark.parametrize("name", sorted(GOOD_REQUESTS))
def test_renewed_parser_reads_what_a_new_one_does(name: str) -> None:
    raw, method, host, port, path, kind, body, rest = GOOD_REQUESTS[name]
    head, got_body, got_rest = read_message(_renewed(), raw, False)
    assert (head.method, head.host, head.port, head.path, head.framing.kind) == (method, host, port, path, kind)
    assert (got_body, got_rest) == (body, rest)


@pytest.mark.parametrize(
    "first",
    [
        GET + b"Content-Length: 3\r\n\r\nabc",
        GET + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        GET + b"Connection: close\r\n\r\n",
        b"GET http://example.com/x HTTP/1.0\r\n\r\n",
    ],
    ids=["length", "chunked", "close", "http10"],
)
def test_parser_not_renewed_after_a_body_or_a_last_request(first: bytes) -> None:
    # llhttp would read the next bytes as this body (or refuse them after a close).
    parser = ForwardRequestParser(MAX)
    head = parser.feed(first)
    assert head is not None
    renewed = parser.renew(head)
    assert renewed is not parser
    assert renewed.feed(GET + b"\r\n") is not None


def test_response_framing() -> None:
    head, body, _ = response(resp(b"Content-Length: 5", body=b"hello"), head_request=True)
    assert head.framing.kind == NO_BODY and body == b""
    for status in (b"204 No Content", b"304 Not Modified", b"100 Continue"):
        head, body, rest = response(resp(b"Content-Length: 5", start=b"HTTP/1.1 " + status + b"\r\n", body=b"more"))
        assert head.framing.kind == NO_BODY and rest == b"more"
    head, body, _ = response(resp(body=b"until the end"))
    assert head.framing.kind == UNTIL_CLOSE and body == b"until the end" and not head.keep_alive
    head, body, _ = response(resp(b"Transfer-Encoding: CHUNKED", body=b"2\r\nab\r\n0\r\n\r\n"))
    assert head.framing.kind == CHUNKED and body == b"ab" and head.keep_alive


def test_is_connect() -> None:
    assert is_connect(b"CONN") is None
    assert is_connect(b"CONNECT a:443 HTTP/1.1") is True
    assert is_connect(b"\r\nGET http://a/") is False
    assert is_connect(b"CONNECTX ") is False


def test_request_head_sent_on() -> None:
    raw = req(
        b"Connection: keep-alive, X-Secret, Connection, Content-Length, Host",
        b"X-Secret: 1",
        b"Keep-Alive: timeout=5",
        b"Proxy-Connection: keep-alive",
        b"Proxy-Authorization: Basic dTpw",
        b"TE: trailers",
        b"Trailer: X-T",
        b"Via: 1.0 earlier",
        b"X-Kept: yes",
        b"Transfer-Encoding: chunked",
        body=b"0\r\n\r\n",
        start=b"POST http://example.com:8080/p?q HTTP/1.1\r\nHost: example.com:8080\r\n",
    )
    head, _, _ = request(raw)
    sent = request_head(head, Outgoing(via_name="edge"), keep_alive=True)
    assert sent == (
        b"POST /p?q HTTP/1.1\r\nHost: example.com:8080\r\nVia: 1.0 earlier\r\nX-Kept: yes\r\n"
        b"Via: 1.1 edge\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    # A parent gets the absolute form and its own credentials; Forwarded only when asked.
    sent = request_head(head, Outgoing(client="2001:db8::1", absolute=True, credentials="u:p"), keep_alive=False)
    assert sent.startswith(b"POST http://example.com:8080/p?q HTTP/1.1\r\n")
    assert b'Forwarded: for="[2001:db8::1]"\r\n' in sent and b"Proxy-Authorization: Basic dTpw\r\n" in sent
    assert sent.endswith(b"Connection: close\r\n\r\n")


def test_max_forwards_decremented() -> None:
    head, _, _ = request(b"OPTIONS http://a.example/ HTTP/1.1\r\nHost: a.example\r\nMax-Forwards: 3\r\n\r\n")
    assert b"\r\nMax-Forwards: 2\r\n" in request_head(head, Outgoing(), True)


def test_response_head_sent_on() -> None:
    head, _, _ = response(
        resp(
            b"Connection: X-Hop",
            b"X-Hop: 1",
            b"Keep-Alive: 5",
            b"Transfer-Encoding: chunked",
            b"X-Kept: 1",
            body=b"0\r\n\r\n",
        )
    )
    assert response_head(head, "gconnect", "1.1", True) == (
        b"HTTP/1.1 200 OK\r\nX-Kept: 1\r\nVia: 1.1 gconnect\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    # An HTTP/1.0 client gets the body unwrapped, ended by the close.
    assert response_head(head, "gconnect", "1.0", False).endswith(b"Via: 1.1 gconnect\r\nConnection: close\r\n\r\n")
    head, _, _ = response(resp(b"Content-Length: 10"), head_request=True)
    assert b"Content-Length: 10\r\n" in response_head(head, "gconnect", "1.1", True)


def test_rechunked_body_is_ours() -> None:
    reader = BodyReader(ForwardRequestParser(MAX).feed(req(b"Transfer-Encoding: chunked")).framing)
    out, rest = reader.feed(b'3;ext="x"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n')
    assert out == b"3\r\nabc\r\n0\r\n\r\n" and rest == b"" and reader.done


@pytest.mark.parametrize(
    ("framing", "data"),
    [
        (Framing(NO_BODY), b""),
        (Framing(NO_BODY), b"GET / HTTP/1.1\r\n"),
        (Framing(LENGTH, 0), b"next"),
        (Framing(LENGTH, 5), b"hello"),
        (Framing(LENGTH, 5), b"helloHTTP/1.1 200"),
        (Framing(LENGTH, 5), b"hell"),
        (Framing(LENGTH, 5), b""),
        (Framing(CHUNKED), b"5\r\nhello\r\n0\r\n\r\n"),
        (Framing(UNTIL_CLOSE), b"hello"),
    ],
)
def test_whole_body_is_what_a_reader_gives_when_it_is_done(framing: Framing, data: bytes) -> None:
    reader = BodyReader(framing)
    out, rest = reader.feed(data)
    whole = whole_body(framing, data)
    if whole is not None:
        assert whole == (out, rest) and reader.done
    else:
        # Only bodies a reader must go on reading (or re-frame) are left to it.
        assert not reader.done or framing.kind == CHUNKED


# --- the differential test: whatever we accept, h11 reads the same way ---------


def _h11_request(raw: bytes):
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    events = []
    while True:
        event = conn.next_event()
        if event in (h11.NEED_DATA, h11.PAUSED):
            break
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    return events


def _h11_response(raw: bytes, method: bytes = b"GET"):
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    events = []
    while True:
        event = conn.next_event()
        if event in (h11.NEED_DATA, h11.PAUSED):
            break
        events.append(event)
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    return events


def _h11_body(events) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))


def _mutations(raw: bytes):
    """Every message one byte edit away from *raw*, within the head and the
    start of the body: deletions, doubled bytes and a set of hostile bytes."""
    hostile = b" \t\r\n:,;\x00\x0b\x7f0Aa-"
    for i in range(min(len(raw), 160)):
        yield raw[:i] + raw[i + 1 :]
        yield raw[:i] + raw[i : i + 1] + raw[i:]
        for byte in hostile:
            yield raw[:i] + bytes([byte]) + raw[i + 1 :]


_SEEDS = [
    req(b"Transfer-Encoding: chunked", b"X-A: b", body=b"5\r\nhello\r\n0\r\n\r\n"),
    req(b"Content-Length: 5", b"X-A: b", body=b"hello"),
]


@pytest.mark.parametrize("seed", range(len(_SEEDS)))
def test_differential_requests_against_h11(seed: int) -> None:
    accepted = 0
    for raw in _mutations(_SEEDS[seed]):
        try:
            head, body, _ = request(raw)
        except (GConnectError, BodyError, EOFError):
            continue
        accepted += 1
        try:
            events = _h11_request(raw)
        except h11.RemoteProtocolError as exc:
            pytest.fail(f"we accept what h11 refuses ({exc}): {raw!r}")
        assert events and isinstance(events[0], h11.Request), raw
        assert events[0].method == head.method, raw
        assert isinstance(events[-1], h11.EndOfMessage), raw
        assert _h11_body(events) == body, raw
    assert accepted > 10


_RESPONSE_SEEDS = [
    resp(b"Transfer-Encoding: chunked", b"X-A: b", body=b"5\r\nhello\r\n0\r\n\r\n"),
    resp(b"Content-Length: 5", b"X-A: b", body=b"hello"),
]


@pytest.mark.parametrize("seed", range(len(_RESPONSE_SEEDS)))
def test_differential_responses_against_h11(seed: int) -> None:
    accepted = 0
    for raw in _mutations(_RESPONSE_SEEDS[seed]):
        try:
            head, body, _ = response(raw)
        except (GConnectError, BodyError, EOFError):
            continue
        if head.interim:
            continue
        accepted += 1
        try:
            events = _h11_response(raw)
        except h11.RemoteProtocolError as exc:
            pytest.fail(f"we accept what h11 refuses ({exc}): {raw!r}")
        assert events and isinstance(events[0], h11.Response) and events[0].status_code == head.status, raw
        assert _h11_body(events) == body, raw
    assert accepted > 10


def test_garbage_refused_at_its_first_bytes() -> None:
    """No waiting for an empty line that will never come: a TLS ClientHello
    sent to the plain listener is a 400 at once, as bytes from a non-HTTP
    origin are a 502."""
    with pytest.raises(ClientError) as info:
        ForwardRequestParser(MAX).feed(bytes.fromhex("16030100c4010000c00303"))
    assert info.value.status == 400
    with pytest.raises(ClientError) as info:
        ForwardRequestParser(MAX).feed(b"GET http://a.example/ HTTP/1.1\r\nX-A: a\x00")
    assert info.value.status == 400
    with pytest.raises(BadResponseError):
        ResponseParser(MAX, False).feed(b"SSH-2.0-OpenSSH_9.2\r\n")
    # Empty lines before a request-line are not garbage (RFC 9112 §2.2).
    parser = ForwardRequestParser(MAX)
    assert parser.feed(b"\r") is None and parser.feed(b"\n\r\nGET http://a.example/ HTTP/1.1\r\n") is None
    assert parser.feed(b"Host: a.example\r\n\r\n").host == "a.example"
