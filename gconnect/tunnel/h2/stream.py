"""One CONNECT stream of an HTTP/2 connection: a client side of its own.

:class:`H2StreamSide` is the :class:`~gconnect.tunnel.client.ClientSide` of
a stream: its request comes from the stream's HEADERS
(:func:`~gconnect.tunnel.h2.head.parse_h2_connect`), its answer and its
refusal are HEADERS (with END_STREAM for a refusal), and closing it lets the
stream go (RST_STREAM when it did not end cleanly). Everything else is the
:class:`~gconnect.tunnel.tunnel.Tunnel`'s own steps, so a stream gets the
same authenticator and cache, policy, resolver, dialler, limits, metrics and
access log as any client.

:class:`StreamRelay` moves the bytes: DATA frames from the client are written
to the target, and acknowledged to the client's flow control (WINDOW_UPDATE)
only as the target takes them; the target is read only while the stream's
send window and the connection's output buffer have room. Memory per stream is
bounded: at most ``h2_window_bytes`` waiting for the target; toward the client
nothing per stream (the connection's output buffer holds at most about two
``chunk_bytes``). The deadlines, end reasons and half-close are every relay's
(:class:`~gconnect.tunnel.relay.Deadlines`).

Ownership: the tunnel owns the outbound socket; the relay drives it from
libev callbacks once started and the session's greenlet feeds it DATA;
``on_done`` lets the tunnel close.
"""

from __future__ import annotations

import _socket
import logging
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import GConnectError, StreamResetError
from ..deadlines import Deadlines, RelayLimits
from ..head import ConnectRequest
from ..movers import Direction
from ..relay import HangupWatch
from ..waiting import READ, WRITE, wait
from .head import parse_h2_connect

if TYPE_CHECKING:
    from ..dial import Connection
    from ..services import TunnelServices
    from ..tunnel import Tunnel

log = logging.getLogger(__name__)

_LINGER_ABORT = struct.pack("ii", 1, 0)


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
    #: A buffer of ``chunk_bytes`` (and a view of it) the streams read their targets into.
    scratch: bytearray
    view: memoryview

    def respond(self, stream_id: int, status: int, headers: tuple, *, end_stream: bool = False) -> bool:
        """HEADERS with *status*; False if the stream or the connection is gone."""

    def send_data(self, stream_id: int, data: memoryview) -> None:
        """*data* as DATA frames; the caller kept to the send window."""

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

    def forget(self, stream_id: int, status: int, end_reason: str) -> None:
        """The stream's tunnel closed: reset the stream unless it ended cleanly."""


