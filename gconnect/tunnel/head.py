"""The CONNECT request grammar, sans I/O.

Bytes go in, a :class:`ConnectRequest` or a :class:`~gconnect.errors.ClientError`
comes out; nothing here touches a socket. The HTTP/1.1 head is tokenised by
llhttp (through httptools), which is strict where RFC 9112 is strict (bare LF,
obs-fold, NUL and other control bytes, whitespace before the colon,
Content-Length together with Transfer-Encoding are all errors) and about ten
times faster than h11 on a CONNECT head (2 µs against 23 µs, measured with
timeit). What llhttp leaves to the application is checked here: the method,
the version, the authority-form target and the Host header.
"""

from __future__ import annotations

import re
from socket import AF_INET, AF_INET6
from typing import NamedTuple

import httptools

from ..config import hostport
from ..errors import (
    ClientError,
    GConnectError,
    HeadTooLargeError,
    MalformedRequestError,
    MethodNotAllowedError,
    VersionNotSupportedError,
)
from .names import DOTTED_QUAD, LABEL, MAX_NAME_CHARS, NUMERIC_LABEL, HostNameError, canonical_address
from .names import parse_host as parse_host_text

#: The one success response. RFC 9110 §9.3.6: a 2xx to CONNECT has no content
#: and no Content-Length or Transfer-Encoding.
RESPONSE_200 = b"HTTP/1.1 200 Connection established\r\n\r\n"

_VERSIONS = ("1.1", "1.0")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PORT = re.compile(rb"^[0-9]{1,5}$")
# The common targets, matched whole by one expression each before the general
# path (which gives the precise error): a dotted quad without leading zeros
# (RFC 3986 dec-octet) and a lower-case name, each with a port.
_DEC_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_FAST_V4 = re.compile(rb"(" + rb"\.".join([_DEC_OCTET] * 4) + rb"):([0-9]{1,5})")
_FAST_NAME = re.compile(rb"(" + LABEL.encode() + rb"(?:\." + LABEL.encode() + rb")*):([0-9]{1,5})")


class ConnectRequest(NamedTuple):
    """A CONNECT request head that passed the grammar checks. (A named tuple:
    one is made per client, and a tuple costs a fraction of a class with an ``__init__``.)"""

    #: Lower-case name, or an IP address in its canonical text form.
    host: str
    port: int
    #: AF_INET or AF_INET6 when the target is an IP literal (such targets never
    #: touch DNS), 0 for a name.
    family: int
    #: "1.1" or "1.0".
    version: str
    #: Every header as received, names not folded, in order.
    headers: list[tuple[bytes, bytes]]
    #: Bytes that arrived after the head; they belong to the tunnel.
    trailing: bytes = b""

    @property
    def target(self) -> str:
        """``host:port`` with brackets around an IPv6 address."""
        return hostport(self.host, self.port)

    def header(self, name: bytes) -> bytes | None:
        """The last value of header *name* (case-insensitive), or None."""
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == name:
                found = value
        return found


