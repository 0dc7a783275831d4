"""The composition root: one process's services, listeners and protocols.

:class:`Proxy` builds the :class:`~gconnect.tunnel.services.TunnelServices`
from the one :class:`~gconnect.config.Config` (with the observer the
operations layer gives it), the ALPN table (``h2`` ->
:class:`~gconnect.tunnel.h2.H2Protocol`, only when there is a TLS listener),
and a :class:`~gconnect.listener.Listener` per listening address, and serves
each accepted client as a :class:`~gconnect.tunnel.tunnel.Tunnel` with an
:class:`~gconnect.tunnel.http1.HTTP1Side`. SIGHUP swaps the services for a
copy with the new policy; SIGTERM stops accepting, drains and aborts.

It is the only module that knows every piece; the data path itself is read in
``gconnect/tunnel/tunnel.py``.
"""

from __future__ import annotations

import _socket
import dataclasses
import logging
from typing import Any

from gevent import get_hub
from gevent.event import Event

from .config import Config
from .listener import Listener, adopt_listener, make_listener
from .state.tally import Tally
from .tunnel.http1 import HTTP1Side
from .tunnel.limits import REFUSAL_SLOTS
from .tunnel.observer import TunnelObserver
from .tunnel.policy import Policy
from .tunnel.relay import HangupWatch
from .tunnel.services import ConnectionProtocol, TunnelServices
from .tunnel.tunnel import Tunnel

log = logging.getLogger(__name__)

#: How long stop() waits for killed handshakes and aborted relays to close.
KILL_WAIT_SECONDS = 5.0


