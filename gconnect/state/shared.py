"""The :class:`~gconnect.state.tally.Tally` of a process that owns a row of a
:class:`~gconnect.state.table.Region`: its own share in its row, the total the
sum of every row handed out (the base and fleet rows included).

Keys are hashed to 64 bits with BLAKE2b, the same in every process and every
instance (Python's ``hash`` is salted per process). A key that does not fit (a
table full, a total's name longer than :data:`~gconnect.state.table.MAX_KEY_BYTES`)
is counted in this process only, logged once and counted in ``overflows``.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import logging
import re
import time

from .table import BASE_ROW, FIRST_WORKER_ROW, FLEET_ROW, H_HANDED_OUT, MAX_KEY_BYTES, Region, Table

log = logging.getLogger(__name__)

#: Hashes remembered: a handshake's keys (its address, its user) are hashed once.
HASH_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=HASH_CACHE_SIZE)
def key_hash(key: str) -> int:
    """*key*'s 64-bit hash as a signed int, never 0 (an empty slot)."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)
    return h or 1


class SharedTally:
    """A tally over a region's *kind* table (``"gauges"`` or ``"totals"``), this process owning *row*."""

    def __init__(self, region: Region, kind: str, row: int) -> None:
        self.region = region
        self.kind = kind
        self.row = row
        self.own: Table = region.table(kind, row)
        self._words = self.own.words
        self._writes_at = self.own.writes_at if kind == "totals" else 0
        #: Every other row handed out so far: where its words are, and the row.
        self._others: list[tuple[int, int, int, int, int, int, Table]] = []
        self._handed_out = 0
        #: key -> (its slot in our row, its hash): a handshake's add finds its slot in one read.
        self._slots: dict[str, tuple[int, int]] = {}
        #: Keys counted in this process only (no room in the table).
        self.local: dict[str, int] = {}
        #: Keys that did not fit, since the start.
        self.overflows = 0

    def _sum_others(self, h: int) -> int:
        words = self._words
        if words[H_HANDED_OUT] != self._handed_out:
            self._handed_out = handed_out = self.region.handed_out
            others = [self.region.table(self.kind, row) for row in self._rows_to_read(handed_out)]
            self._others = [(t.used_at, t.start, t.first, t.buffer_words, t.mask, t.stride, t) for t in others]
        total = 0
        # Table.get inlined: every check reads every row, and most reads end at the first slot.
        for used_at, start, first, size, mask, stride, table in self._others:
            if words[used_at]:  # a row never written (the fleet's without a fleet) costs one read
                s = first + words[start] * size + (h & mask) * stride
                k = words[s]
                if k == h:
                    total += words[s + 1]
                elif k:
                    total += table.get(h)
        return total

    def _rows_to_read(self, handed_out: int) -> list[int]:
        """The rows that may hold shares of our keys: the other workers', the
        fleet's if there is a fleet, the base row's for totals (the keeper
        never writes gauges there)."""
        rows = [row for row in range(FIRST_WORKER_ROW, handed_out) if row != self.row]
        if self.region.fleet >= 0:
            rows.append(FLEET_ROW)
        if self.kind == "totals":
            rows.append(BASE_ROW)
        return rows

    def add(self, key: str, delta: int) -> int:
        words = self._words
        cached = self._slots.get(key)
        if cached is not None and words[cached[0]] == cached[1]:
            slot, h = cached
            value = words[slot + 1] + delta
            words[slot + 1] = value
            if self._writes_at:  # totals: the keeper persists them only after a change
                words[self._writes_at] += 1
            return value + self._sum_others(h)
        return self._add_slowly(key, delta)

    def _add_slowly(self, key: str, delta: int) -> int:
        h = key_hash(key)
        if key not in self.local:
            name = key.encode() if self.own.named else b""
            found = self.own.add_at(h, delta, name) if len(name) <= MAX_KEY_BYTES else None
            if found is not None:
                slot, value = found
                if slot >= 0 and self._words[slot] == h:
                    if len(self._slots) >= 2 * self.own.slots:
                        self._slots.clear()  # keys of clients long gone
                    self._slots[key] = (slot, h)
                return value + self._sum_others(h)
            self._overflow(key)
        count = self.local.get(key, 0) + delta
        self.local[key] = count
        return self.own.get(h) + self._sum_others(h) + count

    def _overflow(self, key: str) -> None:
        self.overflows += 1
        if self.overflows == 1:
            why = f"longer than {MAX_KEY_BYTES} bytes" if len(key.encode()) > MAX_KEY_BYTES else "the table is full"
            log.warning(
                "shared %s: no room for %r (%s): counting it and other such keys in this process only; "
                "raise --state-table-slots",
                self.kind,
                key,
                why,
            )
        self.local.setdefault(key, 0)

    def total(self, key: str) -> int:
        h = key_hash(key)
        return self.own.get(h) + self._sum_others(h) + self.local.get(key, 0)

    def mine(self, key: str) -> int:
        return self.own.get(key_hash(key)) + self.local.get(key, 0)


# --- periods ----------------------------------------------------------------------------

_MONTH = re.compile(r"(\d{4})-(\d{2})\Z")
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})\Z")
_WINDOW = re.compile(r"w(\d+)-(\d+)\Z")


def period_bounds(key: str) -> tuple[float, float] | None:
    """When the period *key* names in its last ``:`` field ends, and its length,
    in seconds since the epoch (UTC): ``2026-12`` a month, ``2026-12-06`` a day,
    ``w60-29612345`` the window of 60 s number 29612345. None for any other key."""
    field = key.rpartition(":")[2]
    if m := _WINDOW.match(field):
        length, number = int(m[1]), int(m[2])
        return float((number + 1) * length), float(length)
    if m := _DAY.match(field):
        start = calendar.timegm((int(m[1]), int(m[2]), int(m[3]), 0, 0, 0))
        return float(start + 86400), 86400.0
    if m := _MONTH.match(field):
        year, month = int(m[1]), int(m[2])
        start = calendar.timegm((year, month, 1, 0, 0, 0))
        end = calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))
        return float(end), float(end - start)
    return None


def expired(key: str, now: float | None = None) -> bool:
    """True once a whole period has passed since *key*'s period ended (a month's
    total lives through the next month, a window through the next window, which
    a sliding window reads); keys without a period never expire."""
    bounds = period_bounds(key)
    if bounds is None:
        return False
    end, length = bounds
    return (time.time() if now is None else now) >= end + length


def window_key(prefix: str, length: int, now: float) -> tuple[str, str, float]:
    """The keys of the current and the previous window of *length* seconds, and
    how far into the current one *now* is (0 to 1)."""
    number, into = divmod(now, length)
    n = int(number)
    return f"{prefix}:w{length}-{n}", f"{prefix}:w{length}-{n - 1}", into / length
