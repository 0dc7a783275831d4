"""A message body as a streaming state machine, sans I/O.

:class:`BodyReader` takes the bytes that follow a head as they arrive and
gives back what to send on and what belongs to the next message; it never
holds more of a body than one chunk-size line or trailer line. Content-Length
bodies pass through untouched. Chunked bodies are parsed strictly (RFC 9112
§7.1: hex size, no whitespace, CRLF and nothing else after the data) and sent
on re-framed, ``SIZE CRLF data CRLF`` with extensions and trailers dropped
(§7.1.1, §6.5.1 allow both), so what the next hop parses is framing we wrote,
never a peer's; for an HTTP/1.0 client the chunks are only unwrapped.
"""

from __future__ import annotations

import re

from .fields import CHUNKED, EMPTY, LENGTH, NO_BODY, UNTIL_CLOSE, Framing

#: Longest chunk-size line, extensions included (llhttp and h11 take any
#: length; nginx 4 KiB for a whole chunk header).
MAX_CHUNK_LINE_BYTES = 4096
#: Longest trailer section (the same as a head by default).
MAX_TRAILER_BYTES = 16 * 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*")
_FIELD_LINE = re.compile(
    _TOKEN + rb":[ \t]*(?:[\x21-\x7e\x80-\xff](?:[\t \x21-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?[ \t]*"
)
#: 16 hex digits could say 2**64; a chunk is bounded like a Content-Length.
MAX_CHUNK_BYTES = 1 << 62

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
LAST_CHUNK = b"0\r\n\r\n"


def whole_body(framing: Framing, data: bytes) -> tuple[bytes, bytes] | None:
    """``(body, rest)`` when *data*, the bytes after a head, hold all of an
    empty or Content-Length body (what a :class:`BodyReader` would give for
    them, and then be done); None otherwise: a BodyReader takes it. Most
    small responses arrive whole with their head, and need no reader."""
    kind = framing.kind
    if kind == LENGTH:
        length = framing.length
        return (data[:length], data[length:]) if len(data) >= length else None
    return (b"", data) if kind == NO_BODY else None


class BodyError(ValueError):
    """The body does not keep to its framing; the message says where."""


class BodyReader:
    """One body of *framing*. ``rechunk``: send chunked bodies on chunked
    (False: unwrapped, for an HTTP/1.0 client, whose body then ends with the
    connection). ``done`` once the body is complete."""

    __slots__ = ("_line", "_remaining", "_state", "_trailer_bytes", "done", "framing", "received", "rechunk")

    def __init__(self, framing: Framing, rechunk: bool = True) -> None:
        self.framing = framing
        self.rechunk = rechunk
        #: Body bytes received, framing included.
        self.received = 0
        self._line = b""
        self._trailer_bytes = 0
        self._remaining = framing.length
        if framing.kind == NO_BODY or (framing.kind == LENGTH and not framing.length):
            self._state = _DONE
        elif framing.kind == CHUNKED:
            self._state = _SIZE
        else:
            self._state = _DATA
        #: The body is complete (kept as a flag, not a property: it is asked several times a message).
        self.done = self._state == _DONE

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """``(to send on, rest)``: *rest* is what follows the body's end (empty until done)."""
        if self._state == _DONE:
            return b"", data
        kind = self.framing.kind
        if kind == UNTIL_CLOSE:
            self.received += len(data)
            return data, b""
        if kind == LENGTH:
            take = data[: self._remaining]
            self._remaining -= len(take)
            self.received += len(take)
            if not self._remaining:
                self._state, self.done = _DONE, True
                return take, data[len(take) :]
            return take, b""
        out: list[bytes] = []
        rest = self._chunked(data, out)
        self.received += len(data) - len(rest)
        return b"".join(out), rest

    def eof(self) -> None:
        """The sender closed; BodyError unless that ends the body."""
        if self._state == _DONE:
            return
        if self.framing.kind == UNTIL_CLOSE:
            self._state, self.done = _DONE, True
            return
        raise BodyError("the connection closed before the end of the body")

    def _chunked(self, data: bytes, out: list[bytes]) -> bytes:
        view = data
        while view:
            state = self._state
            if state == _DATA:
                take = view[: self._remaining]
                self._remaining -= len(take)
                out.append(take)
                view = view[len(take) :]
                if not self._remaining:
                    self._state = _DATA_END
            elif state == _DATA_END:
                need = 2 - len(self._line)
                self._line += view[:need]
                view = view[need:]
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise BodyError("chunk data not followed by CRLF")
                    self._line = b""
                    self._state = _SIZE
                    if self.rechunk:
                        out.append(b"\r\n")
            elif state == _DONE:
                return view
            else:
                view = self._line_state(view, out)
        return b""

    def _line_state(self, view: bytes, out: list[bytes]) -> bytes:
        """A chunk-size or trailer line: whole, or kept until its CRLF arrives."""
        pending = self._line
        if pending.endswith(b"\r") and view.startswith(b"\n"):
            line, rest = pending[:-1], view[1:]
        else:
            end = view.find(b"\r\n")
            if end < 0:
                self._line = pending + view
                limit = MAX_CHUNK_LINE_BYTES if self._state == _SIZE else MAX_TRAILER_BYTES
                if len(self._line) > limit:
                    raise BodyError("chunk-size or trailer line too long")
                return b""
            line, rest = pending + view[:end], view[end + 2 :]
        self._line = b""
        if self._state == _SIZE:
            self._size_line(line, out)
        else:
            self._trailer_line(line, out)
        return rest

    def _size_line(self, line: bytes, out: list[bytes]) -> None:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise BodyError(f"invalid chunk-size line {line[:40]!r}")
        size = int(match[1], 16)
        if size > MAX_CHUNK_BYTES:
            raise BodyError("chunk size out of range")
        if size:
            self._remaining = size
            self._state = _DATA
            if self.rechunk:
                out.append(b"%x\r\n" % size)
        else:
            self._state = _TRAILER

    def _trailer_line(self, line: bytes, out: list[bytes]) -> None:
        if not line:
            self._state, self.done = _DONE, True
            if self.rechunk:
                out.append(LAST_CHUNK)
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise BodyError("trailer section too long")
        if not _FIELD_LINE.fullmatch(line):
            raise BodyError(f"invalid trailer line {line[:40]!r}")


#: The reader of a message without a body: done from the start, so nothing
#: ever changes it (:meth:`~BodyReader.feed` and :meth:`~BodyReader.eof`
#: return at once), and one serves every bodyless request.
NO_BODY_READER = BodyReader(EMPTY)
