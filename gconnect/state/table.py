"""Counters in shared memory: rows of open-addressed tables, one writer per row.

A :class:`Region` is one mapping (a memfd the supervisor creates and passes to
its workers like the listeners, or an anonymous mapping in a process alone)
holding ``rows`` rows. Each row has two :class:`Table` s, one for gauges and
one for totals, and each table is written by the one process that owns the row
and read by every process: no lock, no round trip. A read sums the rows.

Rows: :data:`BASE_ROW` holds what the service's past left (totals loaded from
the state directory, those carried from workers that exited), :data:`FLEET_ROW`
the other instances' shares (``--shared-state``); both are written by the
keeper (:mod:`gconnect.state.keeper`). The rows from :data:`FIRST_WORKER_ROW`
on are the workers' (or the process's own), handed out by the supervisor.

A table is an array of slots, each ``[key hash, value]`` as int64 words, and
for totals the key's name too (for the keeper, which persists and synchronises
by name). A key lives in at most one slot of a row, found by linear probing
from its hash; a slot whose value went back to 0 is reused by the next new key
whose probe passes it. When the used slots reach :data:`LOAD_LIMIT` of the
capacity, the owner rebuilds the live entries into the table's other buffer
and flips the row's buffer word, so a reader never sees a half-built table.
If the live entries alone exceed the limit the table is full: ``add`` returns
None and the caller counts the key elsewhere (see ``SharedTally``).

Aligned int64 stores through a ``memoryview`` are single machine stores: a
reader sees the old value or the new one, never half of each. Readers in
other processes may see a new key's slot before its value (then 0).
"""

from __future__ import annotations

import mmap
import os
from itertools import compress

#: Fraction of a table's slots in use (live or reusable) before it is rebuilt;
#: linear probing stays short below 3/4 (Knuth's analysis: ~2.5 probes per hit).
LOAD_LIMIT = 0.75
#: Words per slot: a gauge is [hash, value]; a total adds [name length, name bytes].
GAUGE_WORDS = 2
TOTAL_WORDS = 16
#: The longest key a total can carry by name: the slot's words after [hash, value, length].
MAX_KEY_BYTES = (TOTAL_WORDS - 3) * 8
#: Words before a table's buffers: [active buffer, used slots, writes, full events].
TABLE_HEADER_WORDS = 8
#: Words of the region's header: [magic, rows, slots, rows handed out, fleet state, ...].
REGION_HEADER_WORDS = 64
MAGIC = 0x67636F6E6E656374  # "gconnect"

BASE_ROW = 0
FLEET_ROW = 1
FIRST_WORKER_ROW = 2

#: Region header words.
H_MAGIC, H_ROWS, H_SLOTS, H_HANDED_OUT, H_FLEET = 0, 1, 2, 3, 4
#: Table header words.
T_ACTIVE, T_USED, T_WRITES, T_FULL = 0, 1, 2, 3


def table_words(slots: int, stride: int) -> int:
    return TABLE_HEADER_WORDS + 2 * slots * stride


