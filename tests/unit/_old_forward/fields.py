"""What a header section says about its message: body framing and connection
options, checked strictly. Sans I/O; shared by requests and responses.

llhttp has already refused what it refuses (bare LF, obs-fold, whitespace
before the colon, control bytes, Content-Length with Transfer-Encoding);
everything framing depends on is judged again here from the fields
themselves, so the framing we act on never rests on a parser's leniency.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Set

#: RFC 9112 §6.3: how the body of a message ends.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
#: Responses only: the body ends when the connection does.
UNTIL_CLOSE = 3

#: The largest Content-Length taken (2**62: no 64-bit arithmetic near overflow,
#: far beyond any real body).
MAX_CONTENT_LENGTH = 1 << 62

_DIGITS = re.compile(rb"[0-9]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: RFC 9110 §7.6.1: removed whether or not Connection names them, besides
#: Connection itself and what it names. Transfer-Encoding and Content-Length are
#: re-made from the framing we parsed; Proxy-Authorization is ours (§11.7.2);
#: Trailer announces trailers we do not pass on (a re-chunked body drops them).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)


class FramingError(ValueError):
    """The header section frames its body ambiguously; the message says how."""


@dataclasses.dataclass(frozen=True, slots=True)
class Framing:
    """How a body is delimited: ``kind`` (NO_BODY, LENGTH, CHUNKED,
    UNTIL_CLOSE) and, for LENGTH, ``length`` in bytes."""

    kind: int
    length: int = 0

    @property
    def has_body(self) -> bool:
        return self.kind != NO_BODY and not (self.kind == LENGTH and self.length == 0)


EMPTY = Framing(NO_BODY)


def show(raw: bytes) -> str:
    """Printable, bounded form of peer-supplied bytes for a one-line message."""
    text = raw[:80].decode("ascii", "backslashreplace")
    text = "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in text)
    return repr(text + ("..." if len(raw) > 80 else ""))


def values(headers: list[tuple[bytes, bytes]], lname: bytes, names: Set[bytes] | None = None) -> list[bytes]:
    """Every value of field *lname* (lower-case), in order. *names*, when
    given, is every name in *headers*, lower-cased (:func:`names_of`): a field
    not among them is not looked for."""
    if names is not None and lname not in names:
        return []
    return [value for name, value in headers if name.lower() == lname]


def names_of(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-cased names in *headers*, for :func:`values`: made once per
    head, so each field asked after is one set lookup, not a scan."""
    return {name.lower() for name, _ in headers}


def list_items(items: list[bytes]) -> list[bytes]:
    """The elements of a comma-separated list field, lower-cased, empty ones
    dropped (RFC 9110 §5.6.1)."""
    return [part.strip(b" \t").lower() for value in items for part in value.split(b",") if part.strip(b" \t")]


def connection_options(headers: list[tuple[bytes, bytes]], names: Set[bytes] | None = None) -> frozenset[bytes]:
    """The lower-cased names the Connection fields list; FramingError for one
    that is not a token (a name with a space or a colon in it cannot be a field
    name, and guessing what was meant is how two parsers come to disagree)."""
    options = list_items(values(headers, b"connection", names))
    for option in options:
        if not _TOKEN.fullmatch(option):
            raise FramingError(f"invalid Connection option {show(option)}")
    return frozenset(options)


def _content_length(headers: list[tuple[bytes, bytes]], names: Set[bytes] | None) -> int | None:
    found = values(headers, b"content-length", names)
    if not found:
        return None
    if len(found) > 1:
        # RFC 9112 §6.3 lets identical values through; identical or not, a
        # second field says a sender's framing is not to be trusted.
        raise FramingError("more than one Content-Length field")
    value = found[0]
    if not _DIGITS.fullmatch(value) or len(value) > 19 or int(value) > MAX_CONTENT_LENGTH:
        raise FramingError(f"invalid Content-Length {show(value)}")
    return int(value)


def _chunked(headers: list[tuple[bytes, bytes]], error: Callable[[str], Exception], names: Set[bytes] | None) -> bool:
    """Whether Transfer-Encoding is present; it must say ``chunked`` and nothing else."""
    found = values(headers, b"transfer-encoding", names)
    if not found:
        return False
    # RFC 9112 §6.1: chunked is applied once and last; anything else leaves the
    # length to the connection's end, which for a request is no length at all.
    # Other codings before it are refused too (as Go's net/http and h11 do):
    # nobody sends them, and each is one more way for two parsers to disagree.
    if len(found) > 1 or found[0].lower() != b"chunked":
        raise error(f"Transfer-Encoding {show(b', '.join(found))} is not plain chunked")
    return True


