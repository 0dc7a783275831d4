"""A forwarded request's head, sans I/O: absolute-form ``http://`` requests
(and origin-form ones, which are for the proxy itself).

Bytes go in, a :class:`ForwardRequest` or a ClientError comes out. The head
is cut at its first empty line and handed to llhttp whole, which refuses bare
LF, obs-fold, whitespace before a colon, control bytes, an unknown version;
the head it accepted is then split into its lines and fields here
(:func:`~.fields.read_fields`), and the URI, Host and the framing judged
(:mod:`.fields`), the host by the CONNECT grammar's own
:func:`~gconnect.tunnel.head.parse_authority`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from socket import AF_INET6

import httptools

from ...config import hostport
from ...errors import (
    HeadTooLargeError,
    MalformedRequestError,
    TraceRefusedError,
    UnsupportedRequestError,
    VersionNotSupportedError,
)
from ..head import parse_authority, parse_host_header
from .fields import (
    EMPTY,
    NO_BODY,
    REQUEST_DROPS,
    FieldList,
    Framing,
    FramingError,
    HeadBuffer,
    connection_options,
    read_fields,
    request_framing,
    show,
    values,
    whole_head,
)

HTTP_PORT = 80
_VERSIONS = ("1.1", "1.0")
_VERSION_OF = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0", b"1.1": "1.1", b"1.0": "1.0"}
#: The usual request line, read in one match: an http:// URL whose authority
#: has no userinfo, then a path or a query, no fragment, no control byte or
#: space. Anything else takes the general path, which gives each fault its
#: message (and which llhttp has already held to its own URL grammar).
_ABSOLUTE_LINE = re.compile(
    rb"([A-Z]+) [Hh][Tt][Tt][Pp]://([^/?#@\x00-\x20\x7f]+)([/?][^#\x00-\x20\x7f]*)? HTTP/(1\.[01])\r\n"
)
#: Without any of these a request frames no body and names no Connection option.
_FRAMING_FIELDS = frozenset({b"connection", b"transfer-encoding", b"content-length"})
_NO_OPTIONS: frozenset[bytes] = frozenset()
#: Authorities recently parsed, by their bytes in the URI: a client asks for
#: the same few again and again. Emptied when full, so a client naming ever
#: new ones costs no more memory than this many (the cache of a pure function:
#: a name is never trusted more for having been seen).
MAX_KNOWN_AUTHORITIES = 256
_known_authorities: dict[bytes, tuple[str, int, int, bytes]] = {}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://")
#: An authority that ends in a port (or an empty one): the part after its last colon is digits.
_PORT_AT_END = re.compile(rb":[0-9]*$")


@dataclasses.dataclass(slots=True)
class ForwardRequest:
    """A request head that passed the checks."""

    method: bytes
    #: "http" for an absolute-form request, "" for origin-form (a request to the proxy itself).
    scheme: str
    #: Lower-case name or canonical IP text ("" for origin-form), its port, and
    #: AF_INET/AF_INET6 for an IP literal (0 for a name), as for CONNECT.
    host: str
    port: int
    family: int
    #: The origin-form target to send to the origin: path and query.
    path: bytes
    #: "1.1" or "1.0".
    version: str
    #: Every field as received, in order (values stripped of trailing OWS).
    headers: list[tuple[bytes, bytes]]
    framing: Framing = EMPTY
    #: Lower-cased names the Connection fields list.
    options: frozenset[bytes] = frozenset()
    #: Bytes after the head: the body's start, or pipelined requests.
    trailing: bytes = b""
    #: The names of *headers* lower-cased, in order (() when not made: the
    #: functions of :mod:`.fields` then lower them themselves).
    lnames: Sequence[bytes] = ()
    #: :attr:`authority` as bytes, when made already (b"": not made).
    host_field: bytes = b""
    #: The fields to send on, but for those the Connection options name
    #: (None: not sorted out yet; :func:`~.render.request_head` does it).
    kept: FieldList | None = None

    @property
    def target(self) -> str:
        """``host:port`` with brackets around an IPv6 address."""
        return hostport(self.host, self.port)

    @property
    def authority(self) -> str:
        """The Host value for the origin: the port only when it is not 80."""
        return authority_text(self.host, self.port, self.family)

    @property
    def keep_alive(self) -> bool:
        """Whether the client may send another request on this connection
        (HTTP/1.0 clients are served one request each)."""
        return self.version == "1.1" and b"close" not in self.options

    @property
    def expects_continue(self) -> bool:
        return any(v.lower() == b"100-continue" for v in values(self.headers, b"expect", self.lnames or None))


def parse_absolute(url: bytes) -> tuple[str, int, int, bytes]:
    """``(host, port, family, rest)`` of an ``http://`` absolute-form target;
    *rest* is what follows the authority: a path, a query, or nothing."""
    authority, path = split_absolute(url)
    return (*parse_uri_authority(authority), path)


def parse_uri_authority(authority: bytes) -> tuple[str, int, int]:
    """``(host, port, family)`` of an ``http://`` URI's authority (port 80 when it has none)."""
    if b"@" in authority:
        raise MalformedRequestError("userinfo in the URL is not forwarded (RFC 9110 §4.2.4)")
    if not authority:
        raise MalformedRequestError("http:// URL without a host")
    if authority.endswith(b":"):
        authority += b"%d" % HTTP_PORT  # RFC 3986 §3.2.3: an empty port is the default
    elif not _PORT_AT_END.search(authority) or authority.endswith(b"]"):
        authority += b":%d" % HTTP_PORT
    return parse_authority(authority)


