"""The steps from a client's request to a connection toward its target, written once.

A tunnel (:class:`~gconnect.tunnel.tunnel.Tunnel`, for a ``CONNECT``) and a
forwarded ``http://`` request (:class:`~gconnect.tunnel.forward.exchange.Exchange`)
call these functions, in this order, so a check added here holds for both::

    admit         count the client against the limits                       -> 429 / 503
    authenticate  the provider chain (file, helper, token, certificate)     -> 407 / 429 / 503
    check         the user's or group's policy, the port rule, the name
                  rules (before any DNS lookup), the byte quota, the
                  external ACL, the route                                    -> 403 / 429 / 503
    resolve       IP literals skip DNS; a pool's parents resolve their own;
                  every address through the address policy                  -> 403 / 502 / 504
    dial          Happy Eyeballs from the source addresses, or the pool's
                  parents in failover order with their health               -> 502 / 503 / 504

Each step takes the :class:`~gconnect.tunnel.services.TunnelServices`, the
*target* (what was asked for: :class:`Target`) and the *record* the observer
reads (the tunnel itself, or a forwarded request's record), and writes its
outcome there (``identity``, ``user``, ``would_deny``, ``resolved_at``,
``via``, ``connected_at``, ``dialled``). What differs between the two is a
parameter, nothing else: the port rule (:data:`CONNECT_PORTS` is
``--allow-port``, :data:`FORWARD_PORTS` ``--forward-port``), and how a parent
of a pool is asked (``CONNECT`` through it by default; a forwarded request
passes its own ``through``, a plain connection to the parent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..config import hostport
from .dial import open_connection
from .limits import client_key
from .policy import Policy

if TYPE_CHECKING:
    from .pool import Parent, Pool
    from .services import TunnelServices

#: The port rules: a ``CONNECT`` is held to ``--allow-port``, a forwarded request to ``--forward-port``
#: (each replaced by a user's own table).
CONNECT_PORTS: Callable[[Policy, int], None] = Policy.check_port
FORWARD_PORTS: Callable[[Policy, int], None] = Policy.check_forward_port


class Target(Protocol):
    """What the client asked for (a ``ConnectRequest`` or a ``ForwardRequest``)."""

    # Read-only: the steps never change the request (a ConnectRequest is a named tuple).
    @property
    def host(self) -> str:
        """Lower-case name or canonical IP text."""

    @property
    def port(self) -> int: ...

    @property
    def family(self) -> int:
        """AF_INET/AF_INET6 for an IP literal, 0 for a name."""

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The request's header fields as received (Proxy-Authorization is read from them)."""


def admit(services: TunnelServices, address: tuple) -> str:
    """Count the client at *address* against the limits (503 past the proxy's,
    429 past its address's); its limits key, which the caller releases."""
    who = client_key(address[0])
    services.limits.admit(who)
    return who


def authenticate(
    services: TunnelServices, target: Target, record: Any, who: str, certificate: Callable[[], Any]
) -> None:
    """Who the client is, if the proxy asks (407/429/503 otherwise): the chain
    reads Proxy-Authorization and *certificate()*, the client's verified certificate."""
    auth = services.auth
    if auth is not None:
        values = [v for k, v in target.headers if k.lower() == b"proxy-authorization"]
        identity = record.identity = auth.identify(values, who, certificate())
        record.user = identity.user


def check(
    services: TunnelServices, target: Target, record: Any, port_rule: Callable[[Policy, int], None]
) -> tuple[Policy, Pool | None]:
    """The user's (or their group's) policy, *port_rule*, the name rules
    (before any DNS lookup, so a refused name is never queried), the user's
    byte quota, the external ACL helper; the policy that holds from here on, and the pool of parent
    proxies (None: direct) that carries the request."""
    policy = services.policy
    identity = record.identity
    if identity is not None and (policy.users or policy.groups):
        policy = policy.for_identity(identity.user, identity.group)
    port_rule(policy, target.port)
    if policy.hosts is not None:
        record.would_deny = policy.check_host(target.host, target.family)
        if record.would_deny:
            services.observer.would_deny(record, record.would_deny)
    if services.usage is not None:
        services.usage.check_quota(identity)
    external_acl = services.external_acl
    if external_acl is not None:
        external_acl.check(identity, record.address[0], target.host, target.port)
    router = services.router
    return policy, (router.route(target.host, target.family) if router is not None else None)


def resolve(services: TunnelServices, target: Target, record: Any, policy: Policy, pool: Pool | None) -> list[str]:
    """The addresses that may be dialled, each checked by *policy*. A name
    a pool carries is its parents' to resolve (under their own policy)."""
    if target.family:
        addresses = [target.host]
    elif pool is not None:
        if services.timings:
            record.resolved_at = time.monotonic()
        return []
    else:
        addresses = services.resolver.resolve(target.host)
    if services.timings:
        record.resolved_at = time.monotonic()
    return policy.filter_addresses(target.host, target.port, addresses)


def dial(
    services: TunnelServices,
    target: Target,
    record: Any,
    addresses: list[str],
    pool: Pool | None,
    through: Callable[[Parent, float], Any] | None = None,
) -> tuple[Any, Parent | None]:
    """Connect: directly to the first of *addresses* that answers (a
    :class:`~gconnect.tunnel.dial.Connection`), or through *pool*'s parents
    (*through* asks one parent within its share of the connect timeout; by
    default a ``CONNECT`` to the target). The connection and the parent that carried it."""
    config = services.config
    parent = None
    if pool is not None:
        tried: list[Any] = []
        try:
            outbound, parent = pool.open(
                target.host,
                target.port,
                connect_timeout=config.connect_timeout,
                attempt_delay=config.attempt_delay,
                tried=tried,
                through=through,
            )
        finally:
            # The parent that carried it, or the last one that failed it.
            record.via = tried[-1].url if tried else None
    else:
        outbound = open_connection(
            addresses,
            target.port,
            connect_timeout=config.connect_timeout,
            attempt_delay=config.attempt_delay,
            source=services.source,
        )
    if services.timings:
        record.connected_at = time.monotonic()
    record.dialled = hostport(outbound.address, outbound.port)
    return outbound, parent
