"""Everything a tunnel may use, in one typed object.

:class:`TunnelServices` is what a :class:`~gconnect.tunnel.tunnel.Tunnel` and
its client side see of the process: the configuration, the policy, the
limits, the authenticator and the external ACL helper, the resolver, the router of parent pools, the
movers, the relay's deadlines, the hang-up watch, the handshakes' greenlets, the
observer that counts and logs, the bandwidth limits and quotas (``usage``), the
loop check's memory, the open tunnels, the TLS context and the table of
protocols a TLS client may pick by ALPN. A tunnel never sees the proxy that
built it.

The composition root (:mod:`gconnect.proxy`) builds one with
:meth:`TunnelServices.from_config` and, on SIGHUP, swaps it whole for a copy
with the new policy (``dataclasses.replace``): a handshake keeps the object it
started with, so it sees the old policy or the new one, never half of each.
A unit test or a benchmark builds one the same way, in one call.

Ownership: the services own the shared resources (the pipe pool, the hang-up
watch, the usage's timer); :meth:`TunnelServices.close` releases them once no
tunnel is left.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gevent import get_hub
from gevent.event import Event

from ..auth.authenticator import Authenticator
from ..config import Config
from ..state.tally import LocalTally, Tally
from .deadlines import RelayLimits
from .dial import SourceAddresses
from .forward.upstream import IdleConnections
from .limits import ClientLimits
from .loopcheck import OwnConnections
from .movers import CopyMover, Mover, PipePool, SpliceMover, splice_supported
from .observer import NullObserver, TunnelObserver
from .policy import Policy
from .pool import Router
from .relay import HangupWatch
from .resolver import Resolver
from .runners import Runners
from .tls import DecryptMover, EncryptMover, server_context
from .usage import Usage, UsageObserver, needed

if TYPE_CHECKING:
    from ..auth.helperprovider import ExternalAcl

#: --relay auto copies reads up to this size and hands a direction whose read
#: fills it to splice. 64 KiB holds a request or a small answer whole; bursts of
#: 50 bulk tunnels copying 512 KiB each before switching stalled other tunnels'
#: echoes for milliseconds, which 64 KiB does not.
AUTO_COPY_BYTES = 64 * 1024

#: What serves a TLS connection whose client picked a protocol by ALPN other
#: than HTTP/1.1: called with the :class:`~gconnect.tunnel.client.ClientConnection`
#: and the services in the connection's greenlet once the handshake is done,
#: it serves the connection to its end and returns the end reason.
ConnectionProtocol = Callable[[Any, "TunnelServices"], str]


def external_acl(config: Config) -> ExternalAcl | None:
    """The external ACL helper's client, or None; imported only when configured
    (a proxy without one loads no subprocess machinery)."""
    if not config.external_acl_helper:
        return None
    from ..auth.helperprovider import ExternalAcl

    return ExternalAcl(config)


class OpenTunnel(Protocol):
    """What the process does with an open tunnel (:class:`~gconnect.tunnel.tunnel.Tunnel`)."""

    def drain(self) -> None:
        """Shutdown has begun: ask the client to finish."""

    def abort(self, reason: str) -> None:
        """End now, whatever step the tunnel is at."""


def relay_movers(config: Config) -> tuple[str, Mover, PipePool | None]:
    """The mode ``--relay`` resolves to here, its mover, and the pipe pool it needs."""
    mode = config.relay
    if mode in ("splice", "auto") and not splice_supported():
        if mode == "splice":
            raise RuntimeError("--relay splice: splice(2) does not work here")
        mode = "copy"
    if mode == "copy":
        return mode, CopyMover(config.chunk_bytes, budget_bytes=config.turn_budget_bytes), None
    pipes = PipePool(config.pipe_pool_size, config.chunk_bytes)
    splice = SpliceMover(pipes, config.chunk_bytes, config.turn_budget_bytes)
    if mode == "splice":
        return mode, splice, pipes
    # auto: copy what fits in AUTO_COPY_BYTES, splice a direction once a read fills it. Those
    # reads are small already, and a share below AUTO_COPY_BYTES would never fill one: only the
    # splice that takes over reads a share of the turn's budget.
    return mode, CopyMover(min(AUTO_COPY_BYTES, config.chunk_bytes), bulk=splice), pipes


class OpenTunnels:
    """Every tunnel being served by this process: handshakes in progress,
    relaying tunnels, HTTP/2 streams and the connections that carry them.

    *on_closed*, when set, is called after each tunnel leaves (the listeners
    set it while they wait for room to accept again, and unset it then).
    """

    def __init__(self) -> None:
        self._tunnels: set[OpenTunnel] = set()
        # Made by wait_empty (shutdown) only: set and cleared as the set empties
        # and fills, it would cost two calls for every tunnel served alone.
        self._empty: Event | None = None
        self.on_closed: Callable[[], None] | None = None
        #: How many are open: the set's own len, for the listeners to call before each accept.
        self.count: Callable[[], int] = self._tunnels.__len__
        #: Count *tunnel* as open: the set's own add (one call fewer for every tunnel).
        self.add: Callable[[OpenTunnel], None] = self._tunnels.add

    def discard(self, tunnel: OpenTunnel) -> None:
        tunnels = self._tunnels
        tunnels.discard(tunnel)
        if not tunnels and self._empty is not None:
            self._empty.set()
        if self.on_closed is not None:
            self.on_closed()

    def __len__(self) -> int:
        return len(self._tunnels)

    def __iter__(self) -> Iterator[OpenTunnel]:
        return iter(list(self._tunnels))

    def wait_empty(self, timeout: float) -> bool:
        """Wait until no tunnel is open, for at most *timeout* seconds; True if none is."""
        if not self._tunnels:
            return True
        empty = self._empty
        if empty is None:
            empty = self._empty = Event()
        else:
            empty.clear()  # set when the tunnels last ran out; some are open again now
        return bool(empty.wait(timeout))


@dataclasses.dataclass(frozen=True)
class TunnelServices:
    """Everything a tunnel may use (see the module docstring)."""

    config: Config
    policy: Policy
    limits: ClientLimits
    auth: Authenticator | None
    #: The external ACL helper asked after the rules (--external-acl-helper); None without one.
    external_acl: ExternalAcl | None
    resolver: Resolver
    #: Pools of parent proxies and the routes to them; None when every tunnel goes direct.
    router: Router | None
    #: --bind-address; None keeps the dialler's fast path free of it.
    source: SourceAddresses | None
    #: What ``--relay`` resolved to here, and the pipes splice borrows (None for copy).
    relay_mode: str
    pipes: PipePool | None
    #: (client -> target, target -> client) movers for plain and TLS clients.
    plain_movers: tuple[Mover, Mover]
    tls_movers: tuple[Mover, Mover]
    relay_limits: RelayLimits
    #: Notices hang-ups of back-pressured sockets; made at start, None before.
    hangups: HangupWatch | None
    observer: TunnelObserver
    own_connections: OwnConnections
    tunnels: OpenTunnels
    #: The TLS listener's context; None for a plain listener.
    tls_context: ssl.SSLContext | None
    #: ALPN protocol name -> what serves a connection that picked it (HTTP/1.1 is not in it).
    protocols: Mapping[str, ConnectionProtocol]
    loop: Any
    #: Idle connections to origins that forwarded http:// requests may reuse (kept across reloads).
    idle_upstreams: IdleConnections
    #: Counters shared with the other workers and instances (gconnect.state.tally): what is
    #: open now (gauges) and what only grows, kept across restarts (totals). Kept across reloads.
    gauges: Tally
    totals: Tally
    #: Bandwidth limits, quotas and per-user accounts (kept across reloads); None when none is asked for.
    usage: Usage | None = None
    #: Greenlets that run handshakes, kept between them (kept across reloads).
    runners: Runners = dataclasses.field(default_factory=Runners)
    #: The observer reads the step times (``resolved_at``, ``connected_at``, a
    #: forwarded request's ``first_byte_at``): its ``timings``, True if it has none.
    timings: bool = True

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        observer: TunnelObserver | None = None,
        protocols: Mapping[str, ConnectionProtocol] | None = None,
        hangups: HangupWatch | None = None,
        gauges: Tally | None = None,
        totals: Tally | None = None,
    ) -> TunnelServices:
        """Build every service from *config*, for this thread's gevent hub."""
        resolver = Resolver(config)
        source = SourceAddresses(config.bind_address) if config.bind_address else None
        if source is not None:
            source.check()
        mode, mover, pipes = relay_movers(config)
        observer = observer if observer is not None else NullObserver()
        timings = getattr(observer, "timings", True)
        gauges = gauges if gauges is not None else LocalTally()
        totals = totals if totals is not None else LocalTally()
        usage = None
        if needed(config):
            usage = Usage(config, gauges, totals, get_hub().loop)
            observer = UsageObserver(observer, usage)
        return cls(
            config=config,
            policy=Policy(config),
            limits=ClientLimits(config.max_clients, config.max_clients_per_ip, gauges),
            auth=Authenticator(config, totals=totals) if config.auth_providers() else None,
            external_acl=external_acl(config),
            resolver=resolver,
            router=Router(config, resolver, source) if config.upstream or config.routes else None,
            source=source,
            relay_mode=mode,
            pipes=pipes,
            plain_movers=(mover, mover),
            tls_movers=(
                DecryptMover(config.chunk_bytes, budget_bytes=config.turn_budget_bytes),
                EncryptMover(config.chunk_bytes, budget_bytes=config.turn_budget_bytes),
            ),
            relay_limits=RelayLimits(config.idle_timeout, config.half_close_timeout, config.max_tunnel_lifetime),
            hangups=hangups,
            observer=observer,
            own_connections=OwnConnections(),
            tunnels=OpenTunnels(),
            tls_context=server_context(config, (*(protocols or {}), "http/1.1")) if config.tls_cert else None,
            protocols=dict(protocols or {}),
            loop=get_hub().loop,
            idle_upstreams=IdleConnections(config.forward_idle_timeout, config.forward_max_idle),
            gauges=gauges,
            totals=totals,
            usage=usage,
            timings=timings,
        )

    def with_config(self, config: Config, policy: Policy) -> TunnelServices:
        """A copy with *config*'s policy (SIGHUP), and its limits: the usage
        follows the new configuration (made now if it asks for one the first time)."""
        usage, observer = self.usage, self.observer
        if usage is not None:
            usage.configure(config)
        elif needed(config):
            usage = Usage(config, self.gauges, self.totals, self.loop)
            observer = UsageObserver(observer, usage)
        return dataclasses.replace(self, config=config, policy=policy, usage=usage, observer=observer)

    def close(self) -> None:
        """Release the shared resources (the hang-up watch, the pipes, idle
        connections to origins); once, at the end."""
        self.idle_upstreams.close()
        if self.usage is not None:
            self.usage.close()
        if self.hangups is not None:
            self.hangups.close()
        if self.pipes is not None:
            self.pipes.close()
