"""The HTTP/2 stream relay: one CONNECT stream's bytes, between its DATA frames and its target.

:class:`StreamRelay` moves the bytes: DATA frames from the client are written
to the target, and acknowledged to the client's flow control (WINDOW_UPDATE)
only as the target takes them; the target is read only while the stream's
send window and the connection's output buffer have room. Memory per stream is
bounded: at most ``h2_window_bytes`` waiting for the target; toward the client
nothing per stream (the connection's output buffer holds at most about two
``chunk_bytes``). Under a bandwidth limit (a throttle on a direction, from
:meth:`~gconnect.tunnel.shaping.Shaper.attach`) the target is read no faster
than the down buckets allow, its reader stopped on a timer meanwhile; and what
the target took is given back to the client's window only as the up buckets
allow, so the client waits, not the connection's reader, and the other streams
flow. The deadlines, end reasons and half-close are every relay's
(:class:`~gconnect.tunnel.deadlines.Deadlines`). :class:`StreamConnection` is
what a stream (its side and its relay) uses of its connection.

Ownership: the tunnel owns the outbound socket; the relay drives it from
libev callbacks once started and the session's greenlet feeds it DATA;
``on_done`` lets the tunnel close.
"""

from __future__ import annotations

import _socket
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..deadlines import Deadlines, RelayLimits
from ..movers import Direction
from ..relay import LINGER_ABORT, HangupWatch
from ..waiting import READ, WRITE, unsent

if TYPE_CHECKING:
    from ..dial import Connection
    from ..services import TunnelServices
    from ..shaping import Throttle

log = logging.getLogger(__name__)


class StreamConnection(Protocol):
    """What a stream uses of its HTTP/2 connection (:class:`~gconnect.tunnel.h2.session.H2Session`).

    Every method is called from the hub or a stream's greenlet and never
    waits: frames are queued and sent at once, the rest buffered."""

    #: The client, the services the connection started with, the hub's loop.
    address: tuple
    services: TunnelServices
    loop: Any
    #: The services in force now (a stream started after a SIGHUP gets the new policy).
    current: Callable[[], TunnelServices]
    #: True once the connection ended: streams write nothing more.
    closed: bool
    #: The client certificate the connection's handshake verified (None or empty: none).
    peer_certificate: dict[str, Any] | None

    def respond(self, stream_id: int, status: int, headers: tuple, *, end_stream: bool = False) -> bool:
        """HEADERS with *status*; False if the stream or the connection is gone."""

    def send_data(self, stream_id: int, data: memoryview) -> None:
        """*data* as DATA frames; the caller kept to the send window."""

    def read_slots(self, room: int) -> list[memoryview]:
        """Buffers for one scatter read of up to *room* octets (valid until the next call)."""

    def send_read(self, stream_id: int, length: int) -> None:
        """The *length* octets read into read_slots() as DATA frames; the caller kept to the send window."""

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM toward the client."""

    def end_with(self, stream_id: int, data: bytes) -> None:
        """*data* as the stream's last DATA (END_STREAM), if the stream is still there."""

    def send_window(self, stream_id: int) -> int:
        """Bytes the client lets us send on *stream_id* now."""

    def ack(self, stream_id: int, flow_length: int) -> None:
        """*flow_length* bytes of the stream were taken: WINDOW_UPDATE."""

    def congested(self) -> bool:
        """True while the connection's output buffer is at its high-water mark."""

    def forget(self, stream_id: int, status: int, end_reason: str, code: int | None = None) -> None:
        """The stream's tunnel closed: reset the stream unless it ended cleanly
        (with the error *code* if given, else one its status and reason imply)."""


