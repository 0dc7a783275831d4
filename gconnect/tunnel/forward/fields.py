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
from collections.abc import Callable, Sequence

#: RFC 9112 §6.3: how the body of a message ends.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
#: Responses only: the body ends when the connection does.
UNTIL_CLOSE = 3

#: The largest Content-Length taken (2**62: no 64-bit arithmetic near overflow,
#: far beyond any real body).
MAX_CONTENT_LENGTH = 1 << 62

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
#: Not sent on from a request either: re-made from what we parsed (Host from
#: the URI, RFC 9112 §3.2.2; Max-Forwards decremented, RFC 9110 §7.6.2).
REQUEST_DROPS = HOP_BY_HOP | {b"host", b"max-forwards"}


FieldList = list[tuple[bytes, bytes]]


class FramingError(ValueError):
    """The header section frames its body ambiguously; the message says how."""


@dataclasses.dataclass(slots=True, unsafe_hash=True)
class Framing:
    """How a body is delimited: ``kind`` (NO_BODY, LENGTH, CHUNKED,
    UNTIL_CLOSE) and, for LENGTH, ``length`` in bytes. Never changed once
    made (:data:`EMPTY` is shared, and the hash is of the fields); not frozen,
    since a frozen dataclass is made through object.__setattr__, at twice the
    cost, for every message."""

    kind: int
    length: int = 0

    @property
    def has_body(self) -> bool:
        return self.kind != NO_BODY and not (self.kind == LENGTH and self.length == 0)


EMPTY = Framing(NO_BODY)
CHUNKED_BODY = Framing(CHUNKED)
UNTIL_CLOSE_BODY = Framing(UNTIL_CLOSE)


def show(raw: bytes) -> str:
    """Printable, bounded form of peer-supplied bytes for a one-line message."""
    text = raw[:80].decode("ascii", "backslashreplace")
    text = "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in text)
    return repr(text + ("..." if len(raw) > 80 else ""))


def values(headers: list[tuple[bytes, bytes]], lname: bytes, lnames: Sequence[bytes] | None = None) -> list[bytes]:
    """Every value of field *lname* (lower-case), in order. *lnames*, when
    given, is the names of *headers* lower-cased, in the same order
    (:func:`read_fields`): no name is lowered again, and a field not among
    them is not looked for."""
    if lnames is None:
        return [value for name, value in headers if name.lower() == lname]
    count = lnames.count(lname)
    if count < 2:
        return [headers[lnames.index(lname)][1]] if count else []
    return [value for (_, value), name in zip(headers, lnames, strict=True) if name == lname]


def read_fields(head: bytes, line_end: int, drop: frozenset[bytes]) -> tuple[FieldList, list[bytes], FieldList]:
    """The fields of a complete *head* that llhttp accepted (*line_end*: where
    its first line's CRLF is): ``(name, value)`` pairs (values without their
    OWS), their names lower-cased, and the pairs whose name is not in *drop*
    (what is sent on, but for Connection options), all in order.

    The head is split here rather than field by field in llhttp's callbacks:
    llhttp has refused every line that is not ``token ":" OWS value OWS``
    (obs-fold, a bare CR or LF, whitespace before the colon, control bytes),
    so a split at each CRLF and at the first colon reads what it read, in one
    pass that leaves every later question a search in C."""
    fields: FieldList = []
    lnames: list[bytes] = []
    kept: FieldList = []
    if line_end + 4 < len(head):
        for line in head[line_end + 2 : -4].split(b"\r\n"):
            name, _, value = line.partition(b":")
            field = (name, value.strip(b" \t"))
            fields.append(field)
            lname = name.lower()
            lnames.append(lname)
            if lname not in drop:
                kept.append(field)
    return fields, lnames, kept


def list_items(items: list[bytes]) -> list[bytes]:
    """The elements of a comma-separated list field, lower-cased, empty ones
    dropped (RFC 9110 §5.6.1)."""
    return [part.strip(b" \t").lower() for value in items for part in value.split(b",") if part.strip(b" \t")]


