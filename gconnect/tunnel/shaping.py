"""Bandwidth limits on the relay: shared token buckets and the limited mover.

A limited tunnel's two directions each get a :class:`Throttle`: the buckets
that direction draws on (its user's, its client address's, the service's;
one per direction each, shared by every tunnel with the same key) and the
mover it had. Its :class:`LimitedMover` reads at most what every bucket
allows; when one holds too little it stops the direction's reader and sleeps
on a libev timer. Nothing is buffered beyond what the relay holds today: the
unread bytes wait in the kernel, and TCP's window slows the sender. Copy,
splice and the TLS movers all take the cap on their one read, so all of them
are limited alike. Unlimited tunnels keep their plain movers and never reach
this module.

Across processes (``--workers``, a fleet) each key's active limited tunnels
are counted in the ``gauges`` tally (``bw:user:alice``, ``bw:client:ADDR``,
``bw:total``), and every bucket's rate and burst are scaled by this process's
share of them (mine / total; in one process that is 1) when a tunnel here
starts using it and at each :meth:`Shaper.rebalance` (the usage tick).

Ownership: the :class:`Shaper` owns the buckets and the rebalancing timer;
a throttle owns its timer. :meth:`Shaper.attach` takes a relay's halves and
:meth:`Shaper.detach` gives them back (the tunnel's close), releasing the
buckets no tunnel uses any more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from gevent import sleep

from ..state.tally import Tally
from .bucket import TokenBucket
from .movers import Direction, Half, Mover

#: A paused direction waits until it may read what its slowest bucket earns in
#: this long (at most one of its mover's reads, ``Mover.size``): about 100
#: wake-ups a second at any rate, where waiting for a few KiB would wake a
#: 10 MB/s download a thousand times.
WAKE_SECONDS = 0.01
#: The longest a paused direction sleeps before it looks again, so a rate raised
#: by SIGHUP or a larger share of a shared limit applies within it.
MAX_WAIT_SECONDS = 1.0


#: What caps one allowance where no mover reads (an HTTP/2 stream, a forwarded
#: message): a plain mover's read size.
READ_SIZE = Mover()


class Limit(NamedTuple):
    """A configured limit: bytes per second and the burst, for the whole key
    (every process and instance together)."""

    rate: int
    burst: int


class SharedBuckets:
    """The two buckets (up, down) of one key, and how many tunnels here use them."""

    __slots__ = ("down", "key", "limit", "up", "users")

    def __init__(self, key: str, limit: Limit, initial: float, now: float) -> None:
        self.key = key
        self.limit = limit
        self.users = 0
        level = limit.burst * initial
        self.up = TokenBucket(limit.rate, limit.burst, level, now)
        self.down = TokenBucket(limit.rate, limit.burst, level, now)

    def scale(self, share: float, now: float) -> None:
        """This process's *share* (0 < share <= 1) of the key's limit."""
        rate, burst = self.limit.rate * share, self.limit.burst * share
        for bucket in (self.up, self.down):
            if bucket.rate != rate or bucket.burst != burst:
                bucket.set_rate(rate, burst, now)


class Throttle:
    """One limited direction: its buckets, the mover it had, and its pause."""

    __slots__ = ("args", "buckets", "callback", "loop", "mover", "need", "timer")

    def __init__(self, buckets: list[TokenBucket], mover: Mover, loop: Any) -> None:
        self.buckets = buckets
        #: The direction's own mover; its read size caps the allowance.
        self.mover = mover
        self.loop = loop
        self.timer: Any = None
        self.callback: Callable[..., Any] | None = None
        self.args: tuple = ()
        self.need = 1
        self.refresh()

    def refresh(self) -> None:
        """Recompute the least a read waits for, from the buckets' rates and bursts now."""
        need = float(self.mover.size)
        for bucket in self.buckets:
            need = min(need, bucket.burst, bucket.rate * WAKE_SECONDS)
        self.need = max(1, int(need))

    def allowance(self, now: float) -> int:
        """Bytes the direction may read now: what its emptiest bucket holds, at most a read."""
        allow = self.mover.size
        for bucket in self.buckets:
            level = bucket.available(now)
            if level < allow:
                allow = level
        return allow

    def take(self, n: int) -> None:
        for bucket in self.buckets:
            bucket.take(n)

    def wait_seconds(self, now: float) -> float:
        """How long to wait until every bucket holds :attr:`need` (bounded, so
        new rates apply within :data:`MAX_WAIT_SECONDS`)."""
        wait = max((bucket.wait(self.need, now) for bucket in self.buckets), default=0.0)
        return min(max(wait, 0.001), MAX_WAIT_SECONDS)

    def after(self, seconds: float, callback: Callable[..., Any], *args: Any) -> None:
        """Call *callback* once in *seconds* on the throttle's timer (:meth:`cancel` stops it)."""
        timer = self.timer = self.loop.timer(seconds)
        timer.start(callback, *args)

    def pause(self, half: Direction, now: float) -> None:
        """Stop reading *half* until every bucket holds :attr:`need` again."""
        reader = half.reader
        # A stopped watcher forgets its callback: keep it to start it again the same way.
        self.callback, self.args = reader.callback, reader.args
        reader.stop()
        self.after(self.wait_seconds(now), self.resume, half)

    def resume(self, half: Direction) -> None:
        self.cancel()
        reader = half.reader
        if reader is not None and self.callback is not None and not reader.active:
            reader.start(self.callback, *self.args)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None


