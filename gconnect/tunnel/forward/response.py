"""The origin's response head, sans I/O, as strictly as the request's.

llhttp's response parser tokenises the head (refusing bare LF, obs-fold,
whitespace before a colon, control bytes); the head it accepted is split here
(:func:`~.fields.read_fields`) and the framing judged by :mod:`.fields`. Any
fault is a :class:`~gconnect.errors.BadResponseError`: the client gets a 502
and the connection is never reused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import httptools

from ...errors import BadResponseError
from .fields import (
    EMPTY,
    HOP_BY_HOP,
    UNTIL_CLOSE,
    FieldList,
    Framing,
    FramingError,
    HeadBuffer,
    connection_options,
    read_fields,
    response_framing,
    show,
    whole_head,
)

_VERSION_OF = {b"1.1": "1.1", b"1.0": "1.0"}
_NO_OPTIONS: frozenset[bytes] = frozenset()
#: RFC 9112 §4, with the reason's SP optional as most clients allow.
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([1-9][0-9][0-9])(?: ([\t \x21-\x7e\x80-\xff]*))?\r\n")


@dataclasses.dataclass(slots=True)
class ResponseHead:
    """A response head that passed the checks."""

    status: int
    reason: bytes
    #: "1.1" or "1.0".
    version: str
    headers: list[tuple[bytes, bytes]]
    framing: Framing = EMPTY
    options: frozenset[bytes] = frozenset()
    #: Bytes after the head: the body's start (or, after a 1xx, the next head).
    trailing: bytes = b""
    #: The names of *headers* lower-cased, in order.
    lnames: Sequence[bytes] = ()
    #: The fields to send on, but for those the Connection options name (None: not sorted out yet).
    kept: FieldList | None = None

    @property
    def interim(self) -> bool:
        """A 1xx: another head follows."""
        return self.status < 200

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        return self.version == "1.1" and b"close" not in self.options and self.framing.kind != UNTIL_CLOSE


class ResponseParser:
    """Incremental parser for one response head to a request (*head_request*:
    the request was HEAD, so no body follows whatever the fields say)."""

    __slots__ = ("_buffer", "_complete", "_head_request", "_max_bytes", "_parser")
    # As for the request parser: only the end of the head is wanted from llhttp.
    on_message_begin = on_status = on_header = on_body = on_message_complete = None
    on_chunk_header = on_chunk_complete = None

    def __init__(self, max_header_bytes: int, head_request: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_bytes = max_header_bytes
        #: The head's bytes so far, once it has come in more than one piece.
        self._buffer: HeadBuffer | None = None
        self._head_request = head_request
        self._complete = False

    def on_headers_complete(self) -> None:
        self._complete = True

    def feed(self, data: bytes) -> ResponseHead | None:
        """Consume *data*; return the head once it is complete."""
        buffer = self._buffer
        if buffer is None:
            upto = whole_head(data, self._max_bytes)
            if upto:
                self._tokenize(data if upto == len(data) else data[:upto])
                head = self._parse(data[:upto], data[upto:])
                # llhttp holds our callback: a cycle the garbage collector
                # would have to free, for every response. The head is done.
                del self._parser
                return head
            buffer = self._buffer = HeadBuffer(self._max_bytes, self._tokenize, _too_large, BadResponseError)
        cut = buffer.feed(data)
        if cut is None:
            return None
        head = self._parse(*cut)
        # As above, and the buffer holds our _tokenize.
        del self._parser, self._buffer
        return head

    def _tokenize(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise BadResponseError("the origin answered with an upgrade, which was not asked for") from None
        except httptools.HttpParserError as exc:
            raise BadResponseError(f"malformed response head: {exc or 'parse error'}") from None

    def _parse(self, head: bytes, trailing: bytes) -> ResponseHead:
        if not self._complete:
            raise BadResponseError(f"malformed response head (HTTP/{self._parser.get_http_version()})")
        line = _STATUS_LINE.match(head)
        if line is None or int(line[2]) != self._parser.get_status_code():
            first = head[: head.find(b"\r\n")]
            raise BadResponseError(f"malformed status line {show(first)}")
        version, status, reason = _VERSION_OF[line[1]], int(line[2]), line[3] or b""
        if status == 101:
            raise BadResponseError(f"status {status} was not asked for")
        headers, lnames, kept = read_fields(head, line.end() - 2, HOP_BY_HOP)
        try:
            if version == "1.0" and b"transfer-encoding" in lnames:
                raise FramingError("Transfer-Encoding in an HTTP/1.0 response")
            framing = response_framing(headers, status, self._head_request, lnames)
            options = connection_options(headers, lnames) if b"connection" in lnames else _NO_OPTIONS
        except FramingError as exc:
            raise BadResponseError(f"response framing: {exc}") from None
        return ResponseHead(status, reason, version, headers, framing, options, trailing, lnames, kept)


def _too_large(message: str) -> BadResponseError:
    return BadResponseError(f"response {message}")
