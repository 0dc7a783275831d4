"""DATA on one HTTP/2 connection, both ways, framed and parsed beside h2.

:mod:`gconnect.tunnel.h2.frames` says why the session frames and parses DATA
itself. :class:`DataPath` is where that meets h2's state machine: before the
session frames DATA toward the client, h2 makes the checks it makes of any
DATA frame (on an empty one, not needed on the wire) and its send windows are
kept in step; the client's DATA is held to our receive windows
(:class:`~gconnect.tunnel.h2.flow.InboundWindows`), which its streams give
back as their targets take it.

A forwarded request's body is the one kind of DATA h2 also sees (it checks it
against the content-length): for it h2's own receive windows are given back
too, and the WINDOW_UPDATEs h2 would queue for them dropped, as ours are sent.
h2's receive windows start at the largest there is (the session's SETTINGS),
so they never refuse what ours allow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import h2.exceptions

from .flow import InboundWindows
from .frames import DataFramer, FrameReader, data_frames

if TYPE_CHECKING:
    import h2.connection

    from ...config import Config

#: RFC 9113 §6.9.1: a flow-control window is at most 2**31 - 1 octets.
MAX_WINDOW_BYTES = 2**31 - 1


class DataPath:
    """The DATA of one connection (see the module docstring). *send* encrypts and
    sends octets; *flush* sends what h2 has queued."""

    def __init__(
        self,
        conn: h2.connection.H2Connection,
        config: Config,
        send: Callable[[bytes | memoryview], None],
        flush: Callable[[], None],
    ) -> None:
        self.h2 = conn
        self._send = send
        self._flush = flush
        self.reader = FrameReader(conn.max_inbound_frame_size)
        # A stream's window is ours to give, the connection's that times the
        # streams, so streams whose targets stall never hold the others back.
        window = min(MAX_WINDOW_BYTES, config.h2_window_bytes * config.h2_max_streams)
        self.windows = InboundWindows(config.h2_window_bytes, window)
        self.framer = DataFramer(config.chunk_bytes)

    # --- toward the client --------------------------------------------------------------

    def send_data(self, stream_id: int, data: memoryview) -> None:
        """*data* as DATA frames (the caller kept to the window), sent at once."""
        self._sending(stream_id, len(data))
        self._send(b"".join(data_frames(stream_id, data, self.h2.max_outbound_frame_size)))

    def read_slots(self, room: int) -> list[memoryview]:
        """Where a stream relay reads up to *room* octets of its target (see send_read)."""
        return self.framer.slots(room, self.h2.max_outbound_frame_size)

    def send_read(self, stream_id: int, length: int) -> None:
        """The *length* octets just read into read_slots() as DATA frames (the caller
        kept to the window), sent at once."""
        self._sending(stream_id, length)
        self._send(self.framer.frames(stream_id, length))

    def _sending(self, stream_id: int, length: int) -> None:
        conn = self.h2
        if length > conn.local_flow_control_window(stream_id):
            raise h2.exceptions.FlowControlError(f"{length} octets past stream {stream_id}'s send window")
        self._flush()
        conn.send_data(stream_id, b"")
        conn.data_to_send()
        conn.outbound_flow_control_window -= length
        conn.streams[stream_id].outbound_flow_control_window -= length

    # --- from the client ----------------------------------------------------------------

    def give_back(self, stream_id: int, flow_length: int, *, forwarded: bool) -> None:
        """*flow_length* octets of *stream_id* were taken: WINDOW_UPDATE as due."""
        if forwarded:
            self._h2_window(stream_id, flow_length)
        frames = self.windows.give_back(stream_id, flow_length)
        if frames:
            self._send(frames)

    def forget(self, stream_id: int, *, forwarded: bool) -> bytes:
        """The stream ended: what it held returns to the connection's window (the
        frames to send, if any)."""
        held = self.windows.held(stream_id)
        if forwarded and held:
            self._h2_window(0, held)
        return self.windows.forget(stream_id)

    def _h2_window(self, stream_id: int, flow_length: int) -> None:
        self._flush()
        try:
            if stream_id:
                self.h2.acknowledge_received_data(flow_length, stream_id)
            else:
                self.h2.increment_flow_control_window(flow_length)
        except h2.exceptions.StreamClosedError:
            self.h2.increment_flow_control_window(flow_length)
        self.h2.clear_outbound_data_buffer()