class Proxy:
    """One process's proxy: its services, its listeners, and their life cycle."""

    def __init__(
        self,
        config: Config,
        *,
        observer: TunnelObserver | None = None,
        gauges: Tally | None = None,
        totals: Tally | None = None,
    ) -> None:
        """*gauges* and *totals*: the tallies shared with the other workers (in-process ones if None)."""
        protocols: dict[str, ConnectionProtocol] = {}
        if config.tls_cert:
            # Imported only for a TLS listener, and now, not in the hub on the first h2 client.
            from .tunnel.h2 import H2Protocol

            protocols["h2"] = H2Protocol(self.current_services)
        #: What tunnels use; replaced whole by reload().
        self.services = TunnelServices.from_config(
            config, observer=observer, protocols=protocols, gauges=gauges, totals=totals
        )
        self.listeners: list[Listener] = []
        self.bound: list[tuple[str, int]] = []
        #: Policy reloads applied so far (SIGHUP).
        self.generation = 0
        self.stopped = Event()
        self._hub = get_hub()

    @property
    def config(self) -> Config:
        return self.services.config

    def current_services(self) -> TunnelServices:
        """The services in force now (a long-lived HTTP/2 connection's new streams use these)."""
        return self.services

    # --- the clients -----------------------------------------------------------------

    def serve(self, client: _socket.socket, address: Any) -> None:
        """Serve one accepted client in its own greenlet, switched to at once."""
        services = self.services
        Tunnel(services, HTTP1Side(services, client, address)).start(self._hub, at_once=True)

    def open_count(self) -> int:
        """Clients being served: handshakes in progress plus relaying tunnels."""
        return len(self.services.tunnels)

    def _listener_full(self) -> None:
        # Told only while a listener waits for room, so a tunnel's close pays nothing otherwise.
        self.services.tunnels.on_closed = self._tunnel_closed

    def _tunnel_closed(self) -> None:
        # A full proxy stopped accepting; a tunnel ending makes room again.
        waiting = False
        for listener in self.listeners:
            listener.resume_if_room()
            waiting = waiting or listener.paused
        self.services.tunnels.on_closed = self._tunnel_closed if waiting else None

    # --- the process -----------------------------------------------------------------

    def start(self, listeners: list[Any] | None = None) -> list[tuple[str, int]]:
        """Start every listener; return their real (host, port). *listeners* are
        sockets already bound and listening (from a supervisor or systemd): they
        are served instead of binding ``config.listen``."""
        config = self.config
        self.services = dataclasses.replace(self.services, hangups=HangupWatch())
        if listeners is None:
            listeners = [make_listener(h, p, reuse_port=config.reuse_port) for h, p in config.listen]
        else:
            listeners = [adopt_listener(listener) for listener in listeners]
        bound = []
        tunnels = self.services.tunnels
        for sock in listeners:
            listener = Listener(
                sock,
                self.serve,
                count_open=tunnels.count,
                limit=config.max_clients + REFUSAL_SLOTS,
                on_full=self._listener_full,
            )
            listener.start()
            self.listeners.append(listener)
            bound.append(listener.address[:2])
        self.services.policy.set_listening(bound)
        self.bound = bound
        services = self.services
        if services.auth is not None:
            services.auth.start()
            for line in services.auth.describe():
                log.info("auth %s", line)
        if services.external_acl is not None:
            services.external_acl.start()
        if services.router is not None:
            services.router.start()
        return bound

    def reload_auth(self) -> None:
        """Re-read the providers' files (SIGHUP: the auth file, the JWKS file)
        and forget the external ACL's answers; open tunnels are not touched."""
        if self.services.auth is not None:
            self.services.auth.reload()
        if self.services.external_acl is not None:
            self.services.external_acl.clear()

    #: What SIGHUP can change; everything else needs a restart.
    RELOADABLE = (
        "allow_port",
        "allow_dest",
        "deny_dest",
        "allow_host",
        "deny_host",
        "host_rules_mode",
        "tls_name_check",
        "tls_name_check_ports",
        "users",
        "groups",
        "forward_http",
        "forward_port",
        "via_name",
        "forwarded_for",
        "log_path",
        "proxy_pac",
        "rate_per_user",
        "rate_per_client",
        "rate_total",
        "burst_per_user",
        "burst_per_client",
        "burst_total",
        "bucket_initial",
        "quota_bytes",
        "quota_period",
        "quota_close",
    )

    def reload(self, new: Config) -> list[str]:
        """Apply *new*'s policy (ports, destinations, names, users' tables) to
        tunnels that start from now on; open tunnels and listeners are not
        touched. Returns the changed settings that need a restart (they keep
        their running values)."""
        current = self.config
        fixed = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in self.RELOADABLE and getattr(new, f.name) != getattr(current, f.name)
        ]
        config = dataclasses.replace(current, **{name: getattr(new, name) for name in self.RELOADABLE})
        # One assignment; each handshake holds the services it started with.
        self.services = self.services.with_config(config, Policy(config, self.bound))
        self.generation += 1
        return fixed

    def close_listeners(self) -> None:
        """Accept no more: close this process's copy of every listening socket
        (the first step of stop(); a signal handler calls it at once)."""
        for listener in self.listeners:
            listener.close()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let tunnels finish for *drain_timeout* seconds, then
        end the rest."""
        services = self.services
        if drain_timeout is None:
            drain_timeout = services.config.drain_timeout
        self.close_listeners()
        if services.auth is not None:
            services.auth.stop()
        if services.external_acl is not None:
            services.external_acl.stop()
        if services.router is not None:
            services.router.stop()
        tunnels = services.tunnels
        for tunnel in tunnels:
            tunnel.drain()
        if len(tunnels):
            log.info("draining %d open tunnels for up to %g s", len(tunnels), drain_timeout)
            tunnels.wait_empty(drain_timeout)
        if len(tunnels):
            log.info("closing %d tunnels still open", len(tunnels))
            for tunnel in tunnels:
                tunnel.abort("shutdown")
            tunnels.wait_empty(KILL_WAIT_SECONDS)
        if len(tunnels):
            # Their relays may still use the pipes and the hang-up watch: the process exit releases them.
            log.warning("%d tunnels did not close in time", len(tunnels))
        else:
            services.close()
        self.stopped.set()