class LimitedMover(Mover):
    """The mover of a limited direction: the cap and the pause around the
    direction's own mover (``half.throttle.mover``). One serves every
    limited direction of a process."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def pump(self, half: Half, size: int = 0) -> int:
        throttle: Throttle = half.throttle
        now = self.loop.now()
        allow = throttle.allowance(now)
        if allow < throttle.need:
            throttle.pause(half, now)
            return 0
        n = throttle.mover.pump(half, allow)
        if half.mover is not self:
            # --relay auto handed the direction from copy to splice: splice under the cap from now on.
            throttle.mover = half.mover
            half.mover = self
            throttle.refresh()
        if n:
            throttle.take(n)
        return n

    def flush(self, half: Half) -> int:
        return half.throttle.mover.flush(half)  # type: ignore[no-any-return]

    def finish(self, half: Half) -> bool:
        return half.throttle.mover.finish(half)  # type: ignore[no-any-return]

    def drop(self, half: Half) -> None:
        half.throttle.mover.drop(half)


class Shaped(NamedTuple):
    """What :meth:`Shaper.attach` took of one tunnel, for :meth:`Shaper.detach`."""

    halves: tuple[Direction, Direction]
    shared: tuple[SharedBuckets, ...]


class Shaper:
    """The buckets of one process, by key, and their shares of the limits."""

    def __init__(self, gauges: Tally, loop: Any, initial: float) -> None:
        self.gauges = gauges
        self.loop = loop
        self.initial = initial
        self.buckets: dict[str, SharedBuckets] = {}
        self.mover = LimitedMover(loop)
        #: Each limited tunnel's halves and buckets, by the tunnel (for a reload's new limits).
        self.shaped: dict[Any, Shaped] = {}

    def attach(self, owner: Any, halves: tuple[Direction, Direction], limits: Iterable[tuple[str, Limit]]) -> None:
        """Limit both *halves* of *owner*'s relay by *limits* (key, limit). Halves
        with movers (a :class:`Half`) get the limited mover; a direction without
        one (an HTTP/2 stream's) only its throttle, which its relay consults."""
        shared = self.acquire(limits)
        up, down = halves
        if isinstance(up, Half) and isinstance(down, Half):
            up.throttle = Throttle([b.up for b in shared], up.mover, self.loop)
            down.throttle = Throttle([b.down for b in shared], down.mover, self.loop)
            up.mover = down.mover = self.mover
        else:
            up.throttle = Throttle([b.up for b in shared], READ_SIZE, self.loop)
            down.throttle = Throttle([b.down for b in shared], READ_SIZE, self.loop)
        self.shaped[owner] = Shaped(halves, tuple(shared))

    def pacer(self, limits: Iterable[tuple[str, Limit]], *, up: bool = False) -> Pacer:
        """The buckets of *limits* for a greenlet that moves bytes itself (a
        forwarded response; *up*: a forwarded request's body)."""
        return Pacer(self, self.acquire(limits), up=up)

    def acquire(self, limits: Iterable[tuple[str, Limit]]) -> list[SharedBuckets]:
        """The buckets of *limits* (key, limit), counted as used by one more tunnel here."""
        now = self.loop.now()
        shared = []
        for key, limit in limits:
            buckets = self.buckets.get(key)
            if buckets is None:
                buckets = self.buckets[key] = SharedBuckets(key, limit, self.initial, now)
            total = self.gauges.add(key, 1)
            buckets.users += 1
            # Every new tunnel, not only a key's first here: the other processes'
            # tunnels opened meanwhile shrink our share before the next rebalance.
            self._scale(buckets, now, total, self.gauges.mine(key))
            shared.append(buckets)
        return shared

    def detach(self, owner: Any) -> None:
        """*owner*'s relay has ended: stop its timers and let go of its buckets."""
        shaped = self.shaped.pop(owner, None)
        if shaped is None:
            return
        for half in shaped.halves:
            half.throttle.cancel()
        self.release(shaped.shared)

    def release(self, shared: Iterable[SharedBuckets]) -> None:
        """One tunnel fewer uses *shared*; buckets no tunnel uses are forgotten."""
        for buckets in shared:
            self.gauges.add(buckets.key, -1)
            buckets.users -= 1
            if not buckets.users:
                del self.buckets[buckets.key]

    def reconfigure(self, limit_of: Callable[[str], Limit | None]) -> None:
        """New limits (SIGHUP) for the open tunnels: *limit_of(key)* is a key's
        limit now, None if it has none any more (its buckets stop counting)."""
        for key, buckets in self.buckets.items():
            limit = limit_of(key)
            buckets.limit = limit if limit is not None else Limit(0, 0)
        for shaped in self.shaped.values():
            live = [b for b in shaped.shared if b.limit.rate > 0]
            up, down = shaped.halves
            up.throttle.buckets = [b.up for b in live]
            down.throttle.buckets = [b.down for b in live]
        self.rebalance()

    def rebalance(self) -> None:
        """Scale every bucket to this process's share of its key's tunnels (each usage tick)."""
        now = self.loop.now()
        gauges = self.gauges
        for key, buckets in self.buckets.items():
            self._scale(buckets, now, gauges.total(key), gauges.mine(key))
        for shaped in self.shaped.values():
            for half in shaped.halves:
                half.throttle.refresh()

    @staticmethod
    def _scale(buckets: SharedBuckets, now: float, total: int, mine: int) -> None:
        if buckets.limit.rate <= 0:
            return
        buckets.scale(min(1.0, max(mine, 1) / max(total, 1)), now)


class Pacer:
    """A limit for a greenlet that moves the bytes itself (a forwarded
    response, or with *up* a forwarded request's body): it sleeps where a
    relay's direction would stop its reader."""

    def __init__(self, shaper: Shaper, shared: list[SharedBuckets], *, up: bool = False) -> None:
        self.shaper = shaper
        self.shared = shared
        self.throttle = Throttle([b.up if up else b.down for b in shared], READ_SIZE, shaper.loop)

    def allowance(self) -> int:
        """Bytes that may be read now, waiting (gevent.sleep) until it is worth a read."""
        throttle, loop = self.throttle, self.shaper.loop
        while True:
            allow = throttle.allowance(loop.now())
            if allow >= throttle.need:
                return allow
            sleep(throttle.wait_seconds(loop.now()))

    def take(self, n: int) -> None:
        self.throttle.take(n)

    def close(self) -> None:
        self.shaper.release(self.shared)
