"""Where a forwarded request goes: an idle connection for the same key, or a
new one, directly (dialled by :func:`~gconnect.tunnel.steps.dial`, as a
tunnel's) or to a parent of the request's pool (which is sent the absolute
form, with the parent's own credentials), chosen by the pool as for a tunnel.
The caller owns the :class:`~.upstream.Upstream` it gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..dial import open_connection
from .context import ForwardContext
from .render import Outgoing
from .upstream import ReuseKey, Upstream

if TYPE_CHECKING:
    from ..dial import Connection
    from ..pool import Parent


def idle(ctx: ForwardContext, user: str | None, addresses: list[str], port: int) -> Upstream | None:
    """An idle connection to one of *addresses* (in order) kept for *user*, or None."""
    services = ctx.services
    take, sources = services.idle_upstreams.take, services.config.bind_address
    for address in addresses:
        # A plain tuple: it hashes and compares as the ReuseKey it stands for,
        # and costs a fraction of making one.
        upstream = take((user, address, port, ""), sources)
        if upstream is not None:
            return upstream
    return None


def direct(ctx: ForwardContext, user: str | None, connection: Connection) -> Upstream:
    """*connection*, dialled for *user* (no parent), as the request's Upstream."""
    return Upstream(connection, user, "", ctx.services.own_connections, None)


def through_parent(ctx: ForwardContext, user: str | None, fresh: bool) -> Callable[[Parent, float], Upstream]:
    """How a pool's parent is asked for a forwarded request (the ``through``
    of :meth:`~gconnect.tunnel.pool.Pool.open`): an idle connection to it kept
    for *user* (unless *fresh*), else a new plain connection within *seconds*;
    the parent gets the absolute form."""
    services = ctx.services
    config = services.config

    def through(parent: Parent, seconds: float) -> Upstream:
        # Idle connections to a parent are found by the parent, whatever address it had.
        key = ReuseKey(user, "", 0, parent.url)
        upstream = None if fresh else services.idle_upstreams.take(key, config.bind_address)
        if upstream is not None:
            return upstream
        connection = open_connection(
            parent.chain.parent_addresses(),
            parent.chain.parent.port,
            connect_timeout=seconds,
            attempt_delay=config.attempt_delay,
            source=services.source,
        )
        parent.active += 1
        upstream = Upstream(connection, user, parent.url, services.own_connections, parent)
        upstream.key = key
        return upstream

    return through


#: The Outgoing of direct requests without Forwarded, by (Via name, received version): a frozen
#: value made from exactly these inputs, so one per pair serves every request (a frozen
#: dataclass costs as much to make as rendering the head it describes).
_DIRECT: dict[tuple[str, str], Outgoing] = {}


def outgoing(ctx: ForwardContext, upstream: Upstream) -> Outgoing:
    """What the request head sent on *upstream* says besides the client's fields."""
    config = ctx.config
    # RFC 9110 §7.6.3: Via names the protocol the request was received in.
    received = "2" if ctx.side is not None and ctx.side.protocol == "h2" else ""
    if upstream.member is None and not config.forwarded_for:
        key = (config.via_name, received)
        out = _DIRECT.get(key)
        if out is None:
            out = _DIRECT[key] = Outgoing(via_name=config.via_name, received=received)
        return out
    parent = upstream.member.chain.parent if upstream.member is not None else None
    credentials = f"{parent.username}:{parent.password}" if parent and (parent.username or parent.password) else ""
    return Outgoing(
        via_name=config.via_name,
        client=ctx.address[0] if config.forwarded_for else "",
        absolute=parent is not None,
        credentials=credentials,
        received=received,
    )
