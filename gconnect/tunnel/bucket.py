"""The token bucket: how many bytes a bandwidth limit lets through, and when.

Sans I/O: the caller passes the time (the loop's clock, in seconds) and moves
the bytes. A bucket holds at most ``burst`` bytes' worth of tokens and gains
``rate`` per second; a read may take at most what it holds. So over any
interval of T seconds a bucket lets through at most ``level + rate * T``
bytes, where ``level`` is what it held at the start: a bucket made with
``initial`` tokens (not full) bounds the first second by ``initial + rate``,
whatever the reader does (a bucket that starts full lets a whole burst through
at once: go-gost/gost#555). Every figure is a float, so rates below one byte
per tick and shares of a rate (:meth:`TokenBucket.set_rate`) lose nothing.
"""

from __future__ import annotations


class TokenBucket:
    """Tokens (bytes) gained at ``rate`` per second, held up to ``burst``."""

    __slots__ = ("burst", "level", "rate", "updated")

    def __init__(self, rate: float, burst: float, initial: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a bucket needs rate > 0 and burst > 0")
        self.rate = rate
        self.burst = burst
        self.level = min(max(initial, 0.0), burst)
        self.updated = now

    def refill(self, now: float) -> float:
        """Add what the time since the last call earned (a clock that went back earns nothing); the level."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.level = min(self.burst, self.level + elapsed * self.rate)
            self.updated = now
        return self.level

    def available(self, now: float) -> int:
        """Whole bytes that may be taken now."""
        return int(self.refill(now))

    def take(self, n: int) -> None:
        """*n* bytes went through (at most :meth:`available` said, so the level stays >= 0)."""
        self.level -= n

    def wait(self, n: float, now: float) -> float:
        """Seconds until *n* tokens are held (0 if they are; *n* is capped at the burst)."""
        missing = min(n, self.burst) - self.refill(now)
        return missing / self.rate if missing > 0 else 0.0

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """A new rate and burst from *now* on (a reload, or this process's share
        of a limit changed); tokens earned so far are kept, up to the new burst."""
        if rate <= 0 or burst <= 0:
            raise ValueError("a bucket needs rate > 0 and burst > 0")
        self.refill(now)
        self.rate = rate
        self.burst = burst
        self.level = min(self.level, burst)