class Table:
    """One row's table of gauges or totals (see the module docstring).

    Only the row's owner calls :meth:`add`, :meth:`set` or :meth:`clear`; any
    process calls :meth:`get` and :meth:`items`.
    """

    __slots__ = ("buffer_words", "first", "mask", "named", "raw", "slots", "start", "stride", "used_at", "words")

    def __init__(self, words: memoryview, raw: memoryview, start: int, slots: int, stride: int) -> None:
        self.words = words
        self.raw = raw
        self.start = start
        self.slots = slots
        self.stride = stride
        self.mask = slots - 1
        self.named = stride > GAUGE_WORDS
        # Precomputed for get(), which every check calls once per row.
        self.used_at = start + T_USED
        self.first = start + TABLE_HEADER_WORDS
        self.buffer_words = slots * stride

    def _buffer(self, which: int) -> int:
        return self.start + TABLE_HEADER_WORDS + which * self.slots * self.stride

    def get(self, h: int) -> int:
        """The value under hash *h* (0 if absent)."""
        words = self.words
        if not words[self.used_at]:
            return 0  # a row never written (the fleet's without a fleet, a worker's not started): one read
        base = self.first + words[self.start] * self.buffer_words
        stride = self.stride
        s = base + (h & self.mask) * stride
        k = words[s]
        if k == h:
            return words[s + 1]
        if k == 0:
            return 0
        return self._probe(h, base, h & self.mask)

    def _probe(self, h: int, base: int, i: int) -> int:
        words, stride, mask = self.words, self.stride, self.mask
        for _ in range(self.slots):
            i = (i + 1) & mask
            s = base + i * stride
            k = words[s]
            if k == h:
                return words[s + 1]
            if k == 0:
                return 0
        return 0

    def _find(self, h: int) -> tuple[int, int]:
        """(the slot holding *h* or -1, the slot a new key would take or -1)."""
        words, stride, mask = self.words, self.stride, self.mask
        base = self._buffer(words[self.start])
        i = h & mask
        reusable = -1
        for _ in range(self.slots):
            s = base + i * stride
            k = words[s]
            if k == h:
                return s, -1
            if k == 0:
                return -1, (reusable if reusable >= 0 else s)
            if reusable < 0 and words[s + 1] == 0:
                reusable = s
            i = (i + 1) & mask
        return -1, reusable

    def add(self, h: int, delta: int, name: bytes = b"") -> int | None:
        """Add *delta* under *h* (owner only); the new value, or None if the table is full."""
        found = self.add_at(h, delta, name)
        return None if found is None else found[1]

    def add_at(self, h: int, delta: int, name: bytes = b"") -> tuple[int, int] | None:
        """As :meth:`add`, and the slot: (slot, new value). The slot holds *h*
        until :meth:`rebuild`, or until its value is 0 and another key takes it
        (``words[slot] == h`` says whether it still does)."""
        words = self.words
        words[self.start + T_WRITES] += 1
        found, free = self._find(h)
        if found >= 0:
            value = words[found + 1] + delta
            words[found + 1] = value
            return found, value
        if not delta:
            return free, 0
        slot = self._take(h, free)
        if slot < 0:
            words[self.start + T_FULL] += 1
            return None
        self._fill(slot, h, name)
        words[slot + 1] = delta
        return slot, delta

    def set(self, h: int, value: int, name: bytes = b"") -> bool:
        """Make *h*'s value *value* (owner only); False if the table is full."""
        self.words[self.start + T_WRITES] += 1
        found, free = self._find(h)
        if found >= 0:
            self.words[found + 1] = value
            return True
        if not value:
            return True
        slot = self._take(h, free)
        if slot < 0:
            self.words[self.start + T_FULL] += 1
            return False
        self._fill(slot, h, name)
        self.words[slot + 1] = value
        return True

    def _take(self, h: int, free: int) -> int:
        """The slot a new key *h* goes to (rebuilding first if the table is too full), or -1."""
        words, start = self.words, self.start
        if free >= 0 and words[free] != 0:
            return free  # a slot whose value went back to 0: no new slot used
        limit = int(self.slots * LOAD_LIMIT)
        if free < 0 or words[start + T_USED] + 1 > limit:
            if self.live + 1 > limit:
                return -1  # a scan each time while full: a full table is a misconfiguration, logged
            self.rebuild()
            free = self._find(h)[1]
        words[start + T_USED] += 1
        return free

    def _fill(self, slot: int, h: int, name: bytes) -> None:
        words = self.words
        words[slot + 1] = 0  # a reused slot: readers see 0 under the new key until the value lands
        if self.named:
            offset = (slot + 3) * 8
            self.raw[offset : offset + len(name)] = name
            words[slot + 2] = len(name)
        words[slot] = h

    def rebuild(self, keep: object = None) -> None:
        """Copy the live entries into the other buffer and switch to it (owner
        only). *keep*, if given, is called with each name and says whether it stays."""
        words, start, stride = self.words, self.start, self.stride
        entries = [e for e in self.items() if keep is None or keep(e[2])]  # type: ignore[operator]
        other = 1 - words[start + T_ACTIVE]
        base = self._buffer(other)
        self.raw[base * 8 : (base + self.slots * stride) * 8] = bytes(self.slots * stride * 8)
        mask = self.mask
        for h, value, name in entries:
            i = h & mask
            while words[base + i * stride] != 0:
                i = (i + 1) & mask
            s = base + i * stride
            if self.named:
                words[s + 2] = len(name)
                self.raw[(s + 3) * 8 : (s + 3) * 8 + len(name)] = name
            words[s + 1] = value
            words[s] = h
        words[start + T_USED] = len(entries)
        words[start + T_ACTIVE] = other
        words[start + T_WRITES] += 1

    def items(self) -> list[tuple[int, int, bytes]]:
        """Every (hash, value, name) with a value other than 0; names are b"" in gauges."""
        words, stride, raw = self.words, self.stride, self.raw
        base = self._buffer(words[self.start])
        end = base + self.slots * stride
        hashes = words[base:end:stride].tolist()
        found = []
        # compress() finds the used slots in C: the loop only visits those.
        for i in compress(range(self.slots), hashes):
            s = base + i * stride
            value = words[s + 1]
            if value:
                h = hashes[i]
                name = b""
                if self.named:
                    name = bytes(raw[(s + 3) * 8 : (s + 3) * 8 + words[s + 2]])
                    if words[s] != h:  # replaced while we read it
                        continue
                found.append((h, value, name))
        return found

    def clear(self) -> None:
        """Forget every entry (the owner, or the supervisor once the owner has exited).
        Only slots ever used are written: pages never touched stay unallocated."""
        words, stride = self.words, self.stride
        words[self.used_at] = 0  # readers stop looking first
        for which in (0, 1):
            base = self._buffer(which)
            hashes = words[base : base + self.slots * stride : stride].tolist()
            for i in compress(range(self.slots), hashes):
                s = base + i * stride
                words[s] = 0
                words[s + 1] = 0
        words[self.start + T_ACTIVE] = 0
        words[self.start + T_WRITES] += 1

    @property
    def live(self) -> int:
        """Keys with a value other than 0 (a scan: for the metrics and a full table)."""
        words, stride = self.words, self.stride
        base = self._buffer(words[self.start])
        end = base + self.slots * stride
        used = compress(range(self.slots), words[base:end:stride].tolist())
        return sum(1 for i in used if words[base + i * stride + 1])

    @property
    def writes(self) -> int:
        """Changes so far (the keeper writes the state directory only after some)."""
        return self.words[self.start + T_WRITES]

    @property
    def writes_at(self) -> int:
        """The word :attr:`writes` reads, for an owner that writes values itself."""
        return self.start + T_WRITES

    @property
    def full_events(self) -> int:
        """Keys this table had no room for, since it was made."""
        return self.words[self.start + T_FULL]


