"""The origin's response head, sans I/O, as strictly as the request's.

llhttp's response parser tokenises the head (refusing bare LF, obs-fold,
whitespace before a colon, control bytes); the framing is judged by
:mod:`.fields`. Any fault is a :class:`~gconnect.errors.BadResponseError`:
the client gets a 502 and the connection is never reused.
"""

from __future__ import annotations

import dataclasses
import re

import httptools

from gconnect.errors import BadResponseError
from gconnect.tunnel.head import HeadFields

from .fields import (
    EMPTY,
    UNTIL_CLOSE,
    Framing,
    FramingError,
    HeadBuffer,
    connection_options,
    names_of,
    response_framing,
    show,
    values,
)

_VERSIONS = ("1.1", "1.0")
#: RFC 9112 §4, with the reason's SP optional as most clients allow.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-9][0-9][0-9](?: [\t \x21-\x7e\x80-\xff]*)?")


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

    @property
    def interim(self) -> bool:
        """A 1xx: another head follows."""
        return self.status < 200

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        return self.version == "1.1" and b"close" not in self.options and self.framing.kind != UNTIL_CLOSE


class ResponseParser(HeadFields):
    """Incremental parser for one response head to a request (*head_request*:
    the request was HEAD, so no body follows whatever the fields say)."""

    __slots__ = ("_buffer", "_head_request", "_parser", "_reason")

    def __init__(self, max_header_bytes: int, head_request: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._buffer = HeadBuffer(max_header_bytes, self._tokenize, _too_large, BadResponseError)
        self._head_request = head_request
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._complete = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def feed(self, data: bytes) -> ResponseHead | None:
        """Consume *data*; return the head once it is complete."""
        cut = self._buffer.feed(data)
        if cut is None:
            return None
        head = self._parse(*cut)
        # llhttp holds our callbacks and the buffer our _tokenize: two cycles
        # the garbage collector would free, for every response. The head is done.
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
        parser = self._parser
        version = parser.get_http_version()
        if not self._complete or version not in _VERSIONS:
            raise BadResponseError(f"malformed response head (HTTP/{version})")
        status = parser.get_status_code()
        headers = self._headers
        line = head[: head.find(b"\r\n")]
        if not _STATUS_LINE.fullmatch(line) or line[5:8] != version.encode() or int(line[9:12]) != status:
            raise BadResponseError(f"malformed status line {show(line)}")
        if status == 101 or status < 100:
            raise BadResponseError(f"status {status} was not asked for")
        try:
            names = names_of(headers)
            if version == "1.0" and values(headers, b"transfer-encoding", names):
                raise FramingError("Transfer-Encoding in an HTTP/1.0 response")
            framing = response_framing(headers, status, self._head_request, names)
            options = connection_options(headers, names)
        except FramingError as exc:
            raise BadResponseError(f"response framing: {exc}") from None
        return ResponseHead(status, self._reason, version, headers, framing, options, trailing)


def _too_large(message: str) -> BadResponseError:
    return BadResponseError(f"response {message}")
