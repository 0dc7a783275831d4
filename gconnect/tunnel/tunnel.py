"""One request for a tunnel, from its client's arrival to its close.

:meth:`Tunnel.run` is the handshake, one method per step, read top to bottom::

    admit         the client side's way in (loop check, PROXY header, TLS), limits -> 400 / 403 / 429 / 503
    read request  one deadline from accept; the side's parser                      -> 400 / 405 / 408 / 431 / 505
    authenticate  the provider chain (file, helper, token, certificate), cached   -> 407 / 429 / 503
    check         port, name rules, the user's or group's rules, external ACL, route -> 403 / 503
    resolve       IP literals skip DNS; every address checked                      -> 403 / 502 / 504
    dial          Happy Eyeballs, or a pool of parents                             -> 502 / 503 / 504
    answer        the 200 (the point of no return)
    check name    the ClientHello's server name against the target                 -> closed (a TLS alert)
    relay         early bytes first, then the side's relay, driven by callbacks
    close         the one exit for every outcome

Before the answer any GConnectError becomes the side's refusal; anything else
is a bug, logged with its traceback and answered 500. The steps are the same
for every kind of client: what differs (how the request is read, how the
answer is sent, how bytes are relayed) is the :class:`~gconnect.tunnel.client.ClientSide`'s.

Ownership: the tunnel owns its outbound connection from the dial to
:meth:`close`, and its client side, which it closes there; the relay borrows
both until its ``on_done``. The handshake runs in a greenlet that is the
tunnel's until :meth:`Tunnel.run` returns (``greenlet``: a runner of
:mod:`~gconnect.tunnel.runners`, which serves another tunnel next, or one
set by whoever spawned it); after the answer callbacks drive the relay. Refusals, ended relays, takeovers by another
protocol and handshakes killed at shutdown all leave through :meth:`close`,
which releases what the tunnel held and tells the observer once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from greenlet import GreenletExit

from ..config import hostport
from ..errors import GConnectError
from . import namecheck, steps
from .client import ClientServed
from .observer import RecordDefaults

if TYPE_CHECKING:
    from .client import ClientSide, RelayHandle
    from .dial import Connection
    from .head import ConnectRequest
    from .pool import Parent, Pool
    from .services import TunnelServices

log = logging.getLogger(__name__)


class Tunnel(RecordDefaults):
    """One tunnel: the handshake's steps, the relay, one exit.

    Its public attributes are what observers read (the access log, the
    metrics): ``address`` (the client, or the one a PROXY header names),
    ``user``, ``identity`` (who vouched for the user), ``target`` (``host:port`` asked for), ``dialled`` (the address
    connected to), ``via`` (the parent proxy's URL), ``status`` (0 until
    answered), ``end_reason``, ``would_deny``, ``bytes_up``/``bytes_down``,
    ``side`` (``protocol``, ``stream_id``) and the monotonic times
    ``started``, ``resolved_at``, ``connected_at``, ``first_byte_at`` (0: not
    reached). Attributes most tunnels never change start as the class
    defaults below: a tunnel is made for every client, and each store counts.
    """

    #: The pool of parent proxies carrying this tunnel (None: direct), and the parent in it that does.
    pool: Pool | None = None
    parent: Parent | None = None
    #: The client as the limits count it, once admitted.
    who = ""
    #: Our (local, remote) addresses of the outbound connection, for the loop check.
    own: tuple | None = None
    outbound: Connection | None = None
    relay: RelayHandle | None = None
    #: The greenlet running the handshake (None once it is done, or never spawned).
    greenlet: Any = None
    _abort_reason = "shutdown"
    _closed = False

    def __init__(self, services: TunnelServices, side: ClientSide) -> None:
        self.services = services
        self.side = side
        #: The client; once the side is admitted (and at close), the one a PROXY header names.
        self.address = side.address
        self.started = time.monotonic()
        # One policy for the whole handshake (a user's own table replaces it in check()).
        self.policy = services.policy
        # Open from here: a tunnel that is made must be run (or closed).
        services.tunnels.add(self)

    def start(self, hub: Any, *, at_once: bool) -> None:
        """Run the steps in a greenlet (a runner of the services', whose parent
        is *hub*), the tunnel's until :meth:`run` returns: switched to *at_once*
        (from an accept callback), or scheduled for the loop's next turn (from
        another greenlet, such as an HTTP/2 connection's reader)."""
        greenlet = self.greenlet = self.services.runners.take(hub)
        if at_once:
            greenlet.switch(self.run)
        else:
            self.services.loop.run_callback(greenlet.switch, self.run)

    def run(self) -> None:
        """Serve the client until the relay has the sockets or the tunnel is closed."""
        try:
            request = self.handshake()
            if request is not None:
                self.start_relay(request.trailing)
                return
        except BaseException:
            # Killed (abort() at shutdown, or cancel()) at any wait, a refusal's
            # linger and the early bytes' send included: release and log on the way out.
            if self.status < 400:
                self.end_reason = self._abort_reason
            self.close()
            raise
        finally:
            # The greenlet may serve another tunnel next: nothing of ours may throw into it.
            self.greenlet = None
        self.close()

    def handshake(self) -> ConnectRequest | None:
        """The steps up to the answer: the request once the 200 is sent, or None
        when the tunnel ends here (refused, or served by another protocol)."""
        try:
            takeover = self.side.admit()
            self.address = self.side.address
            if takeover is not None:
                self.end_reason = takeover()  # another protocol served the connection to its end
                return None
            # The steps of steps.py called directly where a method would only pass them on.
            services = self.services
            # Count the client against the limits (503 past the proxy's, 429 past its address's).
            self.who = steps.admit(services, self.address)
            request = self.read_request()
            if services.auth is not None:
                self.authenticate(request)
            # The user's policy, --allow-port, the name rules, the byte quota, the external ACL, the route.
            self.policy, self.pool = steps.check(services, request, self, steps.CONNECT_PORTS)
            addresses = steps.resolve(services, request, self, self.policy, self.pool)
            self.dial(request, addresses)
            self.answer()
            policy = self.policy
            if policy.tls_name_check != "off" and policy.name_check_mode(request.port) != "off":
                return request if self.check_name(request) else None
            return request
        except GConnectError as exc:
            self.refuse(exc)
        except ClientServed as served:
            self.end_reason = served.end_reason
        except OSError as exc:
            # A client that vanished while we wrote to it.
            self.status = self.status or 499
            self.end_reason = "client_reset"
            log.debug("client %s: %s", self.address, exc)
        except Exception:
            log.exception("bug while serving %s (target %s)", self.address, self.target)
            if not self.status:
                self.refuse(GConnectError("internal error, see the proxy's log"))
        return None

    # --- the steps -------------------------------------------------------------------

    def read_request(self) -> ConnectRequest:
        """The request, as the client side reads it."""
        request = self.side.read_request()
        self.target = hostport(request.host, request.port)
        return request

    def authenticate(self, request: ConnectRequest) -> None:
        """Who the client is, if the proxy asks: :func:`.steps.authenticate`."""
        steps.authenticate(self.services, request, self, self.who, self.side.peer_certificate)

    def dial(self, request: ConnectRequest, addresses: list[str]) -> None:
        """Connect, directly or through the pool's parents: :func:`.steps.dial`."""
        outbound, self.parent = steps.dial(self.services, request, self, addresses, self.pool)
        self.outbound = outbound
        self.own = (outbound.sock.getsockname()[:2], (outbound.address, outbound.port))
        self.services.own_connections.add(self.own)

    def answer(self) -> None:
        """Tell the client its tunnel is open: from here on there is no HTTP to speak."""
        self.side.established()
        self.status = 200
        self.services.observer.opened(self)

    def check_name(self, request: ConnectRequest) -> bool:
        """On a port the TLS name check reads (the caller asked the policy): one ClientHello, read ahead of
        the relay by its own deadline, and the decision
        (:mod:`~gconnect.tunnel.namecheck`). True if the tunnel may relay (the
        side still delivers what was read); False if the check refused it (a
        TLS client is sent a fatal alert first)."""
        policy = self.policy
        mode = policy.name_check_mode(request.port)
        services = self.services
        deadline = services.loop.now() + min(namecheck.NAME_CHECK_SECONDS, services.config.header_timeout)
        side = self.side
        result = namecheck.check(
            request.trailing, lambda: side.read_ahead(deadline), request.host, bool(request.family), policy.hosts
        )
        self.sni = result.server_name
        self.sni_check = result.outcome
        if not namecheck.refuses(result.outcome, mode):
            return True
        self.end_reason = namecheck.NAME_CHECK_REFUSED
        if result.tls_client:
            side.end_with(namecheck.UNRECOGNIZED_NAME_ALERT)
        return False

    def start_relay(self, early: bytes) -> None:
        """Hand the client and the outbound connection to the side's relay,
        *early* (bytes that came with the request) first; this greenlet ends here."""
        outbound = self.outbound
        assert outbound is not None
        try:
            # The greenlet stays ours until the side returns: abort() may kill it in the early bytes' send.
            relay = self.side.start_relay(outbound, early, self._relay_done)
            if not self._closed:  # it may have ended already, inside start_relay
                self.relay = relay
                if self.services.usage is not None:
                    self.services.usage.attach(self)
        except OSError:
            self.end_reason = "upstream_reset"
            self.close()
        except Exception:
            log.exception("bug starting the relay for %s (target %s)", self.address, self.target)
            self.close()

    def _relay_done(self, relay: RelayHandle) -> None:
        self.bytes_up = relay.bytes_up
        self.bytes_down = relay.bytes_down
        self.end_reason = relay.end_reason
        self.first_byte_at = relay.first_byte_at
        self.close()

    # --- ending --------------------------------------------------------------------------

    def refuse(self, exc: GConnectError) -> None:
        """Record *exc* as the outcome and let the client side answer it."""
        self.status = exc.status
        self.end_reason = exc.code
        self.side.refuse(exc)

    def abort(self, reason: str) -> None:
        """End the tunnel now, whatever step it is at (shutdown): the relay is
        aborted, or the handshake's greenlet killed; either way it closes."""
        if self.relay is not None:
            self.relay.abort(reason)
        elif self.greenlet is not None and not self.greenlet.dead:
            self._abort_reason = reason
            self._throw_later(GreenletExit(), unless_answered=False)

    def cancel(self, exc: GConnectError) -> None:
        """The client gave up before its answer (any side may say so): raise
        *exc* in the handshake's greenlet at its next wait, and the tunnel
        refuses with it. Nothing happens once the 200 is sent (then the relay
        hears of it). Scheduled in order after the greenlet's own start."""
        self._throw_later(exc, unless_answered=True)

    def _throw_later(self, exc: BaseException, *, unless_answered: bool) -> None:
        """Raise *exc* in the handshake's greenlet from the loop's next callback,
        if the handshake still runs then (and, *unless_answered*, has no answer
        yet): the greenlet serves another tunnel once :meth:`run` has returned."""

        def throw() -> None:
            greenlet = self.greenlet
            if greenlet is not None and not greenlet.dead and not (unless_answered and self.status):
                greenlet.throw(exc)

        self.services.loop.run_callback(throw)

    def drain(self) -> None:
        """Shutdown has begun: ask the client side to finish (see ClientSide.drain)."""
        self.side.drain()

    def close(self) -> None:
        """The one exit: release what the tunnel held, close the outbound
        connection and the client side, and tell the observer; once, whatever
        calls it again."""
        if self._closed:
            return
        self._closed = True
        # The relay holds our _relay_done: without this, a cycle for the garbage collector.
        self.relay = None
        services = self.services
        self.address = self.side.address  # a refusal may come after a PROXY header
        if self.who:
            services.limits.release(self.who)
        if self.own is not None:
            services.own_connections.remove(self.own)
        if self.parent is not None:
            self.parent.release()
        outbound = self.outbound
        if outbound is not None:
            if outbound.writer is not None:
                outbound.writer.close()
            outbound.sock.close()
        self.side.close(self.status, self.end_reason)
        services.tunnels.discard(self)
        services.observer.closed(self)
