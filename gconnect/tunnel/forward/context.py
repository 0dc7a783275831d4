"""What forwarding is given, and what it leaves behind for the observer.

:class:`ForwardContext` is one client connection's view of the
:class:`~gconnect.tunnel.services.TunnelServices` (the same services a tunnel
uses) with who the client is; :class:`ClientStream` is what forwarding needs
of the client's connection (plain or TLS, it never knows which), and
:class:`ConnectionStream` provides it for an HTTP/1.1
:class:`~gconnect.tunnel.client.ClientConnection`; :class:`RequestRecord` is
one request's outcome, a :class:`~gconnect.tunnel.observer.ForwardedRecord`
read once by the observer (the access log, the metrics).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..observer import RecordDefaults

if TYPE_CHECKING:
    from ...config import Config
    from ...errors import GConnectError
    from ..client import ClientConnection
    from ..services import TunnelServices

#: Bytes asked of one recv() from the client for a request body.
CLIENT_RECV_BYTES = 64 * 1024


class ClientStream(Protocol):
    """The client's connection, as forwarding uses it."""

    def recv_nowait(self, size: int = 0) -> bytes:
        """What the client sent (plaintext), b"" at EOF; BlockingIOError if
        nothing has arrived yet. *size* (0: no cap), a bandwidth limit's
        allowance, caps what is read from the socket when the implementation
        reads one (a TLS record or an HTTP/2 frame already read may exceed it)."""

    def client_reader(self) -> Any:
        """The read watcher to wait on when :meth:`recv_nowait` would block."""

    def send(self, data: bytes, deadline: float) -> bool:
        """Write all of *data* by *deadline* (loop time); False if it passed."""

    def refuse(self, exc: GConnectError) -> None:
        """Answer *exc* as an error response (the connection then closes)."""


class ConnectionStream:
    """:class:`ClientStream` over an accepted connection (TCP or TLS)."""

    __slots__ = ("_refuse", "conn", "send")

    def __init__(self, conn: ClientConnection, refuse: Callable[[GConnectError], None]) -> None:
        self.conn = conn
        #: :meth:`ClientStream.send` is the connection's own (a call fewer per message).
        self.send: Callable[[bytes, float], bool] = conn.send
        #: How the connection's side answers a refusal (HTTP/1.1's error response).
        self._refuse = refuse

    def recv_nowait(self, size: int = 0) -> bytes:
        conn = self.conn
        if conn.tls is not None:
            return conn.tls.recv(size) if size else conn.tls.recv()  # type: ignore[no-any-return]
        return conn.sock.recv(min(size, CLIENT_RECV_BYTES) if size else CLIENT_RECV_BYTES)  # type: ignore[no-any-return]

    def client_reader(self) -> Any:
        return self.conn.reader()

    def refuse(self, exc: GConnectError) -> None:
        self._refuse(exc)


@dataclasses.dataclass(frozen=True, slots=True)
class ForwardContext:
    """One client connection's forwarded requests: the services, and the client."""

    services: TunnelServices
    #: The client's address (after any PROXY header) and its limits key.
    address: tuple
    who: str
    #: The client came through a TLS listener (the PAC file then says HTTPS).
    tls: bool = False
    #: What the records name as the client side (protocol, stream); None: HTTP/1.1.
    side: Any = None
    #: The client certificate its TLS handshake verified (None or empty without one).
    peer_cert: dict[str, Any] | None = None

    @property
    def config(self) -> Config:
        return self.services.config

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client certificate (a ClientSide's ``peer_certificate``, for the shared steps)."""
        return self.peer_cert


class SideOfRequest:
    """The observer's view of a forwarded request's client side: HTTP/1.1, no stream."""

    __slots__ = ()
    protocol = "http/1.1"
    stream_id = None


_SIDE = SideOfRequest()


class RequestRecord(RecordDefaults):
    """One forwarded request's outcome: the attributes a tunnel gives the
    observer (``target``, ``status``, ``end_reason``, bytes, times), and
    ``method``, ``scheme`` and ``path`` (None unless paths are logged)."""

    scheme = "http"
    path: str | None = None
    #: True when the connection to the origin was an idle one reused.
    reused = False
    #: The client side as the observer sees it (protocol, stream).
    side: Any = _SIDE

    def __init__(self, address: tuple, method: bytes) -> None:
        self.address = address
        #: The method as the request head gave it.
        self.method_bytes = method
        self.started = time.monotonic()

    @property
    def method(self) -> str:
        """The request method ("GET"), "-" for a head that could not be read:
        decoded when an observer reads it (the access log), not per request."""
        return self.method_bytes.decode("ascii", "replace")
