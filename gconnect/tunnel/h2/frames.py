"""Sans-I/O: the DATA frames an HTTP/2 session reads and writes itself, beside h2.

The ``h2`` package is the protocol's state machine, and it builds and parses
every frame in Python; for a DATA frame it also formats the whole payload as
hex for a trace log that is off. On a bulk stream that per-frame work was most
of the proxy's CPU, so DATA, the only frame that carries a tunnel's bytes, is
framed and parsed here:

* :func:`data_frames` frames a stream's bytes (the 9-octet header of RFC 9113
  §4.1 and §6.1) once h2 has sent the first frame of the batch and so checked
  the stream's state.
* :class:`FrameReader` splits what the client sends into whole frames: each
  run of DATA frames on one stream becomes one :class:`DataRun` (its payloads,
  their flow-controlled length, END_STREAM), every other frame is handed on
  as bytes for h2. For a run, h2 is given an empty DATA frame with the run's
  END_STREAM flag (:meth:`DataRun.h2_frame`), so it still makes every stream
  state check and event it would; the receive windows are then ours
  (:class:`~gconnect.tunnel.h2.flow.InboundWindows`), as h2 sees no octets.

Nothing here touches a socket.
"""

from __future__ import annotations

import struct

#: RFC 9113 §4.1: a 24-bit length, the type, the flags, a reserved bit and a 31-bit stream id.
_HEADER = struct.Struct(">HBBBL")
HEADER_BYTES = 9
#: RFC 9113 §3.4: what a client sends before its first frame.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: RFC 9113 §6: frame types and flags used here.
DATA = 0x0
WINDOW_UPDATE = 0x8
END_STREAM = 0x1
PADDED = 0x8
_STREAM_ID_MASK = 0x7FFF_FFFF
#: RFC 9113 §7: the error codes these frames can end a connection with.
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6


class FrameError(Exception):
    """A connection error (RFC 9113 §5.4.1): ``code`` is the GOAWAY's error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    """The 9 octets in front of a frame's payload."""
    return _HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def data_frames(stream_id: int, data: memoryview, max_frame_bytes: int) -> list[bytes | memoryview]:
    """*data* as DATA frames of at most *max_frame_bytes* each (without END_STREAM):
    headers and payload slices in order, to be joined once."""
    full = frame_header(max_frame_bytes, DATA, 0, stream_id)
    parts: list[bytes | memoryview] = []
    for at in range(0, len(data), max_frame_bytes):
        chunk = data[at : at + max_frame_bytes]
        parts.append(full if len(chunk) == max_frame_bytes else frame_header(len(chunk), DATA, 0, stream_id))
        parts.append(chunk)
    return parts


