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
from typing import TYPE_CHECKING, Any

import h2.events
import h2.exceptions

from .buffers import framer
from .flow import InboundWindows
from .forward import H2ForwardStream
from .frames import DataRun, FrameReader, data_frames

if TYPE_CHECKING:
    import h2.connection

    from ...config import Config
    from .stream import H2StreamSide

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
        #: The process's framer for this connection's --chunk-bytes (looked up once, not per read).
        self._framer = framer(config.chunk_bytes)
        #: Streams whose DATA h2 took last time, since when it was given nothing
        #: else: their next run goes straight to them (h2's answer would be the same).
        self._open_for_data: set[int] = set()

    # --- toward the client --------------------------------------------------------------

    def send_data(self, stream_id: int, data: memoryview) -> None:
        """*data* as DATA frames (the caller kept to the window), sent at once."""
        if self._sending(stream_id, len(data)):
            self._send(b"".join(data_frames(stream_id, data, self.h2.max_outbound_frame_size)))

    def read_slots(self, room: int) -> list[memoryview]:
        """Where a stream relay reads up to *room* octets of its target (see send_read).
        The slots are the process's: :meth:`send_read` must follow with nothing
        between that can switch greenlets (a read callback in the hub cannot)."""
        return self._framer.slots(room, self.h2.max_outbound_frame_size)

    def send_read(self, stream_id: int, length: int) -> None:
        """The *length* octets just read into read_slots() as DATA frames (the caller
        kept to the window), sent at once."""
        if self._sending(stream_id, length):
            self._send(self._framer.frames(stream_id, length))

    def _sending(self, stream_id: int, length: int) -> bool:
        """False if the client reset the stream (its side hears of it next)."""
        conn = self.h2
        self._flush()
        try:
            if length > conn.local_flow_control_window(stream_id):
                raise h2.exceptions.FlowControlError(f"{length} octets past stream {stream_id}'s send window")
            conn.send_data(stream_id, b"")
        except h2.exceptions.StreamClosedError:
            return False
        conn.data_to_send()
        conn.outbound_flow_control_window -= length
        conn.streams[stream_id].outbound_flow_control_window -= length
        return True

    # --- from the client ----------------------------------------------------------------

    def serve(
        self,
        streams: dict[int, H2StreamSide | H2ForwardStream],
        dispatch: Callable[[Any], None],
        ack: Callable[[int, int], None],
    ) -> None:
        """The session's open streams, what handles h2's events, and ``ack``."""
        self._streams = streams
        self._dispatch = dispatch
        self._ack = ack

    def receive(self, data: memoryview) -> None:
        """The client's plaintext: its frames to h2, its DATA to the streams."""
        for item in self.reader.feed(data):
            if not isinstance(item, DataRun):
                self._open_for_data.clear()  # what h2 is given may change any stream's state
                for event in self.h2.receive_data(item):
                    self._dispatch(event)
            elif item.stream_id in self._open_for_data and not item.end_stream:
                self.windows.take(item.stream_id, item.flow_length)
                self._streams[item.stream_id].deliver(item.parts, item.flow_length)
            else:
                self._receive_run(item)

    def _receive_run(self, run: DataRun) -> None:
        """A run of DATA frames on one stream (one write to its target): h2 sees an
        empty DATA frame, for the stream's state; a forwarded body, the frames."""
        stream_id = run.stream_id
        taken = False
        self._open_for_data.discard(stream_id)  # an END_STREAM, say, changes its answer
        forwarded = isinstance(self._streams.get(stream_id), H2ForwardStream)
        for event in self.h2.receive_data(run.frames() if forwarded else run.h2_frame()):
            if isinstance(event, h2.events.DataReceived):
                if taken:
                    continue  # the run's later frames: delivered with the first
                stream = self._streams.get(stream_id)
                self.windows.take(stream_id if stream is not None else 0, run.flow_length)
                taken = True
                if stream is None:
                    self._ack(0, run.flow_length)  # a stream we ended: give the window back
                    continue
                stream.deliver(run.parts, run.flow_length)
                if not (forwarded or run.end_stream):
                    # Until h2 is given anything else, its answer for this stream's DATA stays the same.
                    self._open_for_data.add(stream_id)
            else:
                self._dispatch(event)
        if not taken:  # a closed stream (h2 answered RST_STREAM): the connection's window still counts it
            self.windows.take(0, run.flow_length)
            self._ack(0, run.flow_length)

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
        self._open_for_data.discard(stream_id)
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
