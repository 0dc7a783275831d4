"""The forwarding heads read in one pass, held to the per-field reading they
replaced: request and response heads from a grammar of near-valid mutations
(the smuggling cases of RFC 9112 §6 and §5, request lines the fast path must
leave to the general one, status lines of every shape) go through both, fed
whole or in pieces, and must get the same verdict: the same error class and
status when refused, the same parse and the same head sent on, byte for byte,
when accepted. The old code is frozen in tests/unit/_old_forward/."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gconnect.errors import GConnectError
from gconnect.tunnel.forward import fields, render, request, response

from ._old_forward import fields as old_fields
from ._old_forward import render as old_render
from ._old_forward import request as old_request
from ._old_forward import response as old_response

EXAMPLES = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

AUTHORITIES = [
    b"a.example", b"A.Example", b"a.example:", b"a.example:80", b"a.example:080", b"a.example:8080", b"[::1]",
    b"[::1]:8080", b"[0:0::1]", b"1.2.3.4", b"xn--bcher-kva.example", b"a_b.example",
    # (the valid ones above, the faulty ones below)
    b"a.example:99999", b"a.example:0", b"a.example:+80", b"[::1]:", b"[::1%25eth0]", b"01.2.3.4", b"127.1",
    b"u@a.example", b"u:p@a.example", b"", b"a.example.", b"-a.example", b"a..example", b"a.example:80:80",
    b"a\x80.example", b"a%2e.example", b"[v1.x]", b"256.1.1.1", b"a.example:65536",
]  # fmt: skip
VALID_AUTHORITIES = 12
PATHS = [
    b"", b"/", b"/x", b"?q", b"/x?y=z&w", b"/%zz", b"/%41", b"/*", b"/x@y", b"/x:y", b"//x", b'/{}"<>|^`',
    b"/a#f", b"#f", b"/\x80", b"/a b", b"/a\tb", b"/\x7f",
]  # fmt: skip
VALID_PATHS = 12
METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"M-SEARCH", b"PROPFIND", b"SOURCE", b"QUERY"]
VALID_METHODS = len(METHODS)
METHODS += [b"TRACE", b"CONNECT", b"FOO", b"get", b"G{T", b"DESCRIBE", b"PRI"]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1"]
VERSIONS += [b"RTSP/1.0", b"ICE/1.0", b"HTTP/1.1 ", b"HTTP/11", b"1.1"]
SCHEMES = [b"http://", b"HTTP://", b"hTtP://", b"https://", b"ftp://", b"http:/", b"http:"]

#: Each field's values: the valid ones, then the faulty ones.
VALUES = {
    b"host": (AUTHORITIES[:VALID_AUTHORITIES], AUTHORITIES[VALID_AUTHORITIES:]),
    b"content-length": (
        [b"0", b"3", b"012", b"0000000000000000003", b"4611686018427387904"],
        [
            b"+3", b"-1", b"3,3", b"3, 3", b"0x3", b"", b"1 2", b"99999999999999999999", b"00000000000000000003",
            b"4611686018427387905", b"1_0", b"\xd9\xa3", b" 3",
        ],
    ),
    b"transfer-encoding": (
        [b"chunked", b"ChUnKeD", b"CHUNKED"],
        [
            b"chunked, identity", b"identity, chunked", b"gzip, chunked", b"chunked, gzip", b"gzip", b"identity",
            b"chunked,", b", chunked", b"xchunked", b"chunked;q=1", b"",
        ],
    ),
    b"connection": (
        [
            b"close", b"keep-alive", b"Close", b"x-a", b"X-A, close", b"Host", b"connection", b"Connection",
            b"te", b"transfer-encoding", b"Content-Length", b"Max-Forwards", b"via", b"", b",,", b"x-a,",
            b"expect", b"Proxy-Authorization", b"content-type",
        ],
        [b"x a", b"x:a", b"x/a", b"upgrade"],
    ),
    b"max-forwards": ([b"0", b"1", b"3"], [b"-1", b"abc", b"99999999999", b"", b"0x1", b"1, 2"]),
    b"expect": ([b"100-continue", b"100-Continue", b"200-ok", b""], []),
    b"upgrade": ([], [b"websocket", b"h2c"]),
}  # fmt: skip
NAMES = [
    b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding", b"transfer-encoding",
    b"Connection", b"connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Upgrade",
    b"Max-Forwards", b"Expect", b"Via", b"Forwarded", b"X-A", b"x-a", b"Proxy-Authorization",
    b"Proxy-Authenticate", b"Content-Type",
]  # fmt: skip
SEPARATORS = [b": ", b":", b":\t", b":  \t "]
BAD_SEPARATORS = [b" : ", b"\t:", b":\r\n ", b"", b"::"]
ENDS = [b"", b" ", b"\t", b" \t "]
BAD_ENDS = [b"\r", b"\r\n ", b"\n", b"\x00"]
LINE_ENDS = [b"\r\n"]
BAD_LINE_ENDS = [b"\n", b"\r", b"\r\r\n", b"\r\n\t", b"\r\n "]


def usually(valid: list[bytes], mutants: list[bytes], odds: int = 12) -> st.SearchStrategy[bytes]:
    """One of *valid*, but one time in *odds* or so one of the *mutants*:
    each part of a head near-valid, so that a head is as often accepted as
    not. (A flag drawn from a list, not an integer, which hypothesis draws
    at its bounds far more often than one time in *odds*.)"""
    return one_in(odds).flatmap(lambda mutate: st.sampled_from(mutants if (mutate and mutants) or not valid else valid))


def one_in(odds: int) -> st.SearchStrategy[bool]:
    return st.sampled_from([False] * (odds - 1) + [True])


# Bytes that make parsers disagree, for names and values built at random.
TRICKY = [b"a", b"A", b"-", b"_", b" ", b"\t", b":", b",", b";", b'"', b"@", b"\x80", b"\xff", b"0", b"9", b"=", b"/"]
tricky = st.lists(usually(TRICKY, [b"\r", b"\n", b"\x00", b"\x01", b"\x7f"], 30), max_size=6).map(b"".join)


@st.composite
def a_field(draw: st.DrawFn) -> bytes:
    if draw(one_in(8)):
        return draw(tricky) + b":" + draw(tricky)
    name = draw(st.sampled_from(NAMES))
    valid, faulty = VALUES.get(name.lower(), ([], []))
    if (not valid and not faulty) or draw(one_in(8)):
        value = draw(tricky)
    else:
        value = draw(usually(valid, faulty, 6))
    return name + draw(usually(SEPARATORS, BAD_SEPARATORS)) + value + draw(usually(ENDS, BAD_ENDS))


@st.composite
def some_fields(draw: st.DrawFn, host: bytes | None) -> bytes:
    fields = draw(st.lists(a_field(), max_size=4))
    if host is not None and not draw(one_in(10)):
        fields.insert(draw(st.integers(0, len(fields))), b"Host: " + host)
    ends = [draw(usually(LINE_ENDS, BAD_LINE_ENDS, 30)) for _ in fields]
    return b"".join(field + end for field, end in zip(fields, ends, strict=True))


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    authority = draw(usually(AUTHORITIES[:VALID_AUTHORITIES], AUTHORITIES[VALID_AUTHORITIES:], 4))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        target = draw(st.sampled_from([b"/", b"/x?y", b"*", b"/a b", b"a.example:80", b""]))
    else:
        target = (
            draw(usually(SCHEMES[:3], SCHEMES[3:]))
            + authority
            + draw(usually(PATHS[:VALID_PATHS], PATHS[VALID_PATHS:], 6))
        )
    space = draw(usually([b" "], [b"  ", b"\t", b""]))
    method = draw(usually(METHODS[:VALID_METHODS], METHODS[VALID_METHODS:], 6))
    line = method + space + target + b" " + draw(usually(VERSIONS[:2], VERSIONS[2:]))
    host = draw(usually([authority, authority.lower()], [b"a.example", b"a.example:80", b"b.example", b""], 4))
    lead = draw(usually([b""], [b"\r\n", b"\r\n\r\n", b"\n"]))
    fields = draw(some_fields(host))
    after = draw(
        st.sampled_from([b"", b"abc", b"0\r\n\r\n", b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n"])
    )
    return lead + line + draw(usually(LINE_ENDS, BAD_LINE_ENDS, 30)) + fields + b"\r\n" + after


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    version = draw(usually([b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2.0", b"http/1.1", b"HTTP/1.2", b"ICE/1.0", b"HTTP/1"]))
    codes = [b"200", b"100", b"103", b"204", b"304", b"404", b"599", b"600", b"999"]
    code = draw(usually(codes, [b"101", b"099", b"99", b"1000", b"0200", b"20x", b""]))
    reasons = [b" OK", b"", b" ", b"  OK", b" OK  ", b" \tOK", b" O\x80K", b"\tOK"]
    reason = draw(usually(reasons, [b" O\x7fK", b" O\x01K", b" O\rK"]))
    space = draw(usually([b" "], [b"  ", b"\t"]))
    lead = draw(usually([b""], [b"\r\n", b"\n"]))
    fields = draw(some_fields(None))
    after = draw(st.sampled_from([b"", b"abc", b"0\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]))
    line = version + space + code + reason + draw(usually(LINE_ENDS, BAD_LINE_ENDS, 30))
    return lead + line + fields + b"\r\n" + after


def _pieces(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(raw)) for cut in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True) if b > a]


def _refused(exc: Exception) -> tuple[object, ...]:
    # The class and the status say what the client or the log sees; messages may be worded anew.
    return ("refused", type(exc).__name__, getattr(exc, "status", None))


def _feed(parser, pieces: list[bytes]):
    for piece in pieces:
        got = parser.feed(piece)
        if got is not None:
            return got
    return None


def _request_verdict(req_mod, render_mod, pieces: list[bytes], max_bytes: int) -> list[tuple[object, ...]]:
    """The verdicts on the first request and, when the parser is renewed for
    it, the one pipelined after it."""
    verdicts: list[tuple[object, ...]] = []
    parser = req_mod.ForwardRequestParser(max_bytes)
    for _ in range(2):
        try:
            got = _feed(parser, pieces)
        except GConnectError as exc:
            verdicts.append(_refused(exc))
            return verdicts
        if got is None:
            verdicts.append(("incomplete",))
            return verdicts
        verdicts.append(_request_seen(render_mod, got))
        if not got.trailing.startswith((b"GET", b"\r", b"\n")):
            return verdicts
        parser, pieces = parser.renew(got), [got.trailing]
    return verdicts


def _request_seen(render_mod, got) -> tuple[object, ...]:
    seen: list[object] = [
        "accepted", got.method, got.scheme, got.host, got.port, got.family, got.path, got.version,
        got.framing.kind, got.framing.length, got.options, [tuple(field) for field in got.headers],
        got.trailing, got.keep_alive, got.expects_continue,
    ]  # fmt: skip
    if got.scheme:
        seen += [got.target, got.authority]
        for out, keep_alive in [
            (render_mod.Outgoing(via_name="gc"), True),
            (render_mod.Outgoing(via_name="gc", client="::1", absolute=True, credentials="u:p", received="2"), False),
            (render_mod.Outgoing(via_name="other", client="192.0.2.1"), True),
        ]:
            try:
                seen.append(render_mod.request_head(got, out, keep_alive))
            except GConnectError as exc:
                seen.append(_refused(exc))
    return tuple(seen)


def _response_verdict(resp_mod, render_mod, pieces: list[bytes], max_bytes: int, head_request: bool):
    parser = resp_mod.ResponseParser(max_bytes, head_request)
    try:
        got = _feed(parser, pieces)
    except GConnectError as exc:
        return _refused(exc)
    if got is None:
        return ("incomplete",)
    sent = [render_mod.response_head(got, "gc", version, keep) for version in ("1.1", "1.0") for keep in (True, False)]
    return (
        "accepted", got.status, got.reason, got.version, got.framing.kind, got.framing.length, got.options,
        [tuple(field) for field in got.headers], got.trailing, got.interim, got.keep_alive, sent,
    )  # fmt: skip


MAX_BYTES = st.sampled_from([16 * 1024, 16 * 1024, 16 * 1024, 40, 64, 100])
CUTS = st.lists(st.integers(1, 200), max_size=3)


@EXAMPLES
@given(raw=request_heads(), cuts=CUTS, max_bytes=MAX_BYTES)
def test_request_heads_read_as_before(raw: bytes, cuts: list[int], max_bytes: int) -> None:
    pieces = _pieces(raw, cuts)
    old = _request_verdict(old_request, old_render, pieces, max_bytes)
    assert _request_verdict(request, render, pieces, max_bytes) == old
    # Again: the authority now comes from the cache, which must not change a thing.
    assert _request_verdict(request, render, pieces, max_bytes) == old


@EXAMPLES
@given(raw=response_heads(), cuts=CUTS, max_bytes=MAX_BYTES, head_request=st.booleans())
def test_response_heads_read_as_before(raw: bytes, cuts: list[int], max_bytes: int, head_request: bool) -> None:
    pieces = _pieces(raw, cuts)
    old = _response_verdict(old_response, old_render, pieces, max_bytes, head_request)
    assert _response_verdict(response, render, pieces, max_bytes, head_request) == old


def _outcome(judge: Callable[[], object]) -> tuple[object, ...]:
    try:
        got = judge()
    except ValueError as exc:  # FramingError, of the new module or the old
        return ("refused", type(exc).__name__, str(exc))
    if isinstance(got, (fields.Framing, old_fields.Framing)):
        return ("framed", got.kind, got.length)
    return ("got", got)


field_pairs = st.lists(
    st.tuples(
        st.sampled_from(NAMES) | tricky,
        st.sampled_from([value for valid, faulty in VALUES.values() for value in valid + faulty]) | tricky,
    ),
    max_size=5,
)


@EXAMPLES
@given(headers=field_pairs, status=st.sampled_from([100, 200, 204, 304, 404]), head_request=st.booleans())
def test_field_judgements_as_before(headers: list[tuple[bytes, bytes]], status: int, head_request: bool) -> None:
    """The functions of .fields that HTTP/2's forwarding calls too, on fields
    no HTTP/1 parser has held to its grammar: with the names lowered by the
    caller or not, the verdicts are the old ones."""
    lnames = [name.lower() for name, _ in headers]
    for names in (None, lnames):
        _judge_fields_both_ways(headers, names, status, head_request)


def _judge_fields_both_ways(headers: list[tuple[bytes, bytes]], names, status: int, head_request: bool) -> None:
    old, new = old_fields, fields
    assert _outcome(lambda: new.request_framing(headers, names)) == _outcome(lambda: old.request_framing(headers))
    assert _outcome(lambda: new.response_framing(headers, status, head_request, names)) == _outcome(
        lambda: old.response_framing(headers, status, head_request)
    )
    for lname in (b"host", b"content-length", b"expect", b"x-a"):
        assert new.values(headers, lname, names) == old.values(headers, lname)
    options = _outcome(lambda: old.connection_options(headers))
    assert _outcome(lambda: new.connection_options(headers, names)) == options
    if options[0] == "got":
        sent = old.end_to_end(headers, options[1])
        assert new.end_to_end(headers, new.HOP_BY_HOP | options[1], names or ()) == sent