class Region:
    """The mapping that holds every row (see the module docstring)."""

    def __init__(self, memory: mmap.mmap, fd: int = -1) -> None:
        self.memory = memory
        #: The memfd workers map (-1 for an anonymous mapping); the creator closes it.
        self.fd = fd
        self.raw = memoryview(memory)
        self.words = self.raw.cast("q")
        if self.words[H_MAGIC] != MAGIC:
            raise ValueError("not a gconnect state region")
        self.rows = self.words[H_ROWS]
        self.slots = self.words[H_SLOTS]
        self.row_words = table_words(self.slots, GAUGE_WORDS) + table_words(self.slots, TOTAL_WORDS)

    @staticmethod
    def size(rows: int, slots: int) -> int:
        row = table_words(slots, GAUGE_WORDS) + table_words(slots, TOTAL_WORDS)
        return (REGION_HEADER_WORDS + rows * row) * 8

    @classmethod
    def create(cls, rows: int, slots: int, *, shared: bool) -> Region:
        """A new zeroed region of *rows* rows of *slots* slots (a power of two):
        in a memfd the workers can map if *shared*, else anonymous."""
        if slots < 8 or slots & (slots - 1):
            raise ValueError(f"table slots must be a power of two >= 8, not {slots}")
        size = cls.size(rows, slots)
        fd = -1
        if shared:
            fd = os.memfd_create("gconnect-state", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
        else:
            memory = mmap.mmap(-1, size)
        words = memoryview(memory).cast("q")
        words[H_ROWS], words[H_SLOTS], words[H_HANDED_OUT] = rows, slots, FIRST_WORKER_ROW
        words[H_FLEET] = -1
        words[H_MAGIC] = MAGIC
        words.release()
        return cls(memory, fd)

    @classmethod
    def attach(cls, fd: int) -> Region:
        """Map the region a supervisor passed as *fd* (which is closed: the mapping stays)."""
        try:
            memory = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return cls(memory)

    def table(self, kind: str, row: int) -> Table:
        """Row *row*'s ``"gauges"`` or ``"totals"`` table."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} of {self.rows}")
        start = REGION_HEADER_WORDS + row * self.row_words
        if kind == "totals":
            return Table(self.words, self.raw, start + table_words(self.slots, GAUGE_WORDS), self.slots, TOTAL_WORDS)
        return Table(self.words, self.raw, start, self.slots, GAUGE_WORDS)

    @property
    def handed_out(self) -> int:
        """Rows below this have been given to someone at some time (readers sum those)."""
        return self.words[H_HANDED_OUT]

    def hand_out(self, row: int) -> None:
        if row >= self.words[H_HANDED_OUT]:
            self.words[H_HANDED_OUT] = row + 1

    def clear_row(self, row: int) -> None:
        self.table("gauges", row).clear()
        self.table("totals", row).clear()

    @property
    def fleet(self) -> int:
        """The fleet link's state for the metrics: -1 none, 0 unreachable, 1 synchronised."""
        return self.words[H_FLEET]

    @fleet.setter
    def fleet(self, state: int) -> None:
        self.words[H_FLEET] = state