def known_authority(authority: bytes) -> tuple[str, int, int, bytes]:
    """:func:`parse_uri_authority` of *authority*, with the Host value for the
    origin (the port only when not 80), remembered for the next request."""
    known = _known_authorities.get(authority)
    if known is None:
        host, port, family = parse_uri_authority(authority)
        if len(_known_authorities) >= MAX_KNOWN_AUTHORITIES:
            _known_authorities.clear()
        field = authority_text(host, port, family).encode("ascii")
        known = _known_authorities[authority] = (host, port, family, field)
    return known


def authority_text(host: str, port: int, family: int) -> str:
    """The Host value for an origin: the port only when it is not 80."""
    host = f"[{host}]" if family == AF_INET6 else host
    return host if port == HTTP_PORT else f"{host}:{port}"


def split_absolute(url: bytes) -> tuple[bytes, bytes]:
    """``(authority, rest)`` of an ``http://`` absolute-form target, unparsed."""
    if url[:7].lower() == b"http://":
        rest = url[7:]
    else:
        scheme = _SCHEME.match(url)
        if scheme is None:
            raise MalformedRequestError(f"request-target {show(url)} is neither absolute-form nor origin-form")
        raise MalformedRequestError(
            f"scheme {show(scheme[1])} is not forwarded: only http:// (https:// URLs go through CONNECT)"
        )
    if b"#" in rest:
        raise MalformedRequestError("a request-target has no fragment (RFC 9112 §3.2)")
    slash, query = rest.find(b"/"), rest.find(b"?")
    cut = slash if query < 0 or 0 <= slash < query else query
    if cut < 0:
        return rest, b""
    return rest[:cut], rest[cut:]


def check_host(value: bytes, host: str, port: int) -> None:
    """RFC 9112 §3.2.2 has the proxy replace Host with the URI's authority; a
    Host naming another authority is refused instead, since it means the
    client and some parser behind us may disagree about the target."""
    if parse_host_header(value, HTTP_PORT) != (host, port):
        raise MalformedRequestError(f"Host header {show(value)} does not match the request-target")