class DataFramer:
    """A buffer laid out as DATA frames, reused: a stream's bytes are read straight
    into its payload slots (:meth:`slots`, for one scatter read), and
    :meth:`frames` writes the headers around what came, so they are sent as they
    lie. Holds *payload_bytes* at most; what :meth:`frames` returns is valid until
    the next :meth:`slots`."""

    def __init__(self, payload_bytes: int) -> None:
        self.payload_bytes = payload_bytes
        self._frame_bytes = 0
        self._buffer = bytearray()
        self._view = memoryview(self._buffer)
        self._slots: list[memoryview] = []

    def slots(self, room: int, max_frame_bytes: int) -> list[memoryview]:
        """Where up to *room* octets go, in frames of at most *max_frame_bytes*."""
        size = min(max_frame_bytes, self.payload_bytes)
        if size != self._frame_bytes:
            count = -(-self.payload_bytes // size)
            step = HEADER_BYTES + size
            self._frame_bytes = size
            self._buffer = bytearray(count * step)
            self._view = view = memoryview(self._buffer)
            self._slots = [view[at + HEADER_BYTES : at + step] for at in range(0, len(view), step)]
        full, last = divmod(min(room, self.payload_bytes), size)
        slots = self._slots[:full]
        if last:
            slots.append(self._slots[full][:last])
        return slots

    def frames(self, stream_id: int, length: int) -> memoryview:
        """The frames carrying the *length* octets read into the slots."""
        size = self._frame_bytes
        step = HEADER_BYTES + size
        full, last = divmod(length, size)
        pack = _HEADER.pack_into
        buffer = self._buffer
        for at in range(0, full * step, step):
            pack(buffer, at, size >> 8, size & 0xFF, DATA, 0, stream_id)
        end = full * step
        if last:
            pack(buffer, end, last >> 8, last & 0xFF, DATA, 0, stream_id)
            end += HEADER_BYTES + last
        return self._view[:end]


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame (RFC 9113 §6.9) for *stream_id* (0: the connection)."""
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big")


class DataRun:
    """Consecutive DATA frames on one stream: their payloads, flow-controlled
    length (padding included, RFC 9113 §6.9.1) and whether the last one ended the stream."""

    __slots__ = ("end_stream", "flow_length", "parts", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.parts: list[memoryview] = []
        self.flow_length = 0
        self.end_stream = False

    def frames(self) -> bytes:
        """The run as DATA frames again, one a payload (without padding), END_STREAM on the last."""
        last = len(self.parts) - 1
        out: list[bytes | memoryview] = []
        for i, part in enumerate(self.parts):
            flags = END_STREAM if i == last and self.end_stream else 0
            out += (frame_header(len(part), DATA, flags, self.stream_id), part)
        return b"".join(out)

    def h2_frame(self) -> bytes:
        """What h2 is given in the run's place: an empty DATA frame with its END_STREAM."""
        return frame_header(0, DATA, END_STREAM if self.end_stream else 0, self.stream_id)


class FrameReader:
    """Splits the client's octets into whole frames (see the module docstring).

    :meth:`feed` returns, in order, ``bytes`` to hand to h2 (the preface and
    every frame but DATA) and :class:`DataRun` objects; a frame not yet whole
    waits for the next call. Raises :class:`FrameError` for a frame longer than
    *max_frame_bytes* (our SETTINGS_MAX_FRAME_SIZE, RFC 9113 §4.2), as soon as
    its header is read, and for a DATA frame whose padding is not shorter than
    its payload (§6.1).
    """

    def __init__(self, max_frame_bytes: int, *, preface: bool = True) -> None:
        self.max_frame_bytes = max_frame_bytes
        #: A server reads the client's preface first (a client reader has none to read).
        self._preface_left = len(PREFACE) if preface else 0
        self._rest = b""

    def feed(self, data: bytes | memoryview) -> list[bytes | memoryview | DataRun]:
        """The frames *data* completes (see the class docstring). What is returned
        may be slices of *data*; what waits for the next call is a copy."""
        items: list[bytes | memoryview | DataRun] = []
        at = 0
        if self._preface_left:
            at = min(self._preface_left, len(data))
            self._preface_left -= at
            items.append(data[:at])  # h2 checks it
        run = None
        if self._rest:
            # Only the frame the last read left unfinished is copied, not this whole read.
            length = self._frame_length(self._rest + data[:HEADER_BYTES])
            if length is None or len(self._rest) + len(data) < HEADER_BYTES + length:
                self._rest += data
                return items
            at = HEADER_BYTES + length - len(self._rest)
            first, self._rest = self._rest + data[:at], b""
            run = self._split(first, 0, items, None)[1]
        at, _ = self._split(data, at, items, run)
        self._rest = bytes(data[at:])
        return items

    def _frame_length(self, header: bytes) -> int | None:
        if len(header) < HEADER_BYTES:
            return None
        high, low = header[0] << 16, header[1] << 8 | header[2]
        length = high | low
        if length > self.max_frame_bytes:
            raise FrameError(FRAME_SIZE_ERROR, f"a frame of {length} octets (at most {self.max_frame_bytes})")
        return length

    def _split(
        self, data: bytes | memoryview, at: int, items: list[bytes | memoryview | DataRun], run: DataRun | None
    ) -> tuple[int, DataRun | None]:
        """The whole frames of *data* from *at* into *items* (continuing *run*);
        returns where the first unfinished frame starts, and the run then open."""
        view = memoryview(data)
        size = len(data)
        others = at  # the start of frames for h2 not yet handed on
        while size - at >= HEADER_BYTES:
            high, low, kind, flags, stream_id = _HEADER.unpack_from(data, at)
            length = high << 8 | low
            if length > self.max_frame_bytes:
                raise FrameError(FRAME_SIZE_ERROR, f"a frame of {length} octets (at most {self.max_frame_bytes})")
            end = at + HEADER_BYTES + length
            if end > size:
                break
            if kind != DATA:
                at = end
                run = None
                continue
            if others < at:
                items.append(data[others:at])
            stream_id &= _STREAM_ID_MASK
            start = at + HEADER_BYTES
            stop = end
            if flags & PADDED:
                pad = data[start] if length else length  # no pad-length octet: malformed
                if pad >= length:
                    raise FrameError(PROTOCOL_ERROR, "DATA padding not shorter than the frame (RFC 9113 §6.1)")
                start += 1
                stop -= pad
            if run is None or run.stream_id != stream_id or run.end_stream:
                run = DataRun(stream_id)
                items.append(run)
            run.parts.append(view[start:stop])
            run.flow_length += length
            run.end_stream = bool(flags & END_STREAM)
            at = others = end
        if others < at:
            items.append(data[others:at])
        return at, run
