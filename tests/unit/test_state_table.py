"""The shared tables (gconnect/state/table.py) and the tally on them
(state/shared.py): a model check against a dict with hypothesis, rebuilds,
reuse of emptied slots, a full table, rows summed, a second mapping of the
same memfd, and the periods keys name."""

from __future__ import annotations

import calendar
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gconnect.state.shared import SharedTally, expired, key_hash, period_bounds, window_key
from gconnect.state.table import FIRST_WORKER_ROW, LOAD_LIMIT, MAX_KEY_BYTES, Region

pytestmark = pytest.mark.timeout(60)

ROW = FIRST_WORKER_ROW


def region(slots: int = 64, rows: int = FIRST_WORKER_ROW + 2) -> Region:
    made = Region.create(rows, slots, shared=False)
    made.hand_out(rows - 1)
    return made


operations = st.lists(st.tuples(st.integers(0, 40), st.integers(-3, 5)), max_size=400)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_a_table_agrees_with_a_dict(ops):
    table = region(128).table("totals", ROW)
    model: dict[int, int] = {}
    for key, delta in ops:
        h = key_hash(f"k{key}")
        value = table.add(h, delta, f"k{key}".encode())
        model[h] = model.get(h, 0) + delta
        assert value == model[h]
    for h, value in model.items():
        assert table.get(h) == value
    assert sorted((h, v) for h, v, _ in table.items()) == sorted((h, v) for h, v in model.items() if v)
    assert table.live == sum(1 for v in model.values() if v)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=300))
def test_gauges_that_go_back_to_zero_leave_room(keys):
    # Addresses come and go: far more keys over time than slots, never full.
    table = region(64).table("gauges", ROW)
    for key in keys:
        h = key_hash(f"clients:{key}")
        assert table.add(h, 1) == 1
        assert table.add(h, -1) == 0
        assert table.get(h) == 0
    assert table.full_events == 0 and table.items() == []


def test_a_full_table_says_so_and_the_tally_counts_the_key_in_its_process(caplog):
    made = region(64)
    tally = SharedTally(made, "gauges", ROW)
    limit = int(64 * LOAD_LIMIT)
    for i in range(limit):
        tally.add(f"k{i}", 1)
    assert tally.own.full_events == 0
    assert tally.add("one-too-many", 2) == 2
    assert tally.add("one-too-many", 1) == 3 and tally.total("one-too-many") == 3
    assert tally.own.full_events == 1 and tally.overflows == 1
    assert "no room for 'one-too-many'" in caplog.text
    # Emptied keys make room again, for keys the table has not seen.
    for i in range(10):
        tally.add(f"k{i}", -1)
    assert tally.add("fresh", 1) == 1 and tally.own.get(key_hash("fresh")) == 1


def test_a_rebuild_keeps_values_and_drops_what_keep_refuses():
    table = region(64).table("totals", ROW)
    for i in range(30):
        table.add(key_hash(f"k{i}"), i + 1, f"k{i}".encode())
    table.rebuild(lambda name: name != b"k3")
    assert table.get(key_hash("k3")) == 0
    assert all(table.get(key_hash(f"k{i}")) == i + 1 for i in range(30) if i != 3)
    assert {name for _, _, name in table.items()} == {f"k{i}".encode() for i in range(30) if i != 3}


def test_many_keys_over_time_rebuild_instead_of_filling():
    table = region(64).table("totals", ROW)
    for i in range(1000):
        h = key_hash(f"w{i}")
        table.add(h, 1, f"w{i}".encode())
        table.add(h, -1)  # refunded: the slot may be reused or rebuilt away
        table.add(key_hash("steady"), 1, b"steady")
    assert table.full_events == 0 and table.get(key_hash("steady")) == 1000


def test_reads_sum_every_row_and_mine_is_ones_own():
    made = region(64, rows=FIRST_WORKER_ROW + 3)
    made.hand_out(FIRST_WORKER_ROW + 2)
    one, two = SharedTally(made, "gauges", ROW), SharedTally(made, "gauges", ROW + 1)
    assert one.add("clients:10.0.0.1", 1) == 1
    assert two.add("clients:10.0.0.1", 1) == 2
    assert (one.total("clients:10.0.0.1"), one.mine("clients:10.0.0.1"), two.mine("clients:10.0.0.1")) == (2, 1, 1)
    # A row handed out later is read by tallies made before.
    three = SharedTally(made, "gauges", ROW + 2)
    made.hand_out(ROW + 2)
    three.add("clients:10.0.0.1", 5)
    assert one.total("clients:10.0.0.1") == 7
    made.clear_row(ROW + 2)
    assert one.total("clients:10.0.0.1") == 2


def test_another_mapping_of_the_memfd_sees_the_same_counts():
    made = Region.create(FIRST_WORKER_ROW + 2, 64, shared=True)
    made.hand_out(ROW + 1)
    other = Region.attach(os.dup(made.fd))
    SharedTally(made, "totals", ROW).add("quota:alice:2026-12", 100)
    SharedTally(other, "totals", ROW + 1).add("quota:alice:2026-12", 20)
    assert SharedTally(made, "totals", ROW).total("quota:alice:2026-12") == 120
    assert other.table("totals", ROW).items() == [(key_hash("quota:alice:2026-12"), 100, b"quota:alice:2026-12")]
    os.close(made.fd)


def test_a_key_too_long_for_its_name_counts_in_its_process():
    tally = SharedTally(region(), "totals", ROW)
    key = "quota:" + "u" * MAX_KEY_BYTES + ":2026-12"
    assert tally.add(key, 5) == 5 and tally.total(key) == 5
    assert tally.own.items() == [] and tally.overflows == 1


def test_key_hashes_are_the_same_in_every_process():
    assert key_hash("clients:127.0.0.1") == key_hash("clients:127.0.0.1") != 0
    assert key_hash("quota:alice:2026-12") == -8310702916791002503  # the fleet relies on it: every version must agree


def test_periods():
    month_end = calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert period_bounds("quota:alice:2026-12") == (month_end, 31 * 86400)
    assert period_bounds("quota:alice:2026-12-31") == (month_end, 86400)
    assert period_bounds("authfail:10.0.0.1:w60-10") == (660, 60)
    assert period_bounds("clients:10.0.0.1") is None
    assert not expired("quota:alice:2026-12", month_end + 31 * 86400 - 1)
    assert expired("quota:alice:2026-12", month_end + 31 * 86400)
    assert not expired("authfail:10.0.0.1:w60-10", 719) and expired("authfail:10.0.0.1:w60-10", 720)
    assert not expired("clients:10.0.0.1", 1e12)
    assert window_key("authfail:a", 60, 630.0) == ("authfail:a:w60-10", "authfail:a:w60-9", 0.5)
