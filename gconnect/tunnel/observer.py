"""What the data path tells the rest of the process: the observer contract.

A tunnel reports three moments (and a forwarded http:// request one, its
end), and nothing else of the process hears from it: the operations layer's
counters and access log implement this interface
(``gconnect.ops.observer``), a unit test or a benchmark may pass
:class:`NullObserver`. The tunnel passes itself as a :class:`TunnelRecord`:
an observer reads those attributes, and must not keep the tunnel or change
it. Observers run in the hub or the tunnel's greenlet: they must not block.

An observer that reads none of the step times (``resolved_at``,
``connected_at``, a forwarded request's ``first_byte_at``) says so with
``timings = False``: the data path then leaves them 0 and does not read the
clock for them. An observer without the attribute gets them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..auth.identity import Identity


class SideRecord(Protocol):
    """What an observer may read of a tunnel's client side."""

    @property
    def protocol(self) -> str:
        """ "http/1.1" or "h2"."""

    @property
    def stream_id(self) -> int | None:
        """The HTTP/2 stream (0: the connection itself), None for a connection's only request."""


class TunnelRecord(Protocol):
    """What an observer may read of a tunnel (:class:`~gconnect.tunnel.tunnel.Tunnel`)."""

    #: The client (the one a PROXY header names), as (host, port).
    address: tuple
    #: The authenticated user, or None.
    user: str | None
    #: Who vouched for the user (its ``provider``: htpasswd, helper, jwt, cert), or None.
    identity: Identity | None
    #: ``host:port`` asked for ("-" before the request was read).
    target: str
    #: The address connected to ("-" before the dial).
    dialled: str
    #: The parent proxy's URL (None: direct).
    via: str | None
    #: The status answered (0 until answered; 200 once relaying).
    status: int
    #: Why the tunnel ended: a refusal's code, or the relay's end reason.
    end_reason: str
    #: Report mode: the name rules' reason this tunnel would have been refused for.
    would_deny: str | None
    #: The TLS name check: the ClientHello's server name, and the outcome (None: not checked).
    sni: str | None
    sni_check: str | None
    bytes_up: int
    bytes_down: int
    #: Monotonic times: accept, DNS answered, connected, first byte to the client (0: not reached).
    started: float
    resolved_at: float
    connected_at: float
    first_byte_at: float

    @property
    def side(self) -> SideRecord:
        """The client side (its protocol and stream)."""


class TunnelObserver(Protocol):
    """Told of every tunnel's answer, report-mode verdict and end."""

    def opened(self, tunnel: TunnelRecord) -> None:
        """The 200 was sent: the tunnel relays from now on."""

    def would_deny(self, tunnel: TunnelRecord, reason: str) -> None:
        """Report mode let *tunnel* through; the name rules would refuse it for *reason*."""

    def closed(self, tunnel: TunnelRecord) -> None:
        """The tunnel is done, whatever the outcome (refused, relayed, killed): called once."""

    def forwarded(self, request: ForwardedRecord) -> None:
        """A forwarded http:// request is done, whatever the outcome: called once per request."""


class ForwardedRecord(TunnelRecord, Protocol):
    """What an observer may read of a forwarded http:// request
    (:class:`~gconnect.tunnel.forward.context.RequestRecord`): a tunnel's
    attributes (``status`` is the response's), and the request's."""

    @property
    def method(self) -> str:
        """The request method ("GET"), "-" for a head that could not be read."""

    #: "http", or "-" for a request to the proxy itself.
    scheme: str
    #: The path and query, only when --log-path asks (they can carry secrets); else None.
    path: str | None


class RecordDefaults:
    """The starting values of what an observer reads (:class:`TunnelRecord`),
    as class defaults, for a tunnel and a forwarded request alike: each is
    made per client or request, and a store only happens when a step sets one."""

    status = 0
    end_reason = "error"
    target = "-"
    dialled = "-"
    user: str | None = None
    #: Who the authenticator found (user, provider, group); None without authentication.
    identity: Identity | None = None
    via: str | None = None
    #: Report mode: the name rules' reason this would have been refused for.
    would_deny: str | None = None
    #: The TLS name check: the ClientHello's server name, and the outcome (None: not checked).
    sni: str | None = None
    sni_check: str | None = None
    bytes_up = 0
    bytes_down = 0
    resolved_at = 0.0
    connected_at = 0.0
    first_byte_at = 0.0


class NullObserver:
    """An observer that hears everything and keeps nothing."""

    timings = False

    def opened(self, tunnel: TunnelRecord) -> None:
        pass

    def would_deny(self, tunnel: TunnelRecord, reason: str) -> None:
        pass

    def closed(self, tunnel: TunnelRecord) -> None:
        pass

    def forwarded(self, request: ForwardedRecord) -> None:
        pass