def connection_options(headers: list[tuple[bytes, bytes]], lnames: Sequence[bytes] | None = None) -> frozenset[bytes]:
    """The lower-cased names the Connection fields list; FramingError for one
    that is not a token (a name with a space or a colon in it cannot be a field
    name, and guessing what was meant is how two parsers come to disagree)."""
    options = list_items(values(headers, b"connection", lnames))
    for option in options:
        if not _TOKEN.fullmatch(option):
            raise FramingError(f"invalid Connection option {show(option)}")
    return frozenset(options)


def _body_fields(headers: list[tuple[bytes, bytes]], lnames: Sequence[bytes] | None) -> tuple[bool, int | None]:
    """Whether Transfer-Encoding is present (it must say ``chunked`` and
    nothing else), and the Content-Length (None: absent); FramingError for
    either faulty, and for both together."""
    if lnames is None:
        lnames = [name.lower() for name, _ in headers]
    chunked = b"transfer-encoding" in lnames
    if chunked:
        found = values(headers, b"transfer-encoding", lnames)
        # RFC 9112 §6.1: chunked is applied once and last; anything else leaves the
        # length to the connection's end, which for a request is no length at all.
        # Other codings before it are refused too (as Go's net/http and h11 do):
        # nobody sends them, and each is one more way for two parsers to disagree.
        if len(found) > 1 or found[0].lower() != b"chunked":
            raise FramingError(f"Transfer-Encoding {show(b', '.join(found))} is not plain chunked")
    count = lnames.count(b"content-length")
    if not count:
        return chunked, None
    if count > 1:
        # RFC 9112 §6.3 lets identical values through; identical or not, a
        # second field says a sender's framing is not to be trusted.
        raise FramingError("more than one Content-Length field")
    value = headers[lnames.index(b"content-length")][1]
    # (bytes.isdigit: ASCII digits only, and at least one.)
    length = int(value) if value.isdigit() and len(value) <= 19 else -1
    if not 0 <= length <= MAX_CONTENT_LENGTH:
        raise FramingError(f"invalid Content-Length {show(value)}")
    if chunked:
        raise FramingError("Transfer-Encoding together with Content-Length")
    return chunked, length


def request_framing(headers: list[tuple[bytes, bytes]], lnames: Sequence[bytes] | None = None) -> Framing:
    """RFC 9112 §6.3 for a request; FramingError where it would be a guess."""
    chunked, length = _body_fields(headers, lnames)
    if chunked:
        return CHUNKED_BODY
    if length:
        return Framing(LENGTH, length)
    return EMPTY


def response_framing(
    headers: list[tuple[bytes, bytes]], status: int, head_request: bool, lnames: Sequence[bytes] | None = None
) -> Framing:
    """RFC 9112 §6.3 for a response to a request (HEAD or not)."""
    chunked, length = _body_fields(headers, lnames)
    if head_request or status < 200 or status == 204 or status == 304:
        return EMPTY
    if chunked:
        return CHUNKED_BODY
    if length is not None:
        return Framing(LENGTH, length) if length else EMPTY
    return UNTIL_CLOSE_BODY


def end_to_end(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes], lnames: Sequence[bytes] = ()
) -> list[tuple[bytes, bytes]]:
    """*headers* without the fields named in *drop* (lower-case: the
    hop-by-hop fields, those the Connection options name, and those the
    caller re-makes). *lnames*: as for :func:`values`."""
    if not lnames:
        return [(name, value) for name, value in headers if name.lower() not in drop]
    if drop.isdisjoint(lnames):
        return headers
    return [field for field, name in zip(headers, lnames, strict=True) if name not in drop]


#: Where a head ends. llhttp refuses bare LF and a CR inside a line, so the
#: first CRLF CRLF is the end of any head it accepts.
HEAD_END = b"\r\n\r\n"
_CR_LF = (13, 10)


def whole_head(data: bytes, max_bytes: int) -> int:
    """The length of the head *data* starts with, when *data* holds all of it
    and a :class:`HeadBuffer` would pass it as it stands (no empty lines
    before it, no bare LF, within *max_bytes*); 0 otherwise, and then a
    HeadBuffer is to take it. The usual case, a head in one read, at the cost
    of three searches in C."""
    end = data.find(HEAD_END)
    if (
        end > 0
        and end + 4 <= max_bytes
        and data[0] not in _CR_LF
        and data.count(b"\n", 0, end) == data.count(b"\r\n", 0, end)
    ):
        return end + 4
    return 0


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
