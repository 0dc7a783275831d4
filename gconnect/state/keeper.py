"""The keeper of a service's shared state: the one owner of the base and fleet
rows of its :class:`~gconnect.state.table.Region`, in the supervisor (with
workers) or in the proxy process alone.

It runs in a native thread (gevent's thread pool), never in a hub: once a
period it synchronises with the fleet (``--shared-state``), and every
``flush_seconds`` it writes the totals to the state directory
(``--state-dir``), dropping keys of periods gone by. At start it loads the
state directory into the base row; at stop it pushes and writes a last time.

Workers that exit leave their totals: :meth:`Keeper.retire` adds them to the
base row and clears the row (its gauges are simply forgotten) before the
supervisor hands the row to another worker.

The local view: this service's totals are the sum of its rows but the fleet
row; ``pushed`` is how much of each the fleet has been told. Each sync sends
the difference, and the fleet row is set to the fleet's totals minus what we
pushed (the others' share), so ``total()`` reads local + others. If the fleet
cannot be reached, the difference keeps growing and goes out at the next
success; the fleet row keeps the others' last known totals (a quota stays as
spent as it was known to be) and loses their gauges (the local view alone).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gevent import get_hub
from gevent.monkey import get_original

from .. import defaults as d
from .fleet import Fleet, FleetError
from .shared import expired, key_hash
from .store import Store
from .table import BASE_ROW, FIRST_WORKER_ROW, FLEET_ROW, Region, Table

log = logging.getLogger(__name__)

#: A real lock even under monkey-patching: it guards the base row between the
#: keeper's thread and the supervisor's hub (retire), never the data path.
allocate_lock = get_original("_thread", "allocate_lock")
#: Totals of periods gone by are looked for at least this often, written or not.
DROP_SECONDS = 60.0


class Keeper:
    """Loads, persists and synchronises the state of one service (see the module docstring)."""

    def __init__(
        self,
        region: Region,
        *,
        store: Store | None = None,
        fleet: Fleet | None = None,
        period: float = d.DEFAULT_SHARED_STATE_PERIOD,
        flush_seconds: float = d.STATE_FLUSH_SECONDS,
    ) -> None:
        self.region = region
        self.store = store
        self.fleet = fleet
        self.period = period if fleet is not None else flush_seconds
        self.flush_seconds = flush_seconds
        self.base = region.table("totals", BASE_ROW)
        self.fleet_totals = region.table("totals", FLEET_ROW)
        self.fleet_gauges = region.table("gauges", FLEET_ROW)
        #: Of each total, how much the fleet has been told.
        self.pushed: dict[str, int] = {}
        #: The fleet's epoch marker: when it changes, Redis lost its data and is told everything again.
        self.epoch = ""
        self.lock = allocate_lock()
        self._stop = allocate_lock()
        self._stop.acquire()
        self._thread: Any = None
        self._next_flush = 0.0
        self._said_down = False
        self._flushed_writes: list[int] = []
        #: The writes counts and the totals of the last sync (no scan when nothing was written).
        self._synced: tuple[list[int], dict[str, int]] = ([], {})
        self._next_drop = 0.0
        #: What the state directory holds now (no write when nothing changed).
        self._saved: tuple[dict[str, int], dict[str, int], str] | None = None
        region.fleet = -1 if fleet is None else 0

    # --- the rows ------------------------------------------------------------------------

    def load(self) -> int:
        """Put the state directory's totals in the base row; how many keys (before any worker starts)."""
        if self.store is None:
            return 0
        loaded = 0
        totals, self.epoch = self.store.load()
        for key, (value, pushed) in totals.items():
            if expired(key):
                continue
            self.base.set(key_hash(key), value, key.encode())
            if pushed:
                self.pushed[key] = pushed
            loaded += 1
        return loaded

    def _local_rows(self, kind: str) -> list[Table]:
        rows = [BASE_ROW, *range(FIRST_WORKER_ROW, self.region.handed_out)]
        return [self.region.table(kind, row) for row in rows]

    def local_totals(self) -> dict[str, int]:
        """This service's totals by key (periods gone by left out)."""
        now = time.time()
        sums: dict[str, int] = {}
        for table in self._local_rows("totals"):
            for _, value, name in table.items():
                key = name.decode()
                sums[key] = sums.get(key, 0) + value
        return {key: value for key, value in sums.items() if value and not expired(key, now)}

    def local_gauges(self) -> dict[int, int]:
        sums: dict[int, int] = {}
        for table in self._local_rows("gauges"):
            for h, value, _ in table.items():
                sums[h] = sums.get(h, 0) + value
        return {h: value for h, value in sums.items() if value}

    def retire(self, row: int) -> None:
        """Row *row*'s process has exited: carry its totals into the base row, clear the row."""
        with self.lock:
            for h, value, name in self.region.table("totals", row).items():
                if not self.base.add(h, value, name):
                    log.warning("state: the base row is full: %r is lost at the next restart", name.decode())
            self.region.clear_row(row)

    # --- the thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Synchronise and persist from now on, in a thread of the hub's pool
        (the fleet's connections are made and used in that thread only).
        Without a state directory or a fleet there is nothing to do."""
        if self.store is None and self.fleet is None:
            return
        self._next_flush = time.monotonic() + self.flush_seconds
        self._thread = get_hub().threadpool.spawn(self._run)

    def _run(self) -> None:
        first = True
        while first or not self._stop.acquire(timeout=self.period):
            first = False
            try:
                self.tick()
            except Exception:
                log.exception("state keeper")
        if self.fleet is not None:
            self.sync()  # the last deltas, before the process goes
            self.fleet.leave()

    def tick(self) -> None:
        if self.fleet is not None:
            self.sync()
        now = time.monotonic()
        if now >= self._next_flush:
            self._next_flush = now + self.flush_seconds
            # Nothing written since the last flush, and not yet time to drop: no scan at all.
            writes = self._writes()
            if writes != self._flushed_writes or now >= self._next_drop:
                self._next_drop = now + DROP_SECONDS
                self.drop_expired()
                self.flush()
                self._flushed_writes = writes

    def _writes(self) -> list[int]:
        return [table.writes for table in self._local_rows("totals")]

    def stop(self) -> None:
        """Stop the thread (after a last push), write a last time (after the workers exited)."""
        if self._thread is not None:
            self._stop.release()
            self._thread.get()
            self._thread = None
        self.flush()
        if self.store is not None:
            self.store.close()

    def flush(self) -> None:
        if self.store is None:
            return
        with self.lock:
            totals = self.local_totals()
        saved = (totals, dict(self.pushed), self.epoch)
        if saved == self._saved:
            return
        try:
            self.store.save(totals, self.pushed, self.epoch)
            self._saved = saved
        except Exception as exc:  # a full disk must not stop the proxy: the next flush tries again
            log.error("state: cannot write %s: %s", self.store.path, exc)

    def drop_expired(self) -> None:
        """Forget totals of periods gone by, here and in the fleet."""
        now = time.time()

        def keep(name: bytes) -> bool:
            return not expired(name.decode(), now)

        with self.lock:
            if not all(keep(name) for _, _, name in self.base.items()):
                self.base.rebuild(keep)
        gone = [key for key in self.pushed if expired(key, now)]
        for key in gone:
            del self.pushed[key]
        gone += [name.decode() for _, _, name in self.fleet_totals.items() if not keep(name)]
        if gone:
            self.fleet_totals.rebuild(keep)
        if self.fleet is not None and gone:
            try:
                self.fleet.drop(gone)
            except FleetError:
                pass  # the next drop, or another instance's, removes them

    # --- the fleet -----------------------------------------------------------------------

    def sync(self) -> bool:
        """Push this service's deltas and read the fleet's sums back; False if unreachable."""
        fleet = self.fleet
        assert fleet is not None
        try:
            epoch = fleet.epoch()
            if epoch != self.epoch:
                if self.epoch:
                    log.warning("shared state %s lost its data: telling it our totals again", fleet.url)
                self.epoch, self.pushed = epoch, {}
            with self.lock:
                writes = self._writes()
                if writes != self._synced[0]:
                    self._synced = (writes, self.local_totals())
                totals, gauges = self._synced[1], self.local_gauges()
            deltas = {key: totals.get(key, 0) - self.pushed.get(key, 0) for key in {*totals, *self.pushed}}
            deltas = {key: delta for key, delta in deltas.items() if delta}
            fleet_totals, others = fleet.sync(deltas, gauges)
        except FleetError as exc:
            if self.region.fleet != 0 or not self._said_down:
                log.warning("shared state %s unreachable (%s): serving on the local view", fleet.url, exc)
                self._said_down = True
            self.region.fleet = 0
            self._set_gauges({})
            return False
        if self.region.fleet != 1:
            log.info("shared state %s synchronised", fleet.url)
        self.region.fleet = 1
        for key, delta in deltas.items():
            self.pushed[key] = self.pushed.get(key, 0) + delta
        self.pushed = {key: value for key, value in self.pushed.items() if value}
        now = time.time()
        others_totals = {k: v - self.pushed.get(k, 0) for k, v in fleet_totals.items() if not expired(k, now)}
        stale = [key for key in fleet_totals if key not in others_totals]
        if stale:  # periods gone by, left by any instance (one that stopped cannot drop its own)
            try:
                fleet.drop(stale)
            except FleetError:
                pass
        self._set_totals(others_totals)
        self._set_gauges(others)
        return True

    def _set_totals(self, wanted: dict[str, int]) -> None:
        table = self.fleet_totals
        for _, _, name in table.items():
            if name.decode() not in wanted:
                table.set(key_hash(name.decode()), 0)
        for key, value in wanted.items():
            table.set(key_hash(key), value, key.encode())

    def _set_gauges(self, wanted: dict[int, int]) -> None:
        table = self.fleet_gauges
        for h, _, _ in table.items():
            if h not in wanted:
                table.set(h, 0)
        for h, value in wanted.items():
            table.set(h, value)
