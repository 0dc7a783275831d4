"""Pools of parent proxies, their health, and the routes that choose them.

A :class:`Pool` is the parents of ``--upstream`` (the pool ``default``) or of a
config file's ``[upstreams.NAME]``. Its strategy orders the parents for each
tunnel: ``round-robin`` (the next one each time), ``least-connections``
(fewest open tunnels first, ties in round-robin order), ``first`` (the order
written: failover only), ``hash`` (by the target's name, so one target keeps
one parent while it is up).

Failover: the parents are tried in that order within one ``--connect-timeout``
budget, each given an equal share of what is left of it, so a silent parent
(stopped, or dropping SYNs) leaves time for the others. A refused or timed-out
connection, a parent that does not answer in its share, or one that answers
5xx sends the tunnel to the next parent; the client sees one answer, the last.
A parent's 4xx (403 from its policy, 407) is its verdict: passed on at once,
never retried.

Health, as this process sees it (nginx's max_fails/fail_timeout): a parent that
fails ``max_fails`` times in a row (refused, timed out, no HTTP answer) is out
for ``fail_timeout`` seconds, then one tunnel probes it; success brings it back,
failure keeps it out for another ``fail_timeout``. A 5xx is not counted: the
parent answered, and a dead target must not take out every parent that reports
it. With ``check = "connect"`` a TCP connect to each parent that is out, every
``check_interval``, brings it back sooner. When every parent is out, they are
tried anyway, in order: a pool does not refuse on its own. State changes are
logged once each.

:class:`Router` holds the pools and the routes: the first route whose patterns
match the target names its pool (or ``direct``); then ``--upstream-for``'s
patterns send matches to ``default``; a target matching nothing goes direct,
or to ``default`` when ``--upstream`` is given without ``--upstream-for``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import Any

import gevent
from gevent import get_hub

from ..config import Config, UpstreamPool
from ..defaults import DEFAULT_POOL, DIRECT
from ..errors import (
    GConnectError,
    OutboundError,
    OutboundTimeoutError,
    OutOfDescriptorsError,
    ParentProxyError,
    ParentProxyTimeoutError,
)
from .dial import SourceAddresses, open_connection
from .parent import Chain, Patterns

log = logging.getLogger(__name__)

#: Outcomes of one attempt through a parent, the metric's ``outcome`` label.
OUTCOMES = ("ok", "status_4xx", "status_5xx", "connect_error", "timeout")


class Parent:
    """One parent of a pool: how to reach it, its health, and what it carried."""

    __slots__ = ("active", "chain", "down_until", "fails", "outcomes", "pool", "probing", "up", "url")

    def __init__(self, chain: Chain, pool: str) -> None:
        self.chain = chain
        self.pool = pool
        #: The parent's URL without its password: log lines and metric labels.
        self.url = str(chain.parent)
        self.up = True
        self.fails = 0
        self.down_until = 0.0
        #: True while the one probe tunnel of a parent that is out is under way.
        self.probing = False
        #: Tunnels open through this parent now (least-connections).
        self.active = 0
        self.outcomes = dict.fromkeys(OUTCOMES, 0)

    def usable(self, now: float) -> bool:
        """True if a tunnel may try this parent now: it is up, or out long enough to be probed."""
        return self.up or (not self.probing and now >= self.down_until)

    def release(self) -> None:
        """A tunnel through this parent closed."""
        self.active -= 1


class Pool:
    """Parents sharing tunnels under one strategy; :meth:`open` fails over between them."""

    def __init__(self, spec: UpstreamPool, resolver: Any, source: SourceAddresses | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.parents = [Parent(Chain(url, (), resolver, source), spec.name) for url in spec.urls]
        self._source = source
        self._turn = 0
        self._checker: gevent.Greenlet | None = None

    def order(self, host: str) -> list[Parent]:
        """The parents in the order this tunnel tries them."""
        parents = self.parents
        strategy = self.spec.strategy
        if strategy == "first" or len(parents) == 1:
            return parents
        if strategy == "hash":
            start = zlib.crc32(host.lower().encode()) % len(parents)
        else:
            start = self._turn % len(parents)
            self._turn += 1
        order = parents[start:] + parents[:start]
        if strategy == "least-connections":
            order.sort(key=lambda parent: parent.active)  # stable: ties stay in round-robin order
        return order

    def open(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float,
        attempt_delay: float,
        tried: list[Parent],
        through: Callable[[Parent, float], Any] | None = None,
    ) -> tuple[Any, Parent]:
        """A connection through the first parent that takes the tunnel to ``host:port``,
        all tries within *connect_timeout*; each parent tried is appended to *tried*
        (the last one carried the tunnel, or gave the error). Raises the last parent's error.

        *through(parent, seconds)* asks one parent instead of a ``CONNECT`` to
        ``host:port`` (a forwarded request's plain connection to it): it counts
        what it opens in ``parent.active`` and raises an OutboundError as a
        ``CONNECT`` would, which counts toward the parent's health the same way."""
        loop = get_hub().loop
        deadline = loop.now() + connect_timeout
        tries, last_resort = self._tries(host, loop.now())
        error: GConnectError = OutboundTimeoutError(f"no parent of pool {self.name} answered in time")
        for index, parent in enumerate(tries):
            # The first try's share is exact: its message names the figure configured.
            left = deadline - loop.now() if index else connect_timeout
            if left <= 0:
                break
            if not parent.up and not last_resort:
                if parent.probing:
                    continue  # another tunnel took the probe meanwhile
                parent.probing = True  # this tunnel is the probe
            share = left / (len(tries) - index)
            tried.append(parent)
            try:
                if through is None:
                    connection = parent.chain.open(host, port, connect_timeout=share, attempt_delay=attempt_delay)
                    parent.active += 1
                else:
                    connection = through(parent, share)
            except OutOfDescriptorsError:
                parent.probing = False  # our shortage, not the parent's failure
                raise
            except OutboundError as exc:
                outcome = self._failed(parent, exc)
                if outcome == "status_4xx":
                    raise
                error = exc
                log.debug("pool %s: parent %s failed (%s), trying the next", self.name, parent.url, exc)
                continue
            except BaseException:
                parent.probing = False
                raise
            parent.outcomes["ok"] += 1
            self._healthy(parent, "a tunnel got through")
            return connection, parent
        raise error

    def _tries(self, host: str, now: float) -> tuple[list[Parent], bool]:
        """The parents to try, in order: the usable ones, or, if none is, every one as
        a last resort (then the second value is True)."""
        order = self.order(host)
        tries = [parent for parent in order if parent.usable(now)]
        return (tries, False) if tries else (order, True)

    def _failed(self, parent: Parent, exc: OutboundError) -> str:
        """Count a failed attempt; return its outcome."""
        status = exc.parent_status if isinstance(exc, ParentProxyError) else 0
        if status:
            outcome = "status_4xx" if status < 500 else "status_5xx"
            # It answered: alive, whatever it thinks of this target.
            self._healthy(parent, f"it answered {status}")
        else:
            timed_out = isinstance(exc, (ParentProxyTimeoutError, OutboundTimeoutError))
            outcome = "timeout" if timed_out else "connect_error"
            self._unhealthy(parent, exc)
        parent.outcomes[outcome] += 1
        return outcome

    def _healthy(self, parent: Parent, why: str) -> None:
        parent.fails = 0
        parent.probing = False
        if not parent.up:
            parent.up = True
            log.warning("pool %s: parent %s is back in rotation (%s)", self.name, parent.url, why)

    def _unhealthy(self, parent: Parent, exc: Exception) -> None:
        parent.fails += 1
        parent.probing = False
        if parent.up and parent.fails < self.spec.max_fails:
            return
        parent.down_until = get_hub().loop.now() + self.spec.fail_timeout
        if parent.up:
            parent.up = False
            log.warning(
                "pool %s: parent %s is out for %g s after %d failure(s) in a row: %s",
                self.name,
                parent.url,
                self.spec.fail_timeout,
                parent.fails,
                exc,
            )
        else:
            log.debug("pool %s: parent %s is still out: %s", self.name, parent.url, exc)

    # --- the active check -------------------------------------------------------------

    def start_checks(self) -> None:
        """Start the ``check = "connect"`` loop, if the pool has one."""
        if self.spec.check == "connect" and self._checker is None:
            self._checker = gevent.spawn(self._check_loop)

    def stop_checks(self) -> None:
        if self._checker is not None:
            self._checker.kill()
            self._checker = None

    def _check_loop(self) -> None:
        interval = self.spec.check_interval
        while True:
            gevent.sleep(interval)
            for parent in self.parents:
                if not parent.up and not parent.probing:
                    self._check(parent, interval)

    def _check(self, parent: Parent, timeout: float) -> None:
        """One TCP connect to a parent that is out; it is back if that works."""
        try:
            addresses = parent.chain.parent_addresses()
            connection = open_connection(
                addresses, parent.chain.parent.port, connect_timeout=timeout, attempt_delay=timeout, source=self._source
            )
        except GConnectError as exc:
            log.debug("pool %s: check of %s failed: %s", self.name, parent.url, exc)
            return
        if connection.writer is not None:
            connection.writer.close()
        connection.sock.close()
        self._healthy(parent, "its connect check succeeded")


class Router:
    """The pools and the routes of one proxy: which pool (or none) carries a tunnel."""

    def __init__(self, config: Config, resolver: Any, source: SourceAddresses | None) -> None:
        specs = list(config.upstreams)
        if config.upstream:
            specs.insert(0, UpstreamPool(DEFAULT_POOL, config.upstream))
        self.pools = {spec.name: Pool(spec, resolver, source) for spec in specs}
        #: (patterns, pool or None for direct), first match wins.
        self.routes: list[tuple[Any, Pool | None]] = [
            (Patterns(route.patterns).applies, None if route.via == DIRECT else self.pools[route.via])
            for route in config.routes
        ]
        if config.upstream_for:
            self.routes.append((Patterns(config.upstream_for).applies, self.pools[DEFAULT_POOL]))
        self.fallback = self.pools[DEFAULT_POOL] if config.upstream and not config.upstream_for else None

    def route(self, host: str, family: int) -> Pool | None:
        """The pool that carries a tunnel to *host* (an IP literal when *family* is set); None: direct."""
        for applies, pool in self.routes:
            if applies(host, family):
                return pool
        return self.fallback

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start_checks()

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop_checks()

    def snapshot(self) -> list[list[Any]]:
        """``[pool, url, up, {outcome: count}]`` per parent, for the metrics."""
        return [
            [pool.name, parent.url, int(parent.up), dict(parent.outcomes)]
            for pool in self.pools.values()
            for parent in pool.parents
        ]
