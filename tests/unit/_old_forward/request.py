"""A forwarded request's head, sans I/O: absolute-form ``http://`` requests
(and origin-form ones, which are for the proxy itself).

Bytes go in, a :class:`ForwardRequest` or a ClientError comes out. The head
is cut at its first empty line and handed to llhttp whole, which refuses bare
LF, obs-fold, whitespace before a colon, control bytes, an unknown version;
the URI, Host and the framing are then judged here (:mod:`.fields`), the host
by the CONNECT grammar's own :func:`~gconnect.tunnel.head.parse_authority`.
"""

from __future__ import annotations

import dataclasses
import re
from socket import AF_INET6

import httptools

from gconnect.config import hostport
from gconnect.errors import (
    HeadTooLargeError,
    MalformedRequestError,
    TraceRefusedError,
    UnsupportedRequestError,
    VersionNotSupportedError,
)
from gconnect.tunnel.head import HeadFields, parse_authority, parse_host_header

from .fields import (
    EMPTY,
    NO_BODY,
    Framing,
    FramingError,
    HeadBuffer,
    connection_options,
    names_of,
    request_framing,
    show,
    values,
)

HTTP_PORT = 80
_VERSIONS = ("1.1", "1.0")
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

    @property
    def target(self) -> str:
        """``host:port`` with brackets around an IPv6 address."""
        return hostport(self.host, self.port)

    @property
    def authority(self) -> str:
        """The Host value for the origin: the port only when it is not 80."""
        host = f"[{self.host}]" if self.family == AF_INET6 else self.host
        return host if self.port == HTTP_PORT else f"{host}:{self.port}"

    @property
    def keep_alive(self) -> bool:
        """Whether the client may send another request on this connection
        (HTTP/1.0 clients are served one request each)."""
        return self.version == "1.1" and b"close" not in self.options

    @property
    def expects_continue(self) -> bool:
        return any(v.lower() == b"100-continue" for v in values(self.headers, b"expect"))


def parse_absolute(url: bytes) -> tuple[str, int, int, bytes]:
    """``(host, port, family, rest)`` of an ``http://`` absolute-form target;
    *rest* is what follows the authority: a path, a query, or nothing."""
    authority, path = split_absolute(url)
    if b"@" in authority:
        raise MalformedRequestError("userinfo in the URL is not forwarded (RFC 9110 §4.2.4)")
    if not authority:
        raise MalformedRequestError("http:// URL without a host")
    if authority.endswith(b":"):
        authority += b"%d" % HTTP_PORT  # RFC 3986 §3.2.3: an empty port is the default
    elif not _PORT_AT_END.search(authority) or authority.endswith(b"]"):
        authority += b":%d" % HTTP_PORT
    host, port, family = parse_authority(authority)
    return host, port, family, path


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


class ForwardRequestParser(HeadFields):
    """Incremental parser for one request head: :meth:`feed` returns None
    until the head is complete, then the :class:`ForwardRequest`; errors raise
    a ClientError whose ``status`` is the answer. One parser per head;
    :meth:`renew` gives the one for the next head on the same connection."""

    __slots__ = ("_buffer", "_method_refused", "_parser")

    def __init__(self, max_header_bytes: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._buffer = HeadBuffer(
            max_header_bytes, self._tokenize, _head_too_large, MalformedRequestError, skip_empty_lines=True
        )
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._complete = False
        # llhttp refuses a method it does not know at its first byte; whether
        # it was a token (501) or garbage (400) is known once the token ends.
        self._method_refused = False

    def renew(self, request: ForwardRequest) -> ForwardRequestParser:
        """The parser for the next head on this connection, after *request*
        (which this parser returned): this one, emptied, when llhttp ended
        the message with the head (no body, and a keep-alive request, so it
        is waiting for a new request line), else a new one. A head is only
        ever fed up to its empty line, so llhttp never saw a byte past it."""
        if request.framing.kind != NO_BODY or not request.keep_alive or not self._complete:
            return ForwardRequestParser(self._buffer.max_bytes)
        self._buffer.clear()
        self._url = b""
        self._headers = []
        self._complete = False
        return self

    def feed(self, data: bytes) -> ForwardRequest | None:
        """Consume *data*; return the request once its head is complete."""
        cut = self._buffer.feed(data)
        if self._method_refused:
            self._judge_method(self._buffer.pending)
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
        except httptools.HttpParserUpgrade:
            pass  # Upgrade with Connection: upgrade; refused in _judge
        except httptools.HttpParserInvalidMethodError:
            self._method_refused = True  # judged by feed() once the method has ended
        except httptools.HttpParserError as exc:
            message = str(exc) or "malformed request head"
            if message.startswith("Invalid HTTP version"):
                raise VersionNotSupportedError(f"{message}: only HTTP/1.1 and HTTP/1.0") from None
            raise MalformedRequestError(message) from None

    def _parse(self, head: bytes, trailing: bytes) -> ForwardRequest:
        parser = self._parser
        if not self._complete:
            raise MalformedRequestError("malformed request head")
        version = parser.get_http_version()
        if version not in _VERSIONS:
            raise VersionNotSupportedError(f"HTTP/{version} not supported: only HTTP/1.1 and HTTP/1.0")
        method = parser.get_method()
        # RFC 9112 §3: single spaces. llhttp takes runs of them, and a parser
        # behind us splitting on whitespace might then read another target.
        if head[: head.find(b"\r\n")] != b"%s %s HTTP/%s" % (method, self._url, version.encode()):
            raise MalformedRequestError("malformed request line")
        return self._judge(method, version, trailing)

    def _judge(self, method: bytes, version: str, trailing: bytes) -> ForwardRequest:
        headers, url = self._headers, self._url
        names = names_of(headers)
        if method == b"CONNECT":
            raise MalformedRequestError("CONNECT reached the forwarding parser")
        if method == b"TRACE":
            raise TraceRefusedError("TRACE is not forwarded")
        if values(headers, b"upgrade", names):
            # RFC 6455 §4.1: WebSocket clients behind a proxy use CONNECT.
            raise UnsupportedRequestError("Upgrade is not forwarded: WebSocket clients use CONNECT through a proxy")
        try:
            options = connection_options(headers, names)
            if version == "1.0" and values(headers, b"transfer-encoding", names):
                # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
                raise FramingError("Transfer-Encoding in an HTTP/1.0 request")
            framing = request_framing(headers, names)
        except FramingError as exc:
            raise MalformedRequestError(str(exc)) from None
        hosts = values(headers, b"host", names)
        if len(hosts) > 1:
            raise MalformedRequestError("more than one Host header")
        if not hosts and version == "1.1":
            raise MalformedRequestError("missing Host header (required in HTTP/1.1)")
        if url.startswith(b"/") or url == b"*":
            return ForwardRequest(method, "", "", 0, 0, url, version, headers, framing, options, trailing)
        host, port, family, path = parse_absolute(url)
        # The same bytes as the URI's authority name the same host and port:
        # only a Host spelled otherwise is parsed and compared (and an empty
        # port, which the URI grammar allows and the Host check refuses).
        if hosts and (hosts[0] != url[7 : len(url) - len(path)] or hosts[0].endswith(b":")):
            check_host(hosts[0], host, port)
        if not path:
            # RFC 9112 §3.2.4: OPTIONS for the server as a whole is sent as "*".
            path = b"*" if method == b"OPTIONS" else b"/"
        elif not path.startswith(b"/"):
            path = b"/" + path
        return ForwardRequest(method, "http", host, port, family, path, version, headers, framing, options, trailing)


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
