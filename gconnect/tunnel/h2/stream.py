"""One CONNECT stream of an HTTP/2 connection: a client side of its own.

:class:`H2StreamSide` is the :class:`~gconnect.tunnel.client.ClientSide` of
a stream: its request comes from the stream's HEADERS
(:func:`~gconnect.tunnel.h2.head.parse_h2_connect`), its answer and its
refusal are HEADERS (with END_STREAM for a refusal), and closing it lets the
stream go (RST_STREAM when it did not end cleanly). Everything else is the
:class:`~gconnect.tunnel.tunnel.Tunnel`'s own steps, so a stream gets the
same authenticator and cache, policy, resolver, dialler, limits, metrics and
access log as any client.

Its bytes are moved by :class:`~gconnect.tunnel.h2.relay.StreamRelay`.

Ownership: the tunnel owns the outbound socket; the relay drives it from
libev callbacks once started and the session's greenlet feeds it DATA;
``on_done`` lets the tunnel close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import GConnectError, StreamResetError
from ..head import ConnectRequest
from ..waiting import wait
from .head import parse_h2_connect
from .relay import StreamConnection, StreamRelay

if TYPE_CHECKING:
    from ..dial import Connection
    from ..tunnel import Tunnel

log = logging.getLogger(__name__)


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
        relay = self.relay = StreamRelay(
            self.session, self.stream_id, self.take_early, outbound, services.relay_limits, services.hangups, on_done
        )
        relay.start()
        return relay

    def drain(self) -> None:
        """The connection drains (GOAWAY), not its streams."""

    def close(self, status: int, end_reason: str) -> None:
        """Let the stream go (RST_STREAM when it did not end cleanly)."""
        self.session.forget(self.stream_id, status, end_reason)

    # --- the stream's frames, from the session -------------------------------------------

    def deliver(self, parts: Sequence[bytes | memoryview], flow_length: int) -> None:
        """DATA payloads from the client (one run of frames, as they lie in what was read)."""
        if self.relay is not None:
            self.relay.deliver(parts, flow_length)
        else:
            self.early.append((b"".join(parts), flow_length))
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