class StreamRelay(Deadlines):
    """Both directions of one stream tunnel (see the module docstring)."""

    first_byte_at = 0.0
    #: Bytes delivered each way, once the relay has ended.
    bytes_up = 0
    bytes_down = 0
    _unacked = 0
    #: Under a limit: octets the target took, not yet given back to the client's window.
    _owed = 0

    def __init__(
        self,
        session: StreamConnection,
        stream_id: int,
        take_early: Callable[[], tuple[list[tuple[bytes, int]], bool]],
        outbound: Connection,
        limits: RelayLimits,
        hangups: HangupWatch | None,
        on_done: Callable[[StreamRelay], None],
    ) -> None:
        self.session = session
        self.stream_id = stream_id
        #: The DATA (and END_STREAM) that came before the relay, taken once at start.
        self.take_early = take_early
        self.sock = sock = outbound.sock
        # client -> target (``pending``: what the target has not taken yet) and
        # target -> client. The client's end is the stream, not a socket: the
        # session moves its bytes, so these are Directions, without a mover.
        self.up = Direction("client", "upstream", None)
        self.down = Direction("upstream", "client", sock)
        self.up.writer, outbound.writer = outbound.writer, None  # the relay owns it now
        self.limits = limits
        self.hangups = hangups
        self.on_done = on_done
        self.loop = session.loop

    def start(self) -> None:
        """Start reading the target; deliver the early DATA and END_STREAM."""
        self.start_clock()
        reader = self.down.reader = self.loop.io(self.sock.fileno(), READ)
        reader.start(self._on_readable)
        early, ended = self.take_early()
        for data, flow_length in early:
            self.deliver((data,), flow_length)
        if ended:
            self.client_ended()

    def abort(self, reason: str) -> None:
        """End the stream now (e.g. at shutdown)."""
        self.end(reason)

    # --- client -> upstream: called by the session for the stream's frames ----------

    def deliver(self, parts: Sequence[bytes | memoryview], flow_length: int) -> None:
        """DATA frames' payloads (as they lie in what was read): to the target in
        one gathering write, acknowledged as it is taken."""
        if self.end_reason:
            return
        self.touch()
        up = self.up
        if up.pending is not None:
            for part in parts:
                up.pending += part
            self._unacked += flow_length
            return
        size = sum(map(len, parts))
        try:
            sent = self.sock.sendmsg(parts) if size else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.end("upstream_reset")
            return
        up.nbytes += sent
        if sent == size:
            self._taken(flow_length)
            return
        self._taken(sent)
        up.pending = pending = unsent(parts, sent)
        self._unacked = flow_length - (size - len(pending))
        if up.writer is None:
            up.writer = self.loop.io(self.sock.fileno(), WRITE)
        up.writer.start(self._on_writable)

    def client_ended(self) -> None:
        """END_STREAM: once what is pending is delivered, half-close toward the target."""
        up = self.up
        up.eof = True
        if up.pending is None and not self.end_reason:
            self._finish_up()

    def client_reset(self) -> None:
        """RST_STREAM from the client: passed on to the target as a reset."""
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, LINGER_ABORT)
        except OSError:
            pass
        self.end("client_reset")

    def _on_writable(self) -> None:
        up = self.up
        try:
            sent = self.sock.send(up.pending)
        except BlockingIOError:
            return
        except OSError:
            self.end("upstream_reset")
            return
        try:
            self.touch()
            del up.pending[:sent]
            up.nbytes += sent
            acked = min(sent, self._unacked)
            if not up.pending:
                acked = self._unacked
                up.pending = None
                up.writer.stop()
            self._unacked -= acked
            self._taken(acked)
            if up.pending is None and up.eof:
                self._finish_up()
        except Exception:
            log.exception("h2 relay bug (stream %d, to upstream)", self.stream_id)
            self.end("error")

    def _taken(self, flow_length: int) -> None:
        """*flow_length* octets of DATA the target took: given back to the client's
        window now, or under a limit as the up buckets allow (:meth:`_owe`)."""
        if self.up.throttle is None:
            self.session.ack(self.stream_id, flow_length)
        else:
            self._owe(flow_length)

    def _owe(self, flow_length: int) -> None:
        """Under a limit: *flow_length* octets the target took, given back to the
        client's window only as the up buckets allow, so the client sends no
        faster than the limit while the connection's other streams flow."""
        self._owed += flow_length
        if self.up.throttle.timer is None:
            self._pay_back()

    def _pay_back(self) -> None:
        throttle = self.up.throttle
        throttle.cancel()
        if self.end_reason:
            return
        now = self.loop.now()
        owed = self._owed
        paid = 0
        while owed:
            allow = min(throttle.allowance(now), owed)
            if allow < min(throttle.need, owed):
                break
            throttle.take(allow)
            owed -= allow
            paid += allow
        self._owed = owed
        if paid:
            self.session.ack(self.stream_id, paid)
        if owed:
            throttle.after(throttle.wait_seconds(now), self._pay_back)

    def _finish_up(self) -> None:
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        self.up.done = True
        self.side_done("client")

    # --- upstream -> client -----------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            self._pump_down()
        except Exception:
            log.exception("h2 relay bug (stream %d, to client)", self.stream_id)
            self.end("error")

    def _pump_down(self) -> None:
        session = self.session
        down = self.down
        room = 0 if session.congested() else session.send_window(self.stream_id)
        throttle = down.throttle
        if throttle is not None and room > 0:
            room = self._allowance(throttle, room)
            if not room:
                return
        if room <= 0:
            # Back-pressure: the client has no window for us, or its socket is full.
            down.reader.stop()
            down.blocked = True
            hangups = self.hangups
            if hangups is not None and not down.hangup:
                down.hangup = True
                hangups.watch(self, down)
            return
        try:
            n = self.sock.recvmsg_into(session.read_slots(room))[0]
        except BlockingIOError:
            return
        except OSError:
            self.end("upstream_reset")
            return
        if not n:
            down.reader.stop()
            down.eof = down.done = True
            session.end_stream(self.stream_id)
            self.side_done("upstream")
            return
        down.nbytes += n
        if throttle is not None:
            throttle.take(n)
        self.touch()
        if not self.first_byte_at:
            self.first_byte_at = time.monotonic()
        session.send_read(self.stream_id, n)

    def _allowance(self, throttle: Throttle, room: int) -> int:
        """*room*, capped by what the down buckets allow; 0 (and the reader
        stopped until the buckets refill, on the throttle's timer) if too little."""
        now = self.loop.now()
        allow = throttle.allowance(now)
        if allow < throttle.need:
            throttle.pause(self.down, now)
            return 0
        return min(room, allow)

    def resume(self) -> None:
        """The client opened its window, or the connection's output drained."""
        down = self.down
        if down.blocked and not self.end_reason:
            down.blocked = False
            down.reader.start(self._on_readable)

    def hung_up(self, half: Direction, error: int) -> None:
        """The target reset (or sent its FIN) while we were not reading it (HangupWatch)."""
        if self.end_reason:
            return
        if error:
            self.end("upstream_reset")
        elif not half.peer_fin:
            half.peer_fin = True  # its bytes and then its EOF are still read when the window opens
            self.half_closed("upstream")

    # --- the end ------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        if not self.settle(reason):
            return
        for half in (self.up, self.down):
            for watcher in (half.reader, half.writer):
                if watcher is not None:
                    watcher.close()
            half.reader = half.writer = half.pending = None
        if self.down.hangup and self.hangups is not None:
            self.hangups.forget(self.down)
        self.bytes_up = self.up.nbytes
        self.bytes_down = self.down.nbytes
        try:
            self.on_done(self)
        except Exception:
            log.exception("h2 relay: closing stream %d failed", self.stream_id)