class H2StreamSide:
    """One CONNECT stream, from its HEADERS to its end (a ClientSide)."""

    protocol = "h2"
    #: The tunnel serving the stream (set by the session that made both).
    tunnel: Tunnel
    relay: StreamRelay | None = None
    _client_ended = False
    #: The name check's read ahead: how many of ``early`` it has seen, its wake-up
    #: while it waits, and whether the client reset the stream meanwhile.
    _seen = 0
    _arrival: Any = None
    _reset = False

    def __init__(self, session: StreamConnection, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self.address = session.address
        #: DATA that came before the relay (RFC 9110 §9.3.6 early data): (bytes, flow-controlled length).
        self.early: list[tuple[bytes, int]] = []

    # --- the ClientSide contract ---------------------------------------------------------

    def admit(self) -> None:
        """The connection did the TLS: only make sure it is still there."""
        if self.session.closed:
            raise StreamResetError("the connection ended before the stream was served")

    def peer_certificate(self) -> dict[str, Any] | None:
        """The connection's certificate: the identity holds for every stream on it."""
        return self.session.peer_certificate

    def read_request(self) -> ConnectRequest:
        """The request the stream's HEADERS carry."""
        return parse_h2_connect(self.headers, max_header_bytes=self.tunnel.services.config.max_header_bytes)

    def established(self) -> None:
        """HEADERS :status 200: the stream is a tunnel from here on."""
        if not self.session.respond(self.stream_id, 200, ()):
            raise ConnectionError("the stream was reset before the 200")

    def refuse(self, exc: GConnectError) -> None:
        """Answer *exc*'s status and headers as HEADERS with END_STREAM."""
        if exc.answerable:
            self.session.respond(self.stream_id, exc.status, exc.headers, end_stream=True)

    def read_ahead(self, deadline: float) -> bytes | None:
        """The DATA that came since the last call; it stays in ``early`` for the relay."""
        loop = self.session.loop
        while True:
            if self._reset:
                raise ConnectionResetError(f"stream {self.stream_id} reset by the client")
            data = b"".join(chunk for chunk, _ in self.early[self._seen :])
            self._seen = len(self.early)
            if data or self._client_ended:
                return data
            arrival = self._arrival = loop.async_()
            try:
                if not wait(arrival, deadline - loop.now()):
                    return None
            finally:
                arrival.close()
                self._arrival = None

    def end_with(self, data: bytes) -> None:
        """*data* as the stream's last DATA."""
        self.session.end_with(self.stream_id, data)

    def start_relay(self, outbound: Connection, early: bytes, on_done: Callable[[Any], None]) -> StreamRelay:
        """Relay the stream to *outbound*; the DATA that came early goes first."""
        assert not early, "a stream's early bytes are its DATA, which the relay takes from the side"
        services = self.tunnel.services
        relay = self.relay = StreamRelay(self, outbound, services.relay_limits, services.hangups, on_done)
        relay.start()
        return relay

    def drain(self) -> None:
        """The connection drains (GOAWAY), not its streams."""

    def close(self, status: int, end_reason: str) -> None:
        """Let the stream go (RST_STREAM when it did not end cleanly)."""
        self.session.forget(self.stream_id, status, end_reason)

    # --- the stream's frames, from the session -------------------------------------------

    def deliver(self, data: bytes, flow_length: int) -> None:
        """A DATA payload from the client."""
        if self.relay is not None:
            self.relay.deliver(data, flow_length)
        else:
            self.early.append((data, flow_length))
            self._wake()

    def client_ended(self) -> None:
        """END_STREAM from the client."""
        if self.relay is not None:
            self.relay.client_ended()
        else:
            self._client_ended = True
            self._wake()

    def reset_before_relay(self) -> None:
        """RST_STREAM from the client before the relay: a waiting read_ahead ends."""
        self._reset = True
        self._wake()

    def _wake(self) -> None:
        if self._arrival is not None:
            self._arrival.send()  # read_ahead waits for it

    def resume(self) -> None:
        """The client opened its window, or the connection's output drained."""
        if self.relay is not None:
            self.relay.resume()

    def take_early(self) -> tuple[list[tuple[bytes, int]], bool]:
        """The early DATA and whether END_STREAM came too; the relay takes them once."""
        early, self.early = self.early, []
        return early, self._client_ended


class StreamRelay(Deadlines):
    """Both directions of one stream tunnel (see the module docstring)."""

    first_byte_at = 0.0
    #: Bytes delivered each way, once the relay has ended.
    bytes_up = 0
    bytes_down = 0
    _unacked = 0

    def __init__(
        self,
        side: H2StreamSide,
        outbound: Connection,
        limits: RelayLimits,
        hangups: HangupWatch | None,
        on_done: Callable[[StreamRelay], None],
    ) -> None:
        self.side = side
        self.session = session = side.session
        self.stream_id = side.stream_id
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
        early, ended = self.side.take_early()
        for data, flow_length in early:
            self.deliver(data, flow_length)
        if ended:
            self.client_ended()

    def abort(self, reason: str) -> None:
        """End the stream now (e.g. at shutdown)."""
        self.end(reason)

    # --- client -> upstream: called by the session for the stream's frames ----------

    def deliver(self, data: bytes, flow_length: int) -> None:
        """A DATA frame's payload: to the target, acknowledged as it is taken."""
        if self.end_reason:
            return
        self.touch()
        up = self.up
        if up.pending is not None:
            up.pending += data
            self._unacked += flow_length
            return
        try:
            sent = self.sock.send(data) if data else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self.end("upstream_reset")
            return
        up.nbytes += sent
        if sent == len(data):
            self.session.ack(self.stream_id, flow_length)
            return
        self.session.ack(self.stream_id, sent)
        up.pending = bytearray(memoryview(data)[sent:])
        self._unacked = flow_length - sent
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
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_ABORT)
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
            self.session.ack(self.stream_id, acked)
            if up.pending is None and up.eof:
                self._finish_up()
        except Exception:
            log.exception("h2 relay bug (stream %d, to upstream)", self.stream_id)
            self.end("error")

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
            n = self.sock.recv_into(session.scratch, min(room, len(session.scratch)))
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
        self.touch()
        if not self.first_byte_at:
            self.first_byte_at = time.monotonic()
        session.send_data(self.stream_id, session.view[:n])

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
