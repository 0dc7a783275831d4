"""The proxy: everything one process's tunnels share, composed in one place.

:class:`Proxy` builds the pieces from the one :class:`~gconnect.config.Config`
(policy, resolver, limits, authenticator, movers, access log, metrics), starts
a :class:`~gconnect.listener.TunnelServer` per listening address, and serves
each accepted client as a :class:`~gconnect.tunnel.tunnel.Tunnel`. It is the
only module that imports from all the others; the data path itself is read in
``gconnect/tunnel/tunnel.py``.
"""

from __future__ import annotations

import _socket
import dataclasses
import importlib
import ipaddress
import logging
from typing import Any

from gevent import get_hub
from gevent import kill as kill_greenlet
from gevent.event import Event
from greenlet import greenlet as RawGreenlet

from .auth.authenticator import Authenticator
from .config import Config
from .listener import OwnConnections, TunnelServer, adopt_listener, make_listener
from .ops.accesslog import AccessLog, open_access_log
from .ops.configfile import user_table_warnings
from .ops.metrics import MetricsServer, ProxyCollector, Stats
from .tunnel.dial import SourceAddresses
from .tunnel.forward.upstream import IdleConnections
from .tunnel.limits import ClientLimits
from .tunnel.movers import CopyMover, Mover, PipePool, SpliceMover, splice_supported
from .tunnel.policy import Policy
from .tunnel.pool import Router
from .tunnel.relay import HangupWatch, RelayLimits
from .tunnel.resolver import Resolver
from .tunnel.tls import DecryptMover, EncryptMover, server_context
from .tunnel.tunnel import Tunnel

log = logging.getLogger(__name__)

#: How long stop() waits for killed handshakes and aborted relays to close.
KILL_WAIT_SECONDS = 5.0
#: --relay auto copies reads up to this size and hands a direction whose read
#: fills it to splice. 64 KiB holds a request or a small answer whole; bursts of
#: 50 bulk tunnels copying 512 KiB each before switching stalled other tunnels'
#: echoes for milliseconds (bench/burst.py), which 64 KiB does not.
AUTO_COPY_BYTES = 64 * 1024


def relay_movers(config: Config) -> tuple[str, Mover, PipePool | None]:
    """The mode ``--relay`` resolves to here, its mover, and the pipe pool it needs."""
    mode = config.relay
    if mode in ("splice", "auto") and not splice_supported():
        if mode == "splice":
            raise RuntimeError("--relay splice: splice(2) does not work here")
        mode = "copy"
    if mode == "copy":
        return mode, CopyMover(config.chunk_bytes), None
    pipes = PipePool(config.pipe_pool_size, config.chunk_bytes)
    splice = SpliceMover(pipes, config.chunk_bytes)
    if mode == "splice":
        return mode, splice, pipes
    # auto: copy what fits in AUTO_COPY_BYTES, splice a direction once a read fills it.
    return mode, CopyMover(min(AUTO_COPY_BYTES, config.chunk_bytes), bulk=splice), pipes