def request_framing(headers: list[tuple[bytes, bytes]], names: Set[bytes] | None = None) -> Framing:
    """RFC 9112 §6.3 for a request; FramingError where it would be a guess."""
    chunked = _chunked(headers, FramingError, names)
    length = _content_length(headers, names)
    if chunked and length is not None:
        raise FramingError("Transfer-Encoding together with Content-Length")
    if chunked:
        return Framing(CHUNKED)
    if length:
        return Framing(LENGTH, length)
    return EMPTY


def response_framing(
    headers: list[tuple[bytes, bytes]], status: int, head_request: bool, names: Set[bytes] | None = None
) -> Framing:
    """RFC 9112 §6.3 for a response to a request (HEAD or not)."""
    chunked = _chunked(headers, FramingError, names)
    length = _content_length(headers, names)
    if chunked and length is not None:
        raise FramingError("Transfer-Encoding together with Content-Length")
    if head_request or status < 200 or status in (204, 304):
        return EMPTY
    if chunked:
        return Framing(CHUNKED)
    if length is not None:
        return Framing(LENGTH, length) if length else EMPTY
    return Framing(UNTIL_CLOSE)


def end_to_end(headers: list[tuple[bytes, bytes]], options: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """*headers* without the hop-by-hop fields and those the Connection
    *options* name. An option naming a field we generate ourselves (Host,
    framing, Via) changes nothing: those are re-made from what we parsed."""
    drop = HOP_BY_HOP | options if options else HOP_BY_HOP
    return [(name, value) for name, value in headers if name.lower() not in drop]


#: Where a head ends. llhttp refuses bare LF and a CR inside a line, so the
#: first CRLF CRLF is the end of any head it accepts.
HEAD_END = b"\r\n\r\n"
_CR_LF = (13, 10)


class HeadBuffer:
    """Collects bytes until a head's empty line: :meth:`feed` returns
    ``(head, rest)`` once it has one, None before. Each new byte of the head
    goes to *tokenize* as it arrives (llhttp, which so refuses garbage at its
    first byte rather than when a head that never ends hits a limit).
    *too_large* and *malformed* (functions of a message) make the exceptions
    raised past *max_bytes* and for a bare LF."""

    __slots__ = ("_buffer", "_fed", "_malformed", "_tokenize", "_too_large", "max_bytes", "skip_empty_lines")

    def __init__(
        self,
        max_bytes: int,
        tokenize: Callable[[bytes], None],
        too_large: Callable[[str], Exception],
        malformed: Callable[[str], Exception],
        skip_empty_lines: bool = False,
    ) -> None:
        self._buffer = b""
        #: Bytes of the buffer given to tokenize so far.
        self._fed = 0
        self._tokenize = tokenize
        self.max_bytes = max_bytes
        self._too_large = too_large
        self._malformed = malformed
        #: RFC 9112 §2.2: a server ignores empty lines before a request-line.
        self.skip_empty_lines = skip_empty_lines

    def clear(self) -> None:
        """Empty, for the next head."""
        self._buffer = b""
        self._fed = 0

    @property
    def pending(self) -> bytes:
        """The bytes collected so far."""
        return self._buffer

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        if self._buffer:
            start = max(0, len(self._buffer) - 3)
            buffer = self._buffer = self._buffer + data
        else:
            start = 0
            buffer = self._buffer = data
        if self.skip_empty_lines and buffer.startswith(b"\r\n"):
            # Without this, the first CRLF CRLF could be two empty lines.
            buffer = self._buffer = buffer.lstrip(b"\r\n")
            start = 0
        end = buffer.find(HEAD_END, start)
        stop = len(buffer) if end < 0 else end
        # A bare LF is an LF without its CR: more LFs than CRLFs (counted from one byte
        # earlier, for a CRLF split across feeds). Two counts in C, not a regex at every byte.
        if buffer.count(b"\n", start, stop) != buffer.count(b"\r\n", max(start - 1, 0), stop):
            # Refused at once: a head with bare LFs may never have a CRLF CRLF to wait for.
            raise self._malformed("bare LF in the head (RFC 9112 §2.2)")
        upto = len(buffer) if end < 0 else end + len(HEAD_END)
        if upto > self._fed and (buffer[0] not in _CR_LF or buffer.lstrip(b"\r\n")):
            # (Never only CR and LF: those may yet be empty lines to strip.)
            self._tokenize(buffer if upto == len(buffer) and not self._fed else buffer[self._fed : upto])
            self._fed = upto
        if end < 0:
            if len(buffer) > self.max_bytes:
                raise self._too_large(f"head exceeds {self.max_bytes} bytes")
            return None
        if upto > self.max_bytes:
            raise self._too_large(f"head exceeds {self.max_bytes} bytes")
        return buffer[:upto], buffer[upto:]
