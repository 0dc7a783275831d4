"""One CONNECT stream of an HTTP/2 connection: a tunnel of its own.

:class:`StreamTunnel` is a :class:`~gconnect.tunnel.tunnel.Tunnel` whose
request comes from the stream's HEADERS instead of a socket: ``authenticate``,
``check``, ``resolve``, ``dial`` and ``close`` are Tunnel's own, so a stream
gets the same authenticator and cache, policy, resolver, dialler, limits,
metrics and access log as any client; only the steps that touch the client
differ (``admit``: limits only, the connection did the TLS; ``read_head``:
:func:`~gconnect.tunnel.h2head.parse_h2_connect`; ``answer`` and ``refuse``:
HEADERS, with END_STREAM for a refusal; ``start_relay``). Its ``client`` is a
:class:`StreamEnd`, whose ``close()`` lets the stream go (RST_STREAM when it
did not end cleanly), as closing the socket does for a plain tunnel.

:class:`StreamRelay` moves the bytes: DATA frames from the client are written
to the target, and acknowledged to the client's flow control (WINDOW_UPDATE)
only as the target takes them; the target is read only while the stream's
send window and the connection's output buffer have room. Memory per stream is
bounded: at most ``h2_window_bytes`` waiting for the target; toward the client
nothing per stream (the connection's output buffer holds at most about two
``chunk_bytes``). The deadlines, end reasons and half-close are the plain
relay's (:class:`~gconnect.tunnel.relay.Deadlines`).

Ownership: the stream's handshake greenlet owns the upstream socket until
``start_relay``; then the relay drives it from libev callbacks and the
session's greenlet feeds it DATA; ``on_done`` calls ``close()``.
"""

from __future__ import annotations

import _socket
import logging
import struct
import time
from typing import TYPE_CHECKING, Any

from ..errors import StreamResetError
from .h2head import parse_h2_connect
from .head import ConnectRequest
from .limits import client_key
from .movers import Half
from .relay import Deadlines
from .tunnel import Tunnel
from .waiting import READ, WRITE

if TYPE_CHECKING:
    from .h2session import H2Session

log = logging.getLogger(__name__)

_LINGER_ABORT = struct.pack("ii", 1, 0)


class StreamEnd:
    """The client side of a stream tunnel, in the place of its socket."""

    __slots__ = ("tunnel",)

    def __init__(self, tunnel: StreamTunnel) -> None:
        self.tunnel = tunnel

    def close(self) -> None:
        self.tunnel.session.forget(self.tunnel)