class Proxy:
    """Everything shared by the tunnels of one process: listeners, the open
    tunnels, the resolver, the policy, the movers and their pipes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = Policy(config)
        for warning in user_table_warnings(config):
            log.warning("%s", warning)
        self.resolver = Resolver(config)
        self.limits = ClientLimits(config.max_clients, config.max_clients_per_ip)
        self.auth = Authenticator(config) if config.auth_file else None
        self.tls_context = server_context(config) if config.tls_cert else None
        if self.tls_context is not None:
            # Imported now, not inside the hub when the first client picks h2.
            importlib.import_module(".tunnel.h2session", __package__)
        self.relay_mode, mover, self.pipes = relay_movers(config)
        #: (client -> upstream, upstream -> client) movers for plain and TLS tunnels.
        self.plain_movers: tuple[Mover, Mover] = (mover, mover)
        self.tls_movers: tuple[Mover, Mover] = (DecryptMover(config.chunk_bytes), EncryptMover(config.chunk_bytes))
        self.proxy_protocol = config.proxy_protocol
        self.relay_limits = RelayLimits(config.idle_timeout, config.half_close_timeout, config.max_tunnel_lifetime)
        self.hangups: HangupWatch | None = None
        self.servers: list[TunnelServer] = []
        self.own_connections = OwnConnections()
        self.access_log: AccessLog | None = open_access_log(config.access_log, config.log_format)
        self.stats = Stats()
        #: Policy reloads applied so far (SIGHUP).
        self.generation = 0
        #: --bind-address: None keeps the dialler's fast path free of it.
        self.source = SourceAddresses(config.bind_address) if config.bind_address else None
        if self.source is not None:
            self.source.check()
        #: Pools and routes; None when every tunnel goes direct.
        self.router = Router(config, self.resolver, self.source) if config.upstream or config.routes else None
        #: Idle connections to origins, kept for forwarded requests to reuse.
        self.forward_idle = IdleConnections(config.forward_idle_timeout, config.forward_max_idle)
        self.metrics: MetricsServer | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.bound: list[tuple[str, int]] = []
        #: Every client being served: handshakes in progress and relaying tunnels.
        self.tunnels: set[Tunnel] = set()
        #: HTTP/2 client connections (their streams are in ``tunnels``), told to GOAWAY at stop().
        self.h2_sessions: set[Any] = set()
        self._no_tunnels = Event()
        self._no_tunnels.set()
        self.stopped = Event()
        #: True while a listener stopped accepting because the proxy was full.
        self.paused = False
        self._hub = get_hub()
        self.loop = self._hub.loop

    # --- the tunnels -----------------------------------------------------------------

    def serve(self, client: _socket.socket, address: Any) -> None:
        """Serve one accepted client in its own greenlet, switched to at once."""
        tunnel = Tunnel(self, client, address)
        self.track(tunnel)
        greenlet = tunnel.greenlet = RawGreenlet(tunnel.run, self._hub)
        greenlet.switch()

    def track(self, tunnel: Tunnel) -> None:
        """Count *tunnel* as open until its close() (HTTP/2 streams come here too)."""
        tunnels = self.tunnels
        if not tunnels:
            self._no_tunnels.clear()
        tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        """A tunnel is done (its close() calls this once)."""
        tunnels = self.tunnels
        tunnels.discard(tunnel)
        if not tunnels:
            self._no_tunnels.set()
        if self.paused:
            self._resume_accepting()

    def _resume_accepting(self) -> None:
        # A full proxy stopped accepting; a tunnel ending makes room again
        # (but an EMFILE back-off keeps its pause: its timer resumes).
        self.paused = False
        for server in self.servers:
            if server.started and not server.backing_off:
                if server.full():
                    self.paused = True
                else:
                    server.start_accepting()

    def open_count(self) -> int:
        """Clients being served: handshakes in progress plus relaying tunnels."""
        return len(self.tunnels)

    def trusts_proxy_header(self, address: tuple) -> bool:
        """True if a PROXY header is expected from this peer (a trusted load balancer)."""
        if not self.config.proxy_protocol:
            return False
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.config.proxy_protocol_from)

    # --- the process -----------------------------------------------------------------

    def start(self, listeners: list[Any] | None = None) -> list[tuple[str, int]]:
        """Start every listener; return their real (host, port). *listeners* are
        sockets already bound and listening (from a supervisor or systemd): they
        are served instead of binding ``config.listen``."""
        self.hangups = HangupWatch()
        if listeners is None:
            listeners = [make_listener(h, p, reuse_port=self.config.reuse_port) for h, p in self.config.listen]
        else:
            listeners = [adopt_listener(listener) for listener in listeners]
        bound = []
        for listener in listeners:
            server = TunnelServer(self, listener)
            server.start()
            self.servers.append(server)
            bound.append(server.address[:2])
        self.policy.set_listening(bound)
        self.bound = bound
        if self.config.metrics_listen is not None:
            self.metrics = MetricsServer(ProxyCollector(self), self.config.metrics_listen)
            self.metrics_address = self.metrics.start()
        if self.auth is not None:
            self.auth.start()
        if self.router is not None:
            self.router.start()
        return bound

    def reload_auth(self) -> None:
        """Re-read the auth file (SIGHUP); open tunnels are not touched."""
        if self.auth is not None:
            self.auth.reload()

    #: What SIGHUP can change; everything else needs a restart.
    RELOADABLE = (
        "allow_port",
        "allow_dest",
        "deny_dest",
        "allow_host",
        "deny_host",
        "host_rules_mode",
        "users",
        "forward_http",
        "forward_port",
        "via_name",
        "forwarded_for",
        "log_path",
        "proxy_pac",
    )

    def reload(self, new: Config) -> None:
        """Apply *new*'s policy (ports, destinations, names, users' tables) to tunnels that start from
        now on; open tunnels and listeners are not touched. Other changed
        settings are named in the log and left as they are."""
        fixed = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in self.RELOADABLE and getattr(new, f.name) != getattr(self.config, f.name)
        ]
        if fixed:
            log.warning("SIGHUP: these need a restart and keep their running values: %s", ", ".join(fixed))
        changes = {name: getattr(new, name) for name in self.RELOADABLE}
        policy = Policy(dataclasses.replace(self.config, **changes), self.bound)
        # One assignment; each handshake reads it once, so it sees the old policy or the new one.
        self.policy = policy
        self.config = dataclasses.replace(self.config, **changes)
        for warning in user_table_warnings(self.config):
            log.warning("SIGHUP: %s", warning)
        self.generation += 1
        log.info("SIGHUP: policy reloaded (generation %d)", self.generation)

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let tunnels finish for *drain_timeout* seconds, then
        end the rest."""
        if drain_timeout is None:
            drain_timeout = self.config.drain_timeout
        for server in self.servers:
            server.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.auth is not None:
            self.auth.stop()
        if self.router is not None:
            self.router.stop()
        for session in list(self.h2_sessions):
            session.drain()
        if self.tunnels:
            log.info("draining %d open tunnels for up to %g s", len(self.tunnels), drain_timeout)
            self._no_tunnels.wait(drain_timeout)
        if self.tunnels:
            log.info("closing %d tunnels still open", len(self.tunnels))
            for tunnel in list(self.tunnels):
                if tunnel.relay is not None:
                    tunnel.relay.abort("shutdown")
                elif tunnel.greenlet is not None and not tunnel.greenlet.dead:
                    kill_greenlet(tunnel.greenlet)
            self._no_tunnels.wait(KILL_WAIT_SECONDS)
        self.forward_idle.close()
        if self.hangups is not None:
            self.hangups.close()
        if self.pipes is not None:
            self.pipes.close()
        if self.access_log is not None:
            self.access_log.close()
        self.stopped.set()
