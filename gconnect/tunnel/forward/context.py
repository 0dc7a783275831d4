"""What forwarding is given, and what it leaves behind for the log.

:class:`ForwardContext` is everything one client connection's forwarded
requests may use (the same services a tunnel uses); :class:`ClientStream` is
the contract the client's connection keeps (plain or TLS, the forwarding
never knows which); :class:`RequestRecord` is one request's outcome, read
once by the access log and the metrics, with the attributes a tunnel has.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

from ...config import Config
from ...errors import GConnectError


class ClientStream(Protocol):
    """The client's connection, as forwarding uses it."""

    def recv_nowait(self) -> bytes:
        """What the client sent (plaintext), b"" at EOF; BlockingIOError if
        nothing has arrived yet."""

    def client_reader(self) -> Any:
        """The read watcher to wait on when :meth:`recv_nowait` would block."""

    def send(self, data: bytes, deadline: float) -> bool:
        """Write all of *data* by *deadline* (loop time); False if it passed."""

    def refuse(self, exc: GConnectError) -> None:
        """Answer *exc* as an error response (the connection then closes)."""


@dataclasses.dataclass(frozen=True)
class ForwardContext:
    """The services of one client connection's forwarded requests."""

    config: Config
    #: The proxy's policy now (read once per request: a reload applies to the next one).
    policy: Callable[[], Any]
    auth: Any
    resolver: Any
    router: Any
    source: Any
    own_connections: Any
    stats: Any
    access_log: Any
    idle: Any
    #: The client's address (after any PROXY header) and its limits key.
    address: tuple
    who: str
    #: The client came through a TLS listener (the PAC file then says HTTPS).
    tls: bool = False


class RequestRecord:
    """One forwarded request's outcome: the attributes a tunnel gives the
    access log (``target``, ``status``, ``reason``, bytes, times), and
    ``method``, ``scheme`` and ``path`` (None unless paths are logged)."""

    status = 0
    reason = "error"
    target = "-"
    dialled = "-"
    user: str | None = None
    via: str | None = None
    would_deny: str | None = None
    stream_id: int | None = None
    bytes_up = 0
    bytes_down = 0
    resolved_at = 0.0
    connected_at = 0.0
    first_byte_at = 0.0
    scheme = "http"
    path: str | None = None
    #: True when the connection to the origin was an idle one reused.
    reused = False

    def __init__(self, address: tuple, method: bytes) -> None:
        self.address = address
        self.method = method.decode("ascii", "replace")
        self.started = time.monotonic()
