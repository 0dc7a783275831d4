"""Sans-I/O: the receive windows an HTTP/2 client's DATA is held to (RFC 9113 §6.9).

The session parses DATA itself (:mod:`gconnect.tunnel.h2.frames`) and h2 sees
none of its octets, so the windows we give the client are kept here: every
DATA frame's flow-controlled length comes off its stream's window and the
connection's (more is a FLOW_CONTROL_ERROR), and comes back only as the stream
hands it on (its target took it), as WINDOW_UPDATE frames once half a stream
window has gathered. So what a stream holds for a target that does not read is
bounded by its window, and the client can never send more than that.
"""

from __future__ import annotations

from .frames import FLOW_CONTROL_ERROR, FrameError, window_update


class InboundWindows:
    """The connection's receive window and each open stream's.

    *stream_bytes* is our SETTINGS_INITIAL_WINDOW_SIZE; *connection_bytes* the
    connection's window once our first WINDOW_UPDATE raised it.
    """

    def __init__(self, stream_bytes: int, connection_bytes: int) -> None:
        self.stream_bytes = stream_bytes
        #: Octets given back but not yet sent as WINDOW_UPDATE, at which an update goes out:
        #: half a stream window, for the connection too (with every stream's window
        #: used up, a larger threshold could leave one stream waiting for credit never sent).
        self.threshold = max(1, stream_bytes // 2)
        self.connection_left = connection_bytes
        self.connection_due = 0
        #: stream id -> [window left, octets given back not yet sent]
        self.streams: dict[int, list[int]] = {}

    def take(self, stream_id: int, length: int) -> None:
        """A DATA frame (or run) of *length* flow-controlled octets on *stream_id*
        (0: on a stream that is gone, so the connection's window only)."""
        if length > self.connection_left:
            raise FrameError(FLOW_CONTROL_ERROR, f"DATA past the connection's window ({self.connection_left})")
        if stream_id:
            window = self.streams.get(stream_id)
            if window is None:
                window = self.streams[stream_id] = [self.stream_bytes, 0]
            if length > window[0]:
                raise FrameError(FLOW_CONTROL_ERROR, f"DATA past stream {stream_id}'s window ({window[0]})")
            window[0] -= length
        self.connection_left -= length

    def give_back(self, stream_id: int, length: int) -> bytes:
        """*length* octets of *stream_id* were handed on (0: octets of a stream that
        is gone, taken with ``take(0, ...)``): the WINDOW_UPDATE frames now due.
        A stream already forgotten gave its octets back then; nothing happens."""
        window = self.streams.get(stream_id) if stream_id else None
        if window is None and stream_id:
            return b""
        out = b""
        if window is not None:
            window[1] += length
            if window[1] >= self.threshold:
                out = window_update(stream_id, window[1])
                window[0] += window[1]
                window[1] = 0
        return out + self._connection(length)

    def held(self, stream_id: int) -> int:
        """Octets *stream_id* took and has not given back."""
        window = self.streams.get(stream_id)
        return self.stream_bytes - window[0] - window[1] if window is not None else 0

    def forget(self, stream_id: int) -> bytes:
        """The stream ended: what it took and did not give back returns to the connection."""
        held = self.held(stream_id)
        self.streams.pop(stream_id, None)
        return self._connection(held) if held else b""

    def _connection(self, length: int) -> bytes:
        self.connection_due += length
        if self.connection_due < self.threshold:
            return b""
        due, self.connection_due = self.connection_due, 0
        self.connection_left += due
        return window_update(0, due)
