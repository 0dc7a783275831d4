"""The shared state of one service, as the operations layer sets it up.

With workers, the supervisor makes the :class:`~gconnect.state.table.Region`
in a memfd, owns the :class:`~gconnect.state.keeper.Keeper` (the state
directory's SQLite file, the fleet's Redis) and hands each worker a row of its
own, passed like the listeners (``workerlink``); a row comes back when its
worker exits, its totals carried into the base row and its gauges zeroed.
A process alone does the same in an anonymous mapping with one row.

What is shared: the per-address client counts and the failed-login windows
(and what the bandwidth and quota code counts in ``gauges`` and ``totals``).
``--max-clients`` stays per process: it guards that process's descriptors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..config import Config
from ..state.keeper import Keeper
from ..state.shared import SharedTally
from ..state.table import FIRST_WORKER_ROW, Region

log = logging.getLogger(__name__)

#: Spare rows beyond two per worker: an upgrade runs the old and the new
#: generation side by side, and a crashed worker's replacement may start before
#: the old row is handed back.
SPARE_ROWS = 2


class ServiceState:
    """The region, its keeper and the rows not handed out."""

    def __init__(self, config: Config, *, workers: int) -> None:
        """*workers* 0: a process alone (an anonymous mapping, one row)."""
        rows = FIRST_WORKER_ROW + (2 * workers + SPARE_ROWS if workers else 1)
        self.region = Region.create(rows, config.state_table_slots, shared=bool(workers))
        store = fleet = None
        if config.state_dir:
            from ..state.store import Store

            store = Store(config.state_dir)
        if config.shared_state:
            from ..state.fleet import Fleet

            fleet = Fleet(config.shared_state, config.shared_state_period)
        self.keeper = Keeper(self.region, store=store, fleet=fleet, period=config.shared_state_period)
        loaded = self.keeper.load()
        if store is not None:
            log.info("state: %d totals loaded from %s", loaded, store.path)
        self.free = list(range(FIRST_WORKER_ROW, rows))

    def take_row(self) -> int | None:
        """A row for a new worker (None if none is free: it counts alone)."""
        if not self.free:
            log.warning("state: no free row in the shared state: the new worker counts on its own")
            return None
        row = self.free.pop(0)
        self.region.hand_out(row)
        return row

    def give_back(self, row: int | None) -> None:
        """Row *row*'s worker has exited: keep its totals, forget its gauges."""
        if row is not None:
            self.keeper.retire(row)
            self.free.append(row)

    def tallies(self, row: int) -> tuple[SharedTally, SharedTally]:
        return SharedTally(self.region, "gauges", row), SharedTally(self.region, "totals", row)

    def start(self) -> None:
        self.keeper.start()

    def stop(self) -> None:
        self.keeper.stop()


def worker_tallies(fd: int, row: int) -> tuple[SharedTally, SharedTally]:
    """A worker's tallies on the region its supervisor passed as *fd*."""
    region = Region.attach(fd)
    return SharedTally(region, "gauges", row), SharedTally(region, "totals", row)


class StateCollector:
    """The shared state's figures for ``/metrics`` (a prometheus-client collector)."""

    def __init__(self, region: Region) -> None:
        self.region = region

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        region = self.region
        keys = GaugeMetricFamily("gconnect_state_keys", "Keys with a value in the shared tables", labels=("table",))
        full = CounterMetricFamily(
            "gconnect_state_full",
            "Keys a shared table had no room for (counted in one process instead; raise --state-table-slots)",
            labels=("table",),
        )
        for kind in ("gauges", "totals"):
            tables = [region.table(kind, row) for row in range(region.handed_out)]
            keys.add_metric((kind,), sum(table.live for table in tables))
            full.add_metric((kind,), sum(table.full_events for table in tables))
        yield keys
        yield full
        if region.fleet >= 0:
            yield GaugeMetricFamily(
                "gconnect_shared_state_up", "1 if the last --shared-state synchronisation succeeded", region.fleet
            )
