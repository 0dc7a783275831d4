"""A small HTTP/2 CONNECT client on the h2 package (python-hyper's, not ours):
one TLS connection, many streams, driven from the test's thread by pump()."""

from __future__ import annotations

import collections
import socket
import ssl
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
from h2.settings import SettingCodes

#: The client's own receive windows: big, so only the streams a test holds back stall.
CLIENT_WINDOW = 16 * 1024 * 1024


class H2Client:
    """Streams over one connection to the proxy. Received DATA is acknowledged at
    once unless its stream is in ``held`` (a client that stops reading it)."""

    def __init__(
        self,
        address: tuple[str, int] | None,
        context: ssl.SSLContext,
        *,
        window: int = CLIENT_WINDOW,
        sock: socket.socket | None = None,
    ) -> None:
        """Connect to *address*, or speak over *sock*, a connected socket to the proxy."""
        context.set_alpn_protocols(["h2", "http/1.1"])
        if sock is not None:
            sock.settimeout(10)
        else:
            assert address is not None
            sock = socket.create_connection(address, timeout=10)
        raw = sock
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False)
        )
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.increment_flow_control_window(CLIENT_WINDOW * 16)
        self.responses: dict[int, dict[bytes, bytes]] = {}
        self.data: dict[int, bytearray] = collections.defaultdict(bytearray)
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.settings: dict[int, int] = {}
        self.held: set[int] = set()
        self.unacked: dict[int, int] = collections.defaultdict(int)
        self.closed = False
        #: Bytes queued per stream, sent as the window allows; and streams to end after them.
        self.outgoing: dict[int, memoryview] = {}
        self.to_end: set[int] = set()
        self.flush()
        self.wait(lambda: self.settings)  # the proxy's SETTINGS: its stream limit is known

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def connect(
        self, authority: str | None, extra: list[tuple[str, str]] | None = None, *, method: str = "CONNECT"
    ) -> int:
        """Open a stream (CONNECT unless *method*); *extra* are more header fields (pseudo ones first)."""
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method)]
        if authority is not None:
            headers.append((":authority", authority))
        headers += extra or []
        self.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in headers])
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Queue *data* (and END_STREAM after it); sent by pump() as windows allow."""
        self.outgoing[stream_id] = memoryview(bytes(self.outgoing.get(stream_id, b"")) + data)
        if end:
            self.to_end.add(stream_id)
        self._send_queued()

    def _send_queued(self) -> None:
        for stream_id, view in list(self.outgoing.items()):
            if stream_id in self.resets:
                del self.outgoing[stream_id]
                continue
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(view))
            while size > 0:
                self.conn.send_data(stream_id, view[:size].tobytes())
                view = view[size:]
                size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(view))
            if view:
                self.outgoing[stream_id] = view
            else:
                del self.outgoing[stream_id]
                if stream_id in self.to_end:
                    self.to_end.discard(stream_id)
                    self.conn.end_stream(stream_id)
        self.flush()

    def release(self, stream_id: int) -> None:
        """Start reading a held stream again."""
        self.held.discard(stream_id)
        if self.unacked[stream_id]:
            self.conn.acknowledge_received_data(self.unacked.pop(stream_id), stream_id)
        self.flush()

    def reset(self, stream_id: int, code: int = 8) -> None:
        """RST_STREAM (CANCEL unless *code*); what was queued for the stream is dropped."""
        self.outgoing.pop(stream_id, None)
        self.to_end.discard(stream_id)
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def pump(self, timeout: float = 0.2) -> None:
        """Read once (up to *timeout*), handle what came, send what may be sent."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1024 * 1024)
        except (TimeoutError, ssl.SSLWantReadError):
            chunk = None
        except (ConnectionResetError, ssl.SSLEOFError):
            chunk = b""
        if chunk is not None:
            self.receive(chunk)
        else:
            self._send_queued()

    def receive(self, chunk: bytes) -> None:
        """Handle *chunk*, read from the proxy (b"": its EOF), and send what may be sent."""
        if not chunk:
            self.closed = True
            return
        for event in self.conn.receive_data(chunk):
            self._handle(event)
        self._send_queued()

    def send_queued(self) -> None:
        """Send what is queued, as the windows allow (pump() does it after each read)."""
        self._send_queued()

    def ack(self, stream_id: int, nbytes: int) -> None:
        """*nbytes* of a held stream's DATA were read: give the proxy that window back."""
        nbytes = min(nbytes, self.unacked[stream_id])
        if nbytes:
            self.unacked[stream_id] -= nbytes
            self.conn.acknowledge_received_data(nbytes, stream_id)

    def _handle(self, event: object) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id] = dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.data[event.stream_id] += event.data
            if event.stream_id in self.held:
                self.unacked[event.stream_id] += event.flow_controlled_length
            else:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.resets[event.stream_id] = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            if event.error_code == 0:
                # h2 closes its state machine on any GOAWAY; RFC 9113 §6.8 lets the
                # streams below last_stream_id go on after a graceful one, as Chromium does.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.update({code: change.new_value for code, change in event.changed_settings.items()})

    def wait(self, predicate: Callable[[], object], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"h2 client: condition not met within {timeout} s")
            if self.closed:
                raise AssertionError("h2 client: the proxy closed the connection")
            self.pump()

    def status(self, stream_id: int) -> int:
        self.wait(lambda: stream_id in self.responses or stream_id in self.resets)
        return int(self.responses[stream_id][b":status"])

    def close(self) -> None:
        self.sock.close()
