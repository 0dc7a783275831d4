"""Where a forwarded request goes: an idle connection for the same key, or a
new one, directly (Happy Eyeballs from ``--bind-address``) or to a parent of
the request's pool (which is sent the absolute form, with the parent's own
credentials). The caller owns the :class:`~.upstream.Upstream` it gets.
"""

from __future__ import annotations

from typing import Any

from gevent import get_hub

from ...errors import GConnectError, OutboundConnectError, OutboundTimeoutError
from ..dial import open_connection
from .context import ForwardContext
from .render import Outgoing
from .upstream import ReuseKey, Upstream


def direct(ctx: ForwardContext, user: str | None, addresses: list[str], port: int, fresh: bool) -> Upstream:
    """An idle connection to one of *addresses* (in order) for *user*, unless
    *fresh*; else a new one to the first that answers."""
    services = ctx.services
    config = services.config
    if not fresh:
        for address in addresses:
            upstream = services.idle_upstreams.take(ReuseKey(user, address, port, ""), config.bind_address)
            if upstream is not None:
                return upstream
    connection = open_connection(
        addresses,
        port,
        connect_timeout=config.connect_timeout,
        attempt_delay=config.attempt_delay,
        source=services.source,
    )
    return Upstream(connection, user, "", services.own_connections, None)


def through_parent(ctx: ForwardContext, user: str | None, pool: Any, host: str, fresh: bool, record: Any) -> Upstream:
    """A connection to the first usable parent of *pool* for *host* (an idle
    one for *user*, unless *fresh*); ``record.via`` names the parent tried last."""
    services = ctx.services
    config = services.config
    parents = pool.order(host)
    now = get_hub().loop.now()
    tries = [parent for parent in parents if parent.usable(now)] or parents
    error: GConnectError = OutboundConnectError(f"no parent of pool {pool.name} answered")
    for parent in tries:
        record.via = parent.url
        # Idle connections to a parent are found by the parent, whatever address it had.
        key = ReuseKey(user, "", 0, parent.url)
        upstream = None if fresh else services.idle_upstreams.take(key, config.bind_address)
        if upstream is not None:
            return upstream
        try:
            connection = open_connection(
                parent.chain.parent_addresses(),
                parent.chain.parent.port,
                connect_timeout=config.connect_timeout,
                attempt_delay=config.attempt_delay,
                source=services.source,
            )
        except (OutboundConnectError, OutboundTimeoutError) as exc:
            error = exc
            continue
        parent.active += 1
        upstream = Upstream(connection, user, parent.url, services.own_connections, parent)
        upstream.key = key
        return upstream
    raise error


def outgoing(ctx: ForwardContext, upstream: Upstream) -> Outgoing:
    """What the request head sent on *upstream* says besides the client's fields."""
    config = ctx.config
    parent = upstream.member.chain.parent if upstream.member is not None else None
    credentials = f"{parent.username}:{parent.password}" if parent and (parent.username or parent.password) else ""
    return Outgoing(
        via_name=config.via_name,
        client=ctx.address[0] if config.forwarded_for else "",
        absolute=parent is not None,
        credentials=credentials,
        # RFC 9110 §7.6.3: Via names the protocol the request was received in.
        received="2" if ctx.side is not None and ctx.side.protocol == "h2" else "",
    )
