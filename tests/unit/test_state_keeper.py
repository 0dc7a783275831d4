"""The keeper (gconnect/state/keeper.py): totals loaded from and written to the
state directory's SQLite file, a worker's row carried when it exits, periods
gone by dropped, and the fleet's arithmetic against a fake fleet that
implements Fleet's interface in memory (the real Redis: tests/e2e/test_shared_state.py)."""

from __future__ import annotations

import time

import pytest

from gconnect.state.fleet import FleetError
from gconnect.state.keeper import Keeper
from gconnect.state.shared import SharedTally
from gconnect.state.store import Store
from gconnect.state.table import FIRST_WORKER_ROW, Region

pytestmark = pytest.mark.timeout(60)

ROW = FIRST_WORKER_ROW
THIS_MONTH = time.strftime("%Y-%m", time.gmtime())
QUOTA = f"quota:alice:{THIS_MONTH}"


def service(slots: int = 64, workers: int = 2) -> Region:
    region = Region.create(FIRST_WORKER_ROW + workers, slots, shared=False)
    region.hand_out(FIRST_WORKER_ROW + workers - 1)
    return region


def test_totals_survive_a_restart_and_periods_gone_by_do_not(tmp_path):
    region = service()
    keeper = Keeper(region, store=Store(str(tmp_path)))
    SharedTally(region, "totals", ROW).add(QUOTA, 1000)
    SharedTally(region, "totals", ROW + 1).add(QUOTA, 24)
    SharedTally(region, "totals", ROW).add("quota:alice:2020-01", 5)
    SharedTally(region, "gauges", ROW).add("clients:10.0.0.1", 3)
    keeper.stop()

    again = service()
    keeper = Keeper(again, store=Store(str(tmp_path)))
    assert keeper.load() == 1
    tally = SharedTally(again, "totals", ROW)
    assert tally.total(QUOTA) == 1024 and tally.mine(QUOTA) == 0
    assert tally.total("quota:alice:2020-01") == 0
    assert SharedTally(again, "gauges", ROW).total("clients:10.0.0.1") == 0, "gauges are not kept"
    keeper.stop()


def test_a_retired_row_keeps_its_totals_and_loses_its_gauges():
    region = service()
    keeper = Keeper(region)
    gone, stays = SharedTally(region, "totals", ROW), SharedTally(region, "totals", ROW + 1)
    gone.add(QUOTA, 7)
    stays.add(QUOTA, 1)
    SharedTally(region, "gauges", ROW).add("clients:10.0.0.1", 2)
    keeper.retire(ROW)
    assert stays.total(QUOTA) == 8 and region.table("totals", ROW).items() == []
    assert stays.mine(QUOTA) == 1 and SharedTally(region, "gauges", ROW + 1).total("clients:10.0.0.1") == 0
    # The row's next owner starts empty.
    assert SharedTally(region, "totals", ROW).mine(QUOTA) == 0


class FakeFleet:
    """Fleet's interface over a dict shared by the instances of a test."""

    def __init__(self, shared: dict, name: str) -> None:
        self.shared = shared
        self.name = name
        self.url = "redis://fake"
        self.down = False

    def epoch(self) -> str:
        if self.down:
            raise FleetError("down")
        return self.shared.setdefault("epoch", "e1")

    def sync(self, deltas, gauges):
        if self.down:
            raise FleetError("down")
        totals = self.shared.setdefault("totals", {})
        for key, delta in deltas.items():
            totals[key] = totals.get(key, 0) + delta
        self.shared.setdefault("gauges", {})[self.name] = dict(gauges)
        others: dict[int, int] = {}
        for name, theirs in self.shared["gauges"].items():
            if name != self.name:
                for h, value in theirs.items():
                    others[h] = others.get(h, 0) + value
        return dict(totals), others

    def drop(self, keys):
        for key in keys:
            self.shared.get("totals", {}).pop(key, None)

    def leave(self) -> None:
        self.shared.get("gauges", {}).pop(self.name, None)


def instance(shared: dict, name: str) -> tuple[Keeper, SharedTally, SharedTally, FakeFleet]:
    region = service(workers=1)
    fleet = FakeFleet(shared, name)
    keeper = Keeper(region, fleet=fleet)  # type: ignore[arg-type]
    return keeper, SharedTally(region, "gauges", ROW), SharedTally(region, "totals", ROW), fleet


def test_two_instances_see_each_others_counts_after_a_sync():
    shared: dict = {}
    (ka, ga, ta, _), (kb, gb, tb, _) = instance(shared, "a"), instance(shared, "b")
    ta.add(QUOTA, 100)
    ga.add("clients:10.0.0.1", 2)
    tb.add(QUOTA, 5)
    assert ka.sync() and kb.sync() and ka.sync()
    assert ta.total(QUOTA) == tb.total(QUOTA) == 105
    assert gb.total("clients:10.0.0.1") == 2 and gb.mine("clients:10.0.0.1") == 0
    ta.add(QUOTA, 1)
    assert ka.sync() and kb.sync()
    assert tb.total(QUOTA) == 106 and shared["totals"][QUOTA] == 106, "each delta pushed once"


def test_an_unreachable_fleet_loses_nothing_and_a_fleet_that_lost_its_data_is_told_again(caplog):
    shared: dict = {}
    (ka, ga, ta, fa), (kb, _, tb, _) = instance(shared, "a"), instance(shared, "b")
    ta.add(QUOTA, 10)
    assert ka.sync()
    fa.down = True
    ta.add(QUOTA, 3)
    ga.add("clients:10.0.0.1", 1)
    assert not ka.sync() and not ka.sync()
    assert ka.region.fleet == 0 and caplog.text.count("unreachable") == 1
    assert ta.total(QUOTA) == 13, "the local view goes on"
    fa.down = False
    assert ka.sync() and kb.sync()
    assert tb.total(QUOTA) == 13 and shared["totals"][QUOTA] == 13
    # Redis restarted empty: a new epoch, and every instance tells it its totals again.
    shared.clear()
    shared["epoch"] = "e2"
    assert ka.sync() and kb.sync() and ka.sync()
    assert shared["totals"][QUOTA] == 13 and ta.total(QUOTA) == tb.total(QUOTA) == 13


def test_totals_of_periods_gone_by_are_dropped_from_the_fleet_by_any_instance():
    shared: dict = {"totals": {"authfail:10.0.0.1:w60-1": 3, "quota:bob:2020-01": 9, QUOTA: 4}}
    keeper, _, totals, _ = instance(shared, "a")
    assert keeper.sync()
    assert shared["totals"] == {QUOTA: 4} and totals.total(QUOTA) == 4


class CountingStore(Store):
    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.saves = 0

    def save(self, *args, **kwargs) -> None:
        self.saves += 1
        super().save(*args, **kwargs)


def test_the_state_directory_is_written_only_after_a_change(tmp_path):
    region = service()
    store = CountingStore(str(tmp_path))
    keeper = Keeper(region, store=store, flush_seconds=0)
    keeper.tick()
    keeper.tick()
    keeper.tick()
    assert store.saves == 1
    tally = SharedTally(region, "totals", ROW + 1)
    tally.add(QUOTA, 5)  # a new key
    keeper.tick()
    assert store.saves == 2
    tally.add(QUOTA, 5)  # a value written in place, through the remembered slot
    keeper.tick()
    keeper.tick()
    assert store.saves == 3
    keeper.stop()
    assert Store(str(tmp_path)).load()[0] == {QUOTA: (10, 0)}
