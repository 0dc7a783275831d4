"""The instances of a fleet sharing their counters through Redis or Valkey
(``--shared-state redis://HOST:PORT/DB``), with the maintained ``redis`` package.

Only the keeper thread calls :meth:`Fleet.sync`, once a period; nothing here
runs in a hub. Each call is two round trips:

1. in one MULTI/EXEC: ``HINCRBY gconnect:totals KEY DELTA`` for what this
   instance's totals grew by since the last push; this instance's gauges as the
   hash ``gconnect:gauges:INSTANCE`` (replaced whole, expiring after
   ``ttl_seconds`` unless renewed, so a dead instance's gauges vanish); its
   heartbeat in the sorted set ``gconnect:instances``; and the fleet's totals
   (``HGETALL gconnect:totals``);
2. the other live instances' gauge hashes.

Any error raises :class:`FleetError`; the caller keeps its deltas and pushes
them at the next success. If the connection drops after EXEC was sent and
before its reply, Redis may have applied the increments: they are sent again,
the one case where a total can be counted twice (a count too high, never lost).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

TOTALS = "gconnect:totals"
GAUGES = "gconnect:gauges:"
INSTANCES = "gconnect:instances"
#: A random value set once per Redis data set: if it changes, Redis lost its data.
EPOCH = "gconnect:epoch"


class FleetError(Exception):
    """Redis could not be reached or answered an error."""


class Fleet:
    """This instance's link to the fleet's Redis."""

    def __init__(self, url: str, period: float) -> None:
        try:
            import redis
        except ImportError as exc:
            raise RuntimeError("--shared-state needs the redis package: pip install 'gconnect[redis]'") from exc
        self._errors = (redis.RedisError, OSError)
        timeout = max(1.0, 2 * period)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False, decode_responses=True
        )
        self.url = url
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        #: A gauge hash not renewed for this long is a dead instance's.
        self.ttl_seconds = max(10.0, 5 * period)

    def sync(self, deltas: Mapping[str, int], gauges: Mapping[int, int]) -> tuple[dict[str, int], dict[int, int]]:
        """Push *deltas* (added to the fleet's totals) and this instance's
        *gauges* (by key hash); return the fleet's totals and the other
        instances' gauges summed. Raises FleetError."""
        try:
            return self._sync(deltas, gauges)
        except self._errors as exc:
            raise FleetError(f"{type(exc).__name__}: {exc}") from exc

    def _sync(self, deltas: Mapping[str, int], gauges: Mapping[int, int]) -> tuple[dict[str, int], dict[int, int]]:
        now = time.time()
        mine = GAUGES + self.instance
        pipe = self.client.pipeline(transaction=True)
        for key, delta in deltas.items():
            pipe.hincrby(TOTALS, key, delta)
        pipe.delete(mine)
        if gauges:
            pipe.hset(mine, mapping={str(h): value for h, value in gauges.items()})
            pipe.pexpire(mine, int(self.ttl_seconds * 1000))
        pipe.zadd(INSTANCES, {self.instance: now})
        pipe.zremrangebyscore(INSTANCES, "-inf", now - self.ttl_seconds)
        pipe.zrange(INSTANCES, 0, -1)
        pipe.hgetall(TOTALS)
        *_, instances, totals = pipe.execute()
        others = [name for name in instances if name != self.instance]
        remote: dict[int, int] = {}
        if others:
            pipe = self.client.pipeline(transaction=False)
            for name in others:
                pipe.hgetall(GAUGES + name)
            for found in pipe.execute():
                for h, value in found.items():
                    remote[int(h)] = remote.get(int(h), 0) + int(value)
        return {key: int(value) for key, value in totals.items()}, remote

    def epoch(self) -> str:
        """The data set's epoch marker (set now if Redis has none). Raises FleetError."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(EPOCH, os.urandom(8).hex(), nx=True)
            pipe.get(EPOCH)
            return str(pipe.execute()[-1])
        except self._errors as exc:
            raise FleetError(f"{type(exc).__name__}: {exc}") from exc

    def drop(self, keys: list[str]) -> None:
        """Forget totals of periods gone by (FleetError if Redis cannot be told)."""
        if keys:
            try:
                self.client.hdel(TOTALS, *keys)
            except self._errors as exc:
                raise FleetError(str(exc)) from exc

    def leave(self) -> None:
        """At stop: our gauges and heartbeat go at once (best effort)."""
        try:
            self.client.delete(GAUGES + self.instance)
            self.client.zrem(INSTANCES, self.instance)
        except self._errors:
            pass
        self.client.close()