class StreamTunnel(Tunnel):
    """One CONNECT stream, from its HEADERS to its end."""

    stream_id: int
    #: DATA that came before the 200 (RFC 9110 §9.3.6 early data): (bytes, flow-controlled length).
    early: list[tuple[bytes, int]]
    #: The client's END_STREAM came before the relay started.
    client_ended = False

    def __init__(self, session: H2Session, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self.early = []
        super().__init__(session.proxy, StreamEnd(self), session.tunnel.address)  # type: ignore[arg-type]

    def admit(self) -> None:
        """Count the stream as a client (503/429 past the limits)."""
        if self.session.closed:
            raise StreamResetError("the connection ended before the stream was served")
        who = client_key(self.address[0])
        self.proxy.limits.admit(who)
        self.who = who

    def peer_certificate(self) -> dict[str, Any] | None:
        # The connection's certificate: the identity holds for every stream on it.
        return self.session.tls.ssl.getpeercert()

    def read_head(self) -> ConnectRequest:
        """The request the stream's HEADERS carry."""
        request = parse_h2_connect(self.headers, max_header_bytes=self.proxy.config.max_header_bytes)
        self.target = request.target
        return request

    def answer(self) -> None:
        """HEADERS :status 200: the stream is a tunnel from here on."""
        if not self.session.respond(self.stream_id, 200, ()):
            raise ConnectionError("the stream was reset before the 200")
        self.status = 200
        self.proxy.stats.opened(time.monotonic() - self.started)
        if self.proxy.access_log is not None:
            self.proxy.access_log.opened(self)

    def refuse(self, exc: Any) -> None:
        """Answer *exc*'s status and headers as HEADERS with END_STREAM."""
        self.status = exc.status
        self.reason = exc.code
        if exc.answerable:
            self.session.respond(self.stream_id, exc.status, exc.headers, end_stream=True)

    def start_relay(self, early: bytes) -> None:
        """Hand the upstream socket to the stream relay; this greenlet ends here."""
        relay = self.relay = StreamRelay(self)  # type: ignore[assignment]
        relay.start()


class StreamRelay(Deadlines):
    """Both directions of one stream tunnel (see the module docstring)."""

    first_byte_at = 0.0
    _unacked = 0

    def __init__(self, tunnel: StreamTunnel) -> None:
        self.tunnel = tunnel
        self.session = session = tunnel.session
        self.stream_id: int = tunnel.stream_id
        upstream = tunnel.upstream
        assert upstream is not None
        self.sock = sock = upstream.sock
        #: client -> upstream (``pending``: what the target has not taken yet) and upstream -> client.
        self.up = Half("client", "upstream", None, sock, None)  # type: ignore[arg-type]
        self.down = Half("upstream", "client", sock, None, None)  # type: ignore[arg-type]
        self.up.writer, upstream.writer = upstream.writer, None  # the relay owns it now
        self.limits = session.proxy.relay_limits
        self._loop = session.loop

    def start(self) -> None:
        """Start reading the target; deliver the early DATA and END_STREAM."""
        loop = self._loop
        self._started = self._last_activity = loop.now()
        reader = self.down.reader = loop.io(self.sock.fileno(), READ)
        reader.start(self._on_readable)
        tunnel = self.tunnel
        for data, flow_length in tunnel.early:
            self.deliver(data, flow_length)
        tunnel.early = []
        if tunnel.client_ended:
            self.client_ended()
        if self.limits.any and not self.reason:
            self._arm_timer()

    def abort(self, reason: str) -> None:
        """End the stream now (e.g. at shutdown)."""
        self._end(reason)

    # --- client -> upstream: called by the session for the stream's frames ----------

    def deliver(self, data: bytes, flow_length: int) -> None:
        """A DATA frame's payload: to the target, acknowledged as it is taken."""
        if self.reason:
            return
        self._last_activity = self._loop.now()
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
            self._end("upstream_reset")
            return
        up.nbytes += sent
        if sent == len(data):
            self.session.ack(self.stream_id, flow_length)
            return
        self.session.ack(self.stream_id, sent)
        up.pending = bytearray(memoryview(data)[sent:])
        self._unacked = flow_length - sent
        if up.writer is None:
            up.writer = self._loop.io(self.sock.fileno(), WRITE)
        up.writer.start(self._on_writable)

    def client_ended(self) -> None:
        """END_STREAM: once what is pending is delivered, half-close toward the target."""
        up = self.up
        up.eof = True
        if up.pending is None and not self.reason:
            self._finish_up()

    def client_reset(self) -> None:
        """RST_STREAM from the client: passed on to the target as a reset."""
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        self._end("client_reset")

    def _on_writable(self) -> None:
        up = self.up
        try:
            sent = self.sock.send(up.pending)
        except BlockingIOError:
            return
        except OSError:
            self._end("upstream_reset")
            return
        try:
            self._last_activity = self._loop.now()
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
            self._end("error")

    def _finish_up(self) -> None:
        try:
            self.sock.shutdown(_socket.SHUT_WR)
        except OSError:
            pass
        self.up.done = True
        self._side_done("client")

    # --- upstream -> client -----------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            self._pump_down()
        except Exception:
            log.exception("h2 relay bug (stream %d, to client)", self.stream_id)
            self._end("error")

    def _pump_down(self) -> None:
        session = self.session
        down = self.down
        room = 0 if session.congested() else session.send_window(self.stream_id)
        if room <= 0:
            # Back-pressure: the client has no window for us, or its socket is full.
            down.reader.stop()
            down.blocked = True
            hangups = session.proxy.hangups
            if hangups is not None and not down.hangup:
                down.hangup = True
                hangups.watch(self, down)  # type: ignore[arg-type]
            return
        try:
            n = self.sock.recv_into(session.scratch, min(room, len(session.scratch)))
        except BlockingIOError:
            return
        except OSError:
            self._end("upstream_reset")
            return
        if not n:
            down.reader.stop()
            down.eof = down.done = True
            session.end_stream(self.stream_id)
            self._side_done("upstream")
            return
        down.nbytes += n
        self._last_activity = self._loop.now()
        if not self.first_byte_at:
            self.first_byte_at = time.monotonic()
        session.send_data(self.stream_id, session.view[:n])

    def resume(self) -> None:
        """The client opened its window, or the connection's output drained."""
        down = self.down
        if down.blocked and not self.reason:
            down.blocked = False
            down.reader.start(self._on_readable)

    def hung_up(self, half: Half, error: int) -> None:
        """The target reset (or sent its FIN) while we were not reading it (HangupWatch)."""
        if self.reason:
            return
        if error:
            self._end("upstream_reset")
        elif not half.peer_fin:
            half.peer_fin = True  # its bytes and then its EOF are still read when the window opens
            self._half_closed = True
            self._arm_timer()

    # --- the end ------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if not self._settle(reason):
            return
        for half in (self.up, self.down):
            for watcher in (half.reader, half.writer):
                if watcher is not None:
                    watcher.close()
            half.reader = half.writer = half.pending = None
        if self.down.hangup:
            self.session.proxy.hangups.forget(self.down)  # type: ignore[union-attr]
        try:
            self.tunnel._relay_done(self)  # type: ignore[arg-type]
        except Exception:
            log.exception("h2 relay: closing stream %d failed", self.stream_id)
