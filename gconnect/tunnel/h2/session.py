"""HTTP/2 on the TLS listener: one client connection, many CONNECT streams.

A client that picks ``h2`` by ALPN (Chromium does, for an HTTPS proxy) gets an
:class:`H2Session` in place of the HTTP/1.1 head (the composition root puts
:class:`H2Protocol` in the services' ALPN table): the connection's own
greenlet (the one that did the TLS handshake) reads its frames, feeds them to
the ``h2`` package's state machine, and hands each stream's events to that
stream's client side (:mod:`gconnect.tunnel.h2.stream`): HEADERS start a
:class:`~gconnect.tunnel.tunnel.Tunnel` with an
:class:`~gconnect.tunnel.h2.stream.H2StreamSide` in a greenlet of its own;
DATA, END_STREAM and RST_STREAM go to the side; WINDOW_UPDATE resumes relays
waiting for window.

Writing is never a wait (:mod:`gconnect.tunnel.h2.output`): frames are
encrypted and sent at once, the rest buffered; while the buffer is at its
high-water mark (``--chunk-bytes``) the stream relays stop reading their
targets (``congested``).

Flow control that does not throttle: each stream's receive window is
``h2_window_bytes`` and the connection's is that times ``h2_max_streams``, so
streams whose targets stall can never use up the connection's window and hold
the others back; DATA is acknowledged (WINDOW_UPDATE) as targets take it.
DATA itself is framed and parsed apart from h2, and those windows kept there
(:mod:`gconnect.tunnel.h2.data`); h2 keeps every state.

Ends: the client's EOF or reset ends every stream (``client_reset``); a
protocol error ends the connection with h2's GOAWAY, but a stream whose DATA
disagrees with its ``content-length`` is reset alone (PROTOCOL_ERROR,
:mod:`gconnect.tunnel.h2.connection`); :meth:`H2Session.drain`
(SIGTERM) sends GOAWAY with NO_ERROR, refuses newer streams and closes the
connection once its streams are done. The connection's own access-log record
has ``stream=0`` and ``status=0``; its streams have one each.

Ownership: the session borrows the connection (its socket and TLS session)
from the tunnel that accepted it, which closes it after :meth:`H2Session.serve`
returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from gevent import get_hub
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame, SettingsFrame

from ...errors import StreamResetError
from ..tunnel import Tunnel
from ..waiting import wait_any
from .buffers import READS
from .connection import ServerConnection, StreamMalformed
from .data import MAX_WINDOW_BYTES, DataPath
from .forward import H2ForwardStream, is_forwarded
from .frames import FrameError, window_update
from .output import RecordOutput
from .stream import H2StreamSide

if TYPE_CHECKING:
    from ..client import ClientConnection
    from ..services import TunnelServices

log = logging.getLogger(__name__)

#: RFC 9113 §6.5.2: every window starts at 65,535 octets.
DEFAULT_WINDOW_BYTES = 65_535
#: With streams open the connection has no deadline of its own (they have);
#: the reading greenlet still wakes this often to look around.
WAKE_SECONDS = 60.0
#: At the connection's end, how long what is still buffered (a GOAWAY) may take.
FINAL_FLUSH_SECONDS = 1.0


class H2Protocol:
    """The ALPN table's entry for ``h2``: serves one connection as an :class:`H2Session`.

    *current* returns the services in force now: each stream is a tunnel of
    its own and starts with the policy of its moment, as a new connection would.
    """

    def __init__(self, current: Callable[[], TunnelServices]) -> None:
        self.current = current

    def __call__(self, conn: ClientConnection, services: TunnelServices) -> str:
        return H2Session(conn, services, self.current).serve()


class H2Session:
    """One HTTP/2 client connection after the TLS handshake."""

    closed = False
    draining = False

    def __init__(self, conn: ClientConnection, services: TunnelServices, current: Callable[[], TunnelServices]) -> None:
        self.conn = conn
        self.services = services
        self.current = current
        self.address = conn.address
        self.sock = conn.sock
        assert conn.tls is not None
        self.tls = conn.tls
        #: The client certificate the handshake verified: every stream's identity, read once.
        self.peer_certificate = conn.peer_certificate()
        self.loop = services.loop
        config = services.config
        # Header validation is parse_h2_connect's: h2's would make a malformed
        # CONNECT a connection error instead of the one stream's 400.
        self.h2 = ServerConnection(
            h2.config.H2Configuration(client_side=False, validate_inbound_headers=False, header_encoding=None)
        )
        self.streams: dict[int, H2StreamSide | H2ForwardStream] = {}
        # DATA is parsed and framed apart from h2 (frames.py says why).
        self.data = DataPath(self.h2, config, self._send, self.flush)
        self.data.serve(self.streams, self._dispatch, self.ack)
        self.send_data = self.data.send_data
        self.read_slots = self.data.read_slots
        self.send_read = self.data.send_read
        self._wake = self.loop.async_()
        self.output = RecordOutput(
            self.sock,
            self.tls,
            self.loop,
            high_water=config.chunk_bytes,
            on_drained=self._resume,
            on_lost=self._wake.send,
        )

    # --- the connection's greenlet ----------------------------------------------------

    def serve(self) -> str:
        """Serve the connection until it ends; return why it ended."""
        self.conn.on_drain = self.drain
        reason = "shutdown"
        try:
            self._start()
            if self.conn.draining:
                self.drain()  # SIGTERM came during the TLS handshake: GOAWAY at once
            reason = self._read_frames()
        except Exception:
            log.exception("h2 session bug (client %s)", self.address)
            reason = "error"
        finally:
            self._end("client_reset" if reason != "shutdown" else "shutdown")
        return reason

    def _start(self) -> None:
        config = self.services.config
        conn = self.h2
        settings: dict[int, int] = {
            SettingCodes.INITIAL_WINDOW_SIZE: config.h2_window_bytes,
            SettingCodes.MAX_HEADER_LIST_SIZE: conn.DEFAULT_MAX_HEADER_LIST_SIZE,
            SettingCodes.ENABLE_PUSH: 0,
        }
        # h2 is told a higher stream limit than the client: past its own limit h2
        # ends the whole connection, where RFC 9113 §5.1.2 wants the one stream
        # refused (REFUSED_STREAM, in _open); so the client is sent our own SETTINGS.
        # Its receive windows are the largest there are (data.py says why).
        h2_values = {SettingCodes.MAX_CONCURRENT_STREAMS: 2 * config.h2_max_streams}
        h2_values[SettingCodes.INITIAL_WINDOW_SIZE] = MAX_WINDOW_BYTES
        conn.local_settings = h2.settings.Settings(client=False, initial_values={**settings, **h2_values})  # type: ignore[dict-item]
        conn.initiate_connection()
        conn.increment_flow_control_window(MAX_WINDOW_BYTES - DEFAULT_WINDOW_BYTES)
        conn.data_to_send()  # h2's SETTINGS and WINDOW_UPDATE, replaced by:
        settings[SettingCodes.MAX_CONCURRENT_STREAMS] = config.h2_max_streams
        self._send(SettingsFrame(0, settings=settings).serialize())
        if self.data.windows.connection_left > DEFAULT_WINDOW_BYTES:  # RFC 9113 §6.9: never an increment of 0
            self._send(window_update(0, self.data.windows.connection_left - DEFAULT_WINDOW_BYTES))

    def _read_frames(self) -> str:
        """Read and dispatch until the connection ends; return the end reason."""
        reader = self.conn.reader()
        idle = self.services.config.idle_timeout
        while not self.output.lost:
            if self.draining and not self.streams:
                return "goaway"
            # The read buffers are lent for one read and its DATA's handing on, and
            # given back before any wait (buffers.py): an idle connection holds none.
            pair = READS.take()
            try:
                got = self._read_once(*pair)
            finally:
                READS.give(pair)
            if isinstance(got, str):
                return got
            if got < 0:
                timeout = idle if idle and not self.streams else WAKE_SECONDS
                if wait_any((reader, self._wake), timeout) < 0 and idle and not self.streams:
                    self._goaway(ErrorCodes.NO_ERROR)
                    return "idle"
                continue
            self.flush()
        return "client_reset"

    def _read_once(self, ciphertext: memoryview, plaintext: memoryview) -> int | str:
        """One read, its frames handed on: the plaintext's length, -1 if there was
        nothing to read, or the connection's end reason."""
        try:
            n = self.tls.recv_into(ciphertext, plaintext)
        except BlockingIOError:
            return -1
        except OSError:
            return "client_reset"
        if not n:
            return "client_eof"
        try:
            self.data.receive(plaintext[:n])
        except h2.exceptions.ProtocolError as exc:
            log.info("h2 client %s: protocol error: %s", self.address, exc)
            self.flush()  # h2's GOAWAY
            return "protocol_error"
        except FrameError as exc:
            log.info("h2 client %s: protocol error: %s", self.address, exc)
            self._goaway(exc.code)
            return "protocol_error"
        return n

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._open(event.stream_id, event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.client_ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._reset_by_client(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            stream = self.streams.get(event.stream_id) if event.stream_id else None
            if stream is None:
                self._resume()  # the connection's window: every stream may go on
            else:
                stream.resume()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._resume()  # a new initial window or frame size
        elif isinstance(event, StreamMalformed):
            self._malformed(event)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.draining = True  # the client's GOAWAY: open streams go on

    def _open(self, stream_id: int, headers: list) -> None:
        if self.draining or len(self.streams) >= self.services.config.h2_max_streams:
            # After our GOAWAY (RFC 9113 §6.8), or past SETTINGS_MAX_CONCURRENT_STREAMS
            # (§5.1.2): not processed, so the client may retry it.
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if is_forwarded(headers) and self.services.config.forward_http == "on":
            forwarded = self.streams[stream_id] = H2ForwardStream(self, stream_id, headers)
            forwarded.start()
            return
        stream = H2StreamSide(self, stream_id, headers)
        self.streams[stream_id] = stream
        stream.tunnel = Tunnel(self.current(), stream)
        stream.tunnel.start(get_hub(), at_once=False)

    def _reset_by_client(self, stream: H2StreamSide | H2ForwardStream) -> None:
        if stream.relay is not None:
            stream.relay.client_reset()
        else:
            if isinstance(stream, H2StreamSide):
                stream.reset_before_relay()  # after the 200, the name check may be reading ahead
            self._kill(stream)

    def _malformed(self, event: StreamMalformed) -> None:
        # h2 has reset the stream (PROTOCOL_ERROR) and will deliver none of its DATA
        # again; the run the event came with gives its window back (DataPath).
        stream = self.streams.get(event.stream_id)
        if isinstance(stream, H2ForwardStream):
            stream.malformed(event.why)
        elif stream is not None:
            self._reset_by_client(stream)  # a CONNECT stream with a content-length: gone all the same

    def _kill(self, stream: H2StreamSide | H2ForwardStream) -> None:
        stream.tunnel.cancel(StreamResetError(f"stream {stream.stream_id} reset by the client"))

    def _resume(self) -> None:
        for stream in list(self.streams.values()):
            stream.resume()

    def _end(self, stream_reason: str) -> None:
        """Close the streams still open, send what is buffered, forget the drain hook."""
        self.closed = True  # the streams' ends write nothing more
        for stream in list(self.streams.values()):
            if stream.relay is not None:
                stream.relay.abort(stream_reason)
            else:
                self._kill(stream)
        if stream_reason != "shutdown":  # killed: no more waiting
            self.output.finish(FINAL_FLUSH_SECONDS)
        self.output.close()
        self._wake.close()
        self.conn.on_drain = None

    # --- called by the streams and at shutdown ------------------------------------------

    def respond(self, stream_id: int, status: int, headers: tuple, *, end_stream: bool = False) -> bool:
        """Send a response's HEADERS on *stream_id*; False if the stream or the connection is gone."""
        if self.closed or self.output.lost:
            return False
        fields = [(b":status", str(status).encode())]
        # Our own fields are text; a forwarded response's are the origin's bytes.
        fields += [
            (name.lower().encode(), value.encode()) if isinstance(name, str) else (name, value)
            for name, value in headers
        ]
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end_stream)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return False
        self.flush()
        return True

    def end_with(self, stream_id: int, data: bytes) -> None:
        """*data* as the stream's last DATA (END_STREAM), if the stream and the connection are still there."""
        if self.closed or self.output.lost:
            return
        try:
            self.h2.send_data(stream_id, data, end_stream=True)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, h2.exceptions.FlowControlError):
            return
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        """The target's EOF: END_STREAM toward the client."""
        self.h2.end_stream(stream_id)
        self.flush()

    def send_window(self, stream_id: int) -> int:
        """Bytes the client lets us send on *stream_id* now."""
        return self.h2.local_flow_control_window(stream_id)

    def ack(self, stream_id: int, flow_length: int) -> None:
        """*flow_length* bytes of *stream_id* were taken: give the client its window back."""
        if flow_length and not self.closed:
            forwarded = isinstance(self.streams.get(stream_id), H2ForwardStream)
            self.data.give_back(stream_id, flow_length, forwarded=forwarded)

    def congested(self) -> bool:
        """True while the output buffer is at its high-water mark."""
        return self.output.congested()

    def forget(self, stream_id: int, status: int, end_reason: str, code: int | None = None) -> None:
        """The stream's tunnel closed with *status* and *end_reason*: reset the
        stream if it did not end cleanly (with *code* if given)."""
        forwarded = isinstance(self.streams.pop(stream_id, None), H2ForwardStream)
        given_back = self.data.forget(stream_id, forwarded=forwarded and not self.closed)
        if self.closed or self.output.lost:
            return
        if given_back:
            self._send(given_back)
        state = self.h2.streams.get(stream_id)
        if state is not None and not state.closed:
            if code is None:
                if status != 200:
                    code = ErrorCodes.NO_ERROR  # answered: the rest of the request is not needed (§8.1)
                elif end_reason == "upstream_reset":
                    code = ErrorCodes.CONNECT_ERROR  # RFC 9113 §8.5
                else:
                    code = ErrorCodes.CANCEL  # a deadline, shutdown, or a bug
            try:
                self.h2.reset_stream(stream_id, code)
            except h2.exceptions.ProtocolError:
                pass
            self.flush()
        if not self.streams:
            self._wake.send()  # the reader's wait: now the connection's own idle deadline, or the drain's end

    def drain(self) -> None:
        """SIGTERM: GOAWAY (NO_ERROR); open streams go on, newer ones are refused."""
        if self.closed or self.draining:
            return
        self.draining = True
        self._goaway(ErrorCodes.NO_ERROR)
        self._wake.send()

    def _goaway(self, code: int) -> None:
        # Not h2's close_connection(): that closes its state machine, and the
        # streams still open could not send another frame (RFC 9113 §6.8 lets them finish).
        self.flush()
        frame = GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id, error_code=code)
        self._send(frame.serialize())

    # --- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what h2 has queued, never waiting."""
        data = self.h2.data_to_send()
        if data:
            self._send(data)

    def _send(self, data: bytes | memoryview) -> None:
        if not self.closed:
            self.output.send(data)