class ForwardRequestParser:
    """Incremental parser for one request head: :meth:`feed` returns None
    until the head is complete, then the :class:`ForwardRequest`; errors raise
    a ClientError whose ``status`` is the answer. One parser per head;
    :meth:`renew` gives the one for the next head on the same connection."""

    __slots__ = ("_buffer", "_complete", "_method_refused", "_parser", "max_bytes")
    # httptools installs the llhttp callbacks it finds, and a None says "not
    # wanted" (a missing one would cost a swallowed AttributeError per parser).
    # The head is read whole once llhttp has accepted it: only its end is wanted.
    on_message_begin = on_url = on_header = on_body = on_message_complete = None
    on_chunk_header = on_chunk_complete = None

    def __init__(self, max_header_bytes: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.max_bytes = max_header_bytes
        #: The head's bytes so far, once it has come in more than one piece.
        self._buffer: HeadBuffer | None = None
        self._complete = False
        # llhttp refuses a method it does not know at its first byte; whether
        # it was a token (501) or garbage (400) is known once the token ends.
        self._method_refused = False

    def on_headers_complete(self) -> None:
        self._complete = True

    def renew(self, request: ForwardRequest) -> ForwardRequestParser:
        """The parser for the next head on this connection, after *request*
        (which this parser returned): this one, emptied, when llhttp ended
        the message with the head (no body, and a keep-alive request, so it
        is waiting for a new request line), else a new one. A head is only
        ever fed up to its empty line, so llhttp never saw a byte past it."""
        if request.framing.kind != NO_BODY or not request.keep_alive or not self._complete:
            return ForwardRequestParser(self.max_bytes)
        self._buffer = None
        self._complete = False
        return self

    def feed(self, data: bytes) -> ForwardRequest | None:
        """Consume *data*; return the request once its head is complete."""
        buffer = self._buffer
        if buffer is None:
            upto = whole_head(data, self.max_bytes)
            if upto:
                try:
                    self._parser.feed_data(data if upto == len(data) else data[:upto])
                except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                    self._refused(exc)
                if self._method_refused:
                    self._judge_method(data)
                    raise MalformedRequestError("malformed request line")
                return self._parse(data[:upto], data[upto:])
            buffer = self._buffer = HeadBuffer(
                self.max_bytes, self._tokenize, _head_too_large, MalformedRequestError, skip_empty_lines=True
            )
        cut = buffer.feed(data)
        if self._method_refused:
            self._judge_method(buffer.pending)
            return None
        return None if cut is None else self._parse(*cut)

    def _judge_method(self, pending: bytes) -> None:
        start = pending.lstrip(b"\r\n")
        method = _TOKEN.match(start)
        length = method.end() if method else 0
        after = start[length : length + 1]
        if after == b" " and length:
            raise UnsupportedRequestError(f"method {show(start[:length])} not supported")
        if after:
            raise MalformedRequestError("malformed request line")

    def _tokenize(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._refused(exc)

    def _refused(self, exc: Exception) -> None:
        """What llhttp's *exc* means: the ClientError raised, or nothing yet."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            return  # Upgrade with Connection: upgrade; refused in _judge
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._method_refused = True  # judged by feed() once the method has ended
            return
        message = str(exc) or "malformed request head"
        if message.startswith("Invalid HTTP version"):
            raise VersionNotSupportedError(f"{message}: only HTTP/1.1 and HTTP/1.0") from None
        raise MalformedRequestError(message) from None

    def _parse(self, head: bytes, trailing: bytes) -> ForwardRequest:
        if not self._complete:
            raise MalformedRequestError("malformed request head")
        line = _ABSOLUTE_LINE.match(head)
        if line is None:
            return self._parse_general(head, trailing)
        method, authority, path, version = line.groups()
        if method != self._parser.get_method():
            raise MalformedRequestError("malformed request line")  # llhttp read another line
        fields = read_fields(head, line.end() - 2, REQUEST_DROPS)
        return self._judge(method, _VERSION_OF[version], fields, trailing, b"", (authority, path or b""))

    def _parse_general(self, head: bytes, trailing: bytes) -> ForwardRequest:
        line_end = head.find(b"\r\n")
        parts = head[:line_end].split(b" ")
        version = _VERSION_OF.get(parts[-1])
        # RFC 9112 §3: single spaces. llhttp takes runs of them, and a parser
        # behind us splitting on whitespace might then read another target. And
        # the line must be the one llhttp read: "CONNECT  HTTP/1.0" splits in
        # three, but llhttp read the version as the target and no version.
        parser = self._parser
        if (
            len(parts) != 3
            or version is None
            or version != parser.get_http_version()
            or parts[0] != parser.get_method()
        ):
            version = parser.get_http_version()
            if version not in _VERSIONS:
                raise VersionNotSupportedError(f"HTTP/{version} not supported: only HTTP/1.1 and HTTP/1.0")
            raise MalformedRequestError("malformed request line")
        fields = read_fields(head, line_end, REQUEST_DROPS)
        return self._judge(parts[0], version, fields, trailing, parts[1], None)

    def _judge(
        self,
        method: bytes,
        version: str,
        fields: tuple[FieldList, list[bytes], FieldList],
        trailing: bytes,
        url: bytes,
        target: tuple[bytes, bytes] | None,
    ) -> ForwardRequest:
        """The request, judged: *fields* as :func:`~.fields.read_fields` gives
        them; *target* is the URI's (authority, rest) when the request line
        was read already, else None and *url* is split here."""
        headers, lnames, kept = fields
        if method == b"CONNECT":
            raise MalformedRequestError("CONNECT reached the forwarding parser")
        if method == b"TRACE":
            raise TraceRefusedError("TRACE is not forwarded")
        if b"upgrade" in lnames:
            # RFC 6455 §4.1: WebSocket clients behind a proxy use CONNECT.
            raise UnsupportedRequestError("Upgrade is not forwarded: WebSocket clients use CONNECT through a proxy")
        options, framing = _NO_OPTIONS, EMPTY
        if not _FRAMING_FIELDS.isdisjoint(lnames):
            options, framing = _framing(headers, lnames, version)
        hosts = lnames.count(b"host")
        if hosts > 1:
            raise MalformedRequestError("more than one Host header")
        if not hosts and version == "1.1":
            raise MalformedRequestError("missing Host header (required in HTTP/1.1)")
        if target is None:
            if url.startswith(b"/") or url == b"*":
                return ForwardRequest(
                    method, "", "", 0, 0, url, version, headers, framing, options, trailing, lnames, b"", kept
                )
            target = split_absolute(url)
        authority, path = target
        host, port, family, field = _known_authorities.get(authority) or known_authority(authority)
        if hosts:
            # The same bytes as the URI's authority name the same host and port:
            # only a Host spelled otherwise is parsed and compared (and an empty
            # port, which the URI grammar allows and the Host check refuses).
            value = headers[lnames.index(b"host")][1]
            if value != authority or value.endswith(b":"):
                check_host(value, host, port)
        if not path:
            # RFC 9112 §3.2.4: OPTIONS for the server as a whole is sent as "*".
            path = b"*" if method == b"OPTIONS" else b"/"
        elif not path.startswith(b"/"):
            path = b"/" + path
        return ForwardRequest(
            method, "http", host, port, family, path, version, headers, framing, options, trailing, lnames, field, kept
        )


def _framing(headers: list[tuple[bytes, bytes]], lnames: list[bytes], version: str) -> tuple[frozenset[bytes], Framing]:
    """The Connection options and the body's framing, judged (MalformedRequestError)."""
    try:
        options = connection_options(headers, lnames)
        if version == "1.0" and b"transfer-encoding" in lnames:
            # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
            raise FramingError("Transfer-Encoding in an HTTP/1.0 request")
        return options, request_framing(headers, lnames)
    except FramingError as exc:
        raise MalformedRequestError(str(exc)) from None


def _head_too_large(message: str) -> HeadTooLargeError:
    return HeadTooLargeError(f"request {message}")


def is_connect(prefix: bytes) -> bool | None:
    """Whether a request starting with *prefix* is a CONNECT; None while the
    method is not yet complete."""
    start = prefix.lstrip(b"\r\n")
    space = start.find(b" ")
    if space >= 0:
        return start[:space] == b"CONNECT"
    # A method is a short token: anything else is no CONNECT, whatever it is (the parser judges).
    return None if len(start) < 16 and len(prefix) < 64 and _TOKEN.fullmatch(start or b"C") else False