def parse_port(text: bytes) -> int:
    """RFC 3986 port, restricted to 1-65535 in plain digits.

    No sign, no hex, no wrap-around: ``+443``, ``0x1bb`` and ``65979`` are errors.
    """
    if not _PORT.match(text):
        raise MalformedRequestError(f"invalid port {show(text)} (1-65535 in digits)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise MalformedRequestError(f"port {port} out of range 1-65535")
    return port


def parse_host(text: str) -> tuple[str, int]:
    """Validate a reg-name or IPv4 literal (no brackets); return it normalised
    with its family (AF_INET, or 0 for a name). The grammar is names.py's."""
    try:
        return parse_host_text(text)
    except HostNameError as exc:
        raise MalformedRequestError(str(exc)) from None


#: How many targets :func:`parse_authority` remembers (then it forgets them all and starts again).
#: Clients ask for the same few host:port over and over; 1,024 short entries are ~200 KiB at most.
REMEMBERED_AUTHORITIES = 1024
_authorities: dict[bytes, tuple[str, int, int]] = {}


def parse_authority(target: bytes) -> tuple[str, int, int]:
    """Split an authority-form request-target into ``(host, port, family)``.

    RFC 9110 §9.3.6: the target of CONNECT is ``uri-host ":" port`` and the
    port is mandatory, since there is no default port for a tunnel.
    A target that passed before is answered from memory (the checks cost more
    than the rest of a head's parse); one that failed is checked every time.
    """
    if type(target) is not bytes:
        return _parse_authority(target)
    known = _authorities.get(target)
    if known is not None:
        return known
    parsed = _parse_authority(target)
    if len(_authorities) >= REMEMBERED_AUTHORITIES:
        _authorities.clear()
    _authorities[target] = parsed
    return parsed


def _parse_authority(target: bytes) -> tuple[str, int, int]:
    fast = _FAST_V4.fullmatch(target)
    if fast is not None:
        port = int(fast[2])
        if 1 <= port <= 65535:
            return fast[1].decode("ascii"), port, AF_INET
    else:
        fast = _FAST_NAME.fullmatch(target)
        if fast is not None and len(fast[1]) <= MAX_NAME_CHARS:
            host = fast[1].decode("ascii")
            port = int(fast[2])
            if (
                1 <= port <= 65535
                and not NUMERIC_LABEL.fullmatch(host.rpartition(".")[2])
                and not DOTTED_QUAD.fullmatch(host)
            ):
                return host, port, 0
    if b"/" in target or b"@" in target or b"?" in target or b"#" in target:
        raise MalformedRequestError(f"request-target {show(target)} is not authority-form host:port")
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedRequestError("request-target is not ASCII (send IDNs as xn-- labels)") from None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise MalformedRequestError(f"invalid request-target {text!r}: expected [v6]:port")
        port = parse_port(target[close + 2 :])
        literal = text[1:close]
        if "%" in literal:
            raise MalformedRequestError("IPv6 zone identifiers are not accepted")
        # The canonical spelling (RFC 5952), so policy and logs see one form.
        canonical = canonical_address(literal) if ":" in literal else None
        if canonical is None:
            raise MalformedRequestError(f"invalid IPv6 address {literal!r}")
        return canonical, port, AF_INET6
    host_text, colon, port_text = text.rpartition(":")
    if not colon:
        raise MalformedRequestError(f"request-target {text!r} has no port (RFC 9110 §9.3.6)")
    if ":" in host_text:
        raise MalformedRequestError(f"invalid request-target {text!r}: IPv6 needs brackets")
    port = parse_port(port_text.encode())
    host, family = parse_host(host_text)
    return host, port, family


def check_host_header(value: bytes, target: bytes, host: str, port: int) -> None:
    """MalformedRequestError unless the Host header *value* names the request's
    target (*host*, *port*; *target* as the request wrote it)."""
    # RFC 9112 §3.2: Host is mandatory in HTTP/1.1; the tunnel target always comes
    # from the request-target, so a Host naming anything else is an attempt to
    # make two parsers disagree.
    if value == target:
        return  # the usual case: Host repeats the request-target byte for byte
    if parse_host_header(value, port) != (host, port):
        raise MalformedRequestError(f"Host header {show(value)} does not match the CONNECT target")


def parse_host_header(value: bytes, default_port: int) -> tuple[str, int]:
    """The (host, port) a Host header *value* names, *default_port* when it
    names none; MalformedRequestError if it is not ``uri-host [":" port]``."""
    try:
        if value.startswith(b"["):
            if not value.endswith(b"]"):
                return parse_authority(value)[:2]
            return parse_authority(value + b":%d" % default_port)[:2]
        if b":" in value:
            return parse_authority(value)[:2]
        return parse_host(value.decode("ascii"))[0], default_port
    except (ClientError, UnicodeDecodeError):
        raise MalformedRequestError(f"invalid Host header {show(value)}") from None


class HeadFields:
    """The httptools callbacks that collect a head: its target (``_url``), its
    fields (``_headers``) and whether it is complete (``_complete``). A parser
    built on it sets those three before it feeds llhttp."""

    __slots__ = ("_complete", "_headers", "_url")
    # httptools looks up every callback when a parser is made; one it does not
    # find costs a raised and swallowed AttributeError, per client. None here
    # says "not wanted" without one.
    on_message_begin = on_body = on_message_complete = on_chunk_header = on_chunk_complete = None
    _url: bytes
    _headers: list[tuple[bytes, bytes]]
    _complete: bool

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # RFC 9110 §5.5: OWS around a value is not part of it; llhttp strips only the leading side.
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self._complete = True


class RequestParser(HeadFields):
    """Incremental parser for one CONNECT request head.

    Feed it bytes as they arrive; :meth:`feed` returns None until the head is
    complete, then the :class:`ConnectRequest`. Errors raise a ClientError whose
    ``status`` is the response to send. One parser serves one request.
    """

    __slots__ = (
        "_line_ended", "_line_start", "_max", "_method_refused", "_parser", "_size",
    )  # fmt: skip

    def __init__(self, max_header_bytes: int) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._max = max_header_bytes
        self._size = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._complete = False
        # The request line, kept until its LF. llhttp may refuse an unknown
        # method at its first byte; whether it was a token (405) or garbage (400)
        # is only known once the token ends, whichever way the bytes were split.
        # And llhttp reads a line with no version at all as HTTP/0.9: only the
        # line itself tells that from a written "HTTP/0.9".
        self._line_start = bytearray()
        self._line_ended = False
        self._method_refused = False

    def feed(self, data: bytes) -> ConnectRequest | None:
        """Consume *data*; return the request once its head is complete."""
        if self._method_refused:
            self._judge_method(data)
            return None
        if not self._line_ended:
            # RFC 9112 §2.2: empty lines before the request line are skipped.
            kept = data if self._line_start else data.lstrip(b"\r\n")
            self._line_start += kept
            # find(), not ``in``: bytes' ``in`` tries the operand as an integer first (a raised and cleared TypeError).
            self._line_ended = kept.find(b"\n") >= 0
        trailing = b""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops at the end of a CONNECT head: the rest is tunnel data.
            offset = upgrade.args[0]
            trailing = data[offset:]
            self._size += offset
        except httptools.HttpParserInvalidMethodError:
            self._method_refused = True
            self._judge_method(b"")
            return None
        except httptools.HttpParserError as exc:
            method = self._parser.get_method()
            if method != b"CONNECT":
                # The method is known by now, and any method but CONNECT is a 405,
                # whatever else is wrong (GET host:443 is not authority-form for GET).
                raise MethodNotAllowedError(f"method {show(method)} not allowed: only CONNECT") from None
            message = str(exc) or "malformed request head"
            # llhttp says "Invalid HTTP version" for a well-formed but unknown
            # version; "Expected CRLF after version" and the like are syntax (400).
            if message.startswith("Invalid HTTP version"):
                raise VersionNotSupportedError(f"{message}: only HTTP/1.1 and HTTP/1.0") from None
            raise MalformedRequestError(message) from None
        else:
            self._size += len(data)
        if self._size > self._max:
            raise HeadTooLargeError(f"request head exceeds {self._max} bytes")
        if not self._complete:
            return None
        request = self._finish(trailing)
        # llhttp's parser holds our callbacks and we hold it: a cycle that only
        # the garbage collector would free, for every client. The head is done.
        del self._parser
        return request

    def _judge_method(self, data: bytes) -> None:
        # llhttp refuses methods it does not know. A well-formed token is still a
        # method, only not ours (RFC 9110 §15.5.6); anything else is garbage.
        self._line_start += data
        method, space, _ = self._line_start.lstrip(b"\r\n").partition(b" ")
        if method and not _TOKEN.fullmatch(method):
            raise MalformedRequestError("malformed request line")
        if space:
            if not method:
                raise MalformedRequestError("malformed request line")
            raise MethodNotAllowedError(f"method {show(bytes(method))} not allowed: only CONNECT")
        if len(self._line_start) > self._max:
            raise HeadTooLargeError(f"request head exceeds {self._max} bytes")

    def _finish(self, trailing: bytes) -> ConnectRequest:
        parser = self._parser
        method = parser.get_method()
        if method != b"CONNECT":
            raise MethodNotAllowedError(f"method {show(method)} not allowed: only CONNECT")
        version = parser.get_http_version()
        if version == "0.9" and b" HTTP/" not in self._line_start.partition(b"\n")[0]:
            # RFC 9112 §3: request-line = method SP request-target SP HTTP-version;
            # without one it is malformed, not a version we do not support.
            raise MalformedRequestError("no HTTP version in the request line (expected HTTP/1.1)")
        if version not in _VERSIONS:
            raise VersionNotSupportedError(f"HTTP/{version} not supported: only HTTP/1.1 and HTTP/1.0")
        host, port, family = parse_authority(self._url)
        hosts = []
        for name, value in self._headers:
            lname = name.lower()
            if lname == b"host":
                hosts.append(value)
            elif lname == b"transfer-encoding" or (lname == b"content-length" and value != b"0"):
                # RFC 9110 §9.3.6: a CONNECT request has no content. Guessing at a
                # body's framing is how request smuggling starts.
                raise MalformedRequestError(f"CONNECT request must not have a body ({show(name)})")
        if len(hosts) > 1:
            raise MalformedRequestError("more than one Host header")
        if hosts:
            check_host_header(hosts[0], self._url, host, port)
        elif version == "1.1":
            raise MalformedRequestError("missing Host header (required in HTTP/1.1)")
        return ConnectRequest(host, port, family, version, self._headers, trailing)


def show(raw: bytes) -> str:
    """Printable, bounded form of client-supplied bytes for a one-line message."""
    text = raw[:80].decode("ascii", "backslashreplace")
    text = "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in text)
    return repr(text + ("..." if len(raw) > 80 else ""))


#: Longest ``details`` parameter sent in a Proxy-Status member: the message is
#: in the body too; a header line stays well under servers' 8 KiB line limits.
MAX_PROXY_STATUS_DETAILS_CHARS = 256


def proxy_status(exc: GConnectError) -> str:
    """The Proxy-Status field value (RFC 9209) for a refusal: a parent's members
    first, then ``gconnect; error=TYPE; details="..."``."""
    message = str(exc)[:MAX_PROXY_STATUS_DETAILS_CHARS]
    # RFC 8941 §3.3.3 sf-string: printable ASCII, with " and \ escaped.
    details = "".join(ch if " " <= ch <= "~" else "?" for ch in message).replace("\\", "\\\\").replace('"', '\\"')
    ours = f'gconnect; error={exc.proxy_status}; details="{details}"'
    return f"{exc.parent_proxy_status}, {ours}" if exc.parent_proxy_status else ours


def render_error(status: int, phrase: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An error response: one line of ``text/plain`` and ``Connection: close``."""
    line = message.replace("\r", " ").replace("\n", " ")
    body = (line + "\n").encode("utf-8", "backslashreplace")
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        f"{extra}\r\n"
    )
    return head.encode("latin-1") + body
