"""Bandwidth limits and quotas without sockets: the token bucket's arithmetic
(hypothesis), the shares of a limit across processes, quota periods, byte
counts, and the usage's quota flow on a real LocalTally."""

from __future__ import annotations

import datetime

import click
import pytest
from gevent import get_hub
from hypothesis import given, settings
from hypothesis import strategies as st

from gconnect.auth.identity import Identity
from gconnect.config import Config, UserRules
from gconnect.errors import QuotaExceededError
from gconnect.ops.accesslog import TextAccessLog
from gconnect.ops.accounting import AccountingRecords
from gconnect.ops.paramtypes import parse_bytes
from gconnect.state.tally import LocalTally
from gconnect.tunnel.bucket import TokenBucket
from gconnect.tunnel.movers import CopyMover, Direction, Half
from gconnect.tunnel.shaping import Limit, Shaper, Throttle
from gconnect.tunnel.usage import Usage, limit, period

CEST = datetime.timezone(datetime.timedelta(hours=2))
rates = st.floats(min_value=1.0, max_value=1e9)
#: (seconds since the last step, bytes asked for) per step.
steps = st.lists(st.tuples(st.floats(min_value=0.0, max_value=2.0), st.integers(0, 10**9)), max_size=60)


def drive(bucket: TokenBucket, ops: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Take min(asked, available) at each step; (time, bytes taken) per step."""
    now, taken = bucket.updated, []
    for dt, asked in ops:
        now += dt
        n = min(asked, bucket.available(now))
        bucket.take(n)
        assert 0 <= bucket.level <= bucket.burst
        taken.append((now, n))
    return taken


@given(rates, st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=1.0, max_value=1e9), steps)
def test_a_bucket_never_lets_more_through_than_its_start_and_its_rate(rate, fraction, burst, ops):
    initial = burst * fraction
    bucket = TokenBucket(rate, burst, initial, 0.0)
    taken = drive(bucket, ops)
    end = taken[-1][0] if taken else 0.0
    assert sum(n for _, n in taken) <= initial + rate * end + 1e-6 * (initial + rate * end) + 1


@given(rates, st.floats(min_value=1.0, max_value=1e9), st.booleans(), steps)
def test_any_second_moves_at_most_rate_plus_burst(rate, burst, full, ops):
    bucket = TokenBucket(rate, burst, burst if full else 0.0, 0.0)
    taken = drive(bucket, ops)
    for start, _ in [(0.0, 0), *taken]:
        window = sum(n for at, n in taken if start <= at <= start + 1.0)
        assert window <= rate + burst + 1e-6 * (rate + burst) + 1


@given(rates, st.floats(min_value=1.0, max_value=1e7), st.floats(min_value=0.0, max_value=1e7))
def test_wait_says_when_tokens_are_there(rate, burst, want):
    bucket = TokenBucket(rate, burst, 0.0, 100.0)
    wait = bucket.wait(want, 100.0)
    assert bucket.available(100.0 + wait) >= int(min(want, burst) * (1 - 1e-9)) - 1


@settings(max_examples=50)
@given(rates, rates, st.floats(min_value=1.0, max_value=1e9), st.floats(min_value=1.0, max_value=1e9))
def test_set_rate_keeps_the_level_within_the_new_burst(rate, new_rate, burst, new_burst):
    bucket = TokenBucket(rate, burst, burst, 0.0)
    bucket.set_rate(new_rate, new_burst, 1.0)
    assert 0 <= bucket.level <= new_burst and bucket.rate == new_rate


def test_a_bucket_wants_a_rate_and_a_burst():
    with pytest.raises(ValueError):
        TokenBucket(0, 10, 0, 0.0)


def test_an_empty_bucket_earns_its_rate():
    bucket = TokenBucket(1000, 500, 0, 10.0)
    assert bucket.available(10.0) == 0
    assert bucket.available(10.25) == 250
    assert bucket.available(20.0) == 500  # never more than the burst
    assert bucket.wait(100, 20.0) == 0.0
    bucket.take(500)
    assert bucket.wait(100, 20.0) == pytest.approx(0.1)


class FleetTally(LocalTally):
    """The Tally contract with other processes' shares: total = mine + theirs."""

    def __init__(self, theirs: dict[str, int]) -> None:
        super().__init__()
        self.theirs = theirs

    def total(self, key: str) -> int:
        return super().total(key) + self.theirs.get(key, 0)

    def add(self, key: str, delta: int) -> int:
        super().add(key, delta)
        return self.total(key)

    def mine(self, key: str) -> int:
        return super().total(key)


class Loop:
    """A loop clock for the shaper (no timer is started in these tests)."""

    def __init__(self) -> None:
        self.time = 100.0

    def now(self) -> float:
        return self.time


def halves() -> tuple[Half, Half]:
    mover = CopyMover(65536)
    return Half("client", "upstream", None, None, mover), Half("upstream", "client", None, None, mover)


def test_a_process_gets_its_share_of_a_limit_by_its_tunnels():
    gauges = FleetTally({"bw:user:alice": 3})
    shaper = Shaper(gauges, Loop(), 0.0)
    up, down = halves()
    shaper.attach("t1", (up, down), [("bw:user:alice", Limit(8_000_000, 8_000_000))])
    # One tunnel here, three elsewhere: a quarter of the rate and of the burst.
    assert gauges.total("bw:user:alice") == 4 and gauges.mine("bw:user:alice") == 1
    assert up.throttle.buckets[0].rate == down.throttle.buckets[0].rate == 2_000_000
    gauges.theirs["bw:user:alice"] = 0
    shaper.rebalance()
    assert up.throttle.buckets[0].rate == 8_000_000
    shaper.detach("t1")
    assert gauges.total("bw:user:alice") == 0 and not shaper.buckets


def test_each_new_tunnel_rescales_its_buckets_before_the_rebalance():
    # Two workers' downloads starting together: ours first alone (the whole rate), then
    # the other worker opens four and we a second; our share is 2 of 6 at once.
    gauges = FleetTally({})
    shaper = Shaper(gauges, Loop(), 0.0)
    limits = [("bw:user:alice", Limit(6_000_000, 6_000_000))]
    first = halves()
    shaper.attach("t1", first, limits)
    assert first[1].throttle.buckets[0].rate == 6_000_000
    gauges.theirs["bw:user:alice"] = 4
    shaper.attach("t2", halves(), limits)
    assert first[1].throttle.buckets[0].rate == 2_000_000


def test_one_process_gets_the_whole_rate_and_tunnels_share_one_bucket():
    gauges = LocalTally()
    shaper = Shaper(gauges, Loop(), 0.0)
    first, second = halves(), halves()
    limits = [("bw:user:alice", Limit(1000, 1000)), ("bw:total", Limit(5000, 5000))]
    shaper.attach("t1", first, limits)
    shaper.attach("t2", second, limits)
    assert first[1].throttle.buckets[0] is second[1].throttle.buckets[0]
    assert first[1].throttle.buckets[0].rate == 1000
    shaper.reconfigure(lambda key: Limit(3000, 3000) if key == "bw:user:alice" else None)
    assert [b.rate for b in first[1].throttle.buckets] == [3000]  # the total limit is gone
    shaper.detach("t1")
    shaper.detach("t2")
    assert gauges.total("bw:user:alice") == 0


def test_directions_without_movers_get_throttles_their_relay_consults():
    # An HTTP/2 stream's relay: Directions, no movers to replace.
    shaper = Shaper(LocalTally(), Loop(), 0.0)
    up, down = Direction("client", "upstream", None), Direction("upstream", "client", None)
    shaper.attach("s1", (up, down), [("bw:user:alice", Limit(2000, 2000))])
    assert not hasattr(up, "mover") and up.throttle.allowance(100.0) == 0
    assert down.throttle.need == 20  # 10 ms of the rate
    shaper.loop.time += 0.5
    assert up.throttle.allowance(shaper.loop.now()) == down.throttle.allowance(shaper.loop.now()) == 1000
    shaper.reconfigure(lambda key: Limit(4000, 4000))
    assert down.throttle.need == 40
    shaper.detach("s1")
    assert not shaper.buckets


def test_a_throttle_waits_for_a_useful_read():
    fast = TokenBucket(10_000_000, 10_000_000, 0, 0.0)
    slow = TokenBucket(10_000, 5_000, 0, 0.0)
    assert Throttle([fast], CopyMover(1024), Loop()).need == 1024  # one read of its mover
    assert Throttle([fast, slow], CopyMover(65536), Loop()).need == 100  # 10 ms of the slow rate


def test_limit_defaults_the_burst_to_a_second_of_the_rate():
    assert limit(0, 100) is None
    assert limit(2000, 0) == Limit(2000, 2000)
    assert limit(2000, 500) == Limit(2000, 500)


@pytest.mark.parametrize(
    ("kind", "now", "name", "left"),
    [
        ("day", datetime.datetime(2026, 12, 6, 23, 59, 30, tzinfo=datetime.timezone.utc), "2026-12-06", 30),
        ("month", datetime.datetime(2026, 12, 31, 23, 0, tzinfo=datetime.timezone.utc), "2026-12", 3600),
        ("month", datetime.datetime(2026, 2, 1, 0, 0, tzinfo=datetime.timezone.utc), "2026-02", 28 * 86400),
        (
            "day",
            datetime.datetime(2026, 6, 1, 1, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
            "2026-05-31",
            3600,
        ),
    ],
)
def test_quota_periods_are_utc(kind, now, name, left):
    assert period(kind, now) == (name, left)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1500000", 1_500_000), ("2M", 2_000_000), ("2MB", 2_000_000), ("10MiB", 10 * 2**20), ("1.5G", 1_500_000_000),
     ("500k", 500_000), ("1KiB", 1024), ("3 mb", 3_000_000)],
)  # fmt: skip
def test_byte_counts(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "M", "2X", "-1", "1i", "2 M B"])
def test_bad_byte_counts(text):
    with pytest.raises(click.BadParameter):
        parse_bytes(text)


class Record:
    """What the observer reads of a finished tunnel."""

    def __init__(self, user: str | None, up: int, down: int, status: int = 200) -> None:
        self.user, self.bytes_up, self.bytes_down, self.status = user, up, down, status


def test_a_spent_quota_refuses_with_retry_after_and_counts_survive_in_the_totals():
    totals = LocalTally()
    config = Config(quota_bytes=1000, users=(UserRules("bob", quota_bytes=0),), accounting_interval=60)
    usage = Usage(config, LocalTally(), totals, get_hub().loop)
    try:
        alice = Identity("alice", "htpasswd")
        usage.check_quota(alice)
        usage.closed(Record("alice", 100, 899))
        usage.check_quota(alice)  # 999 of 1000
        usage.forwarded(Record("alice", 1, 0))
        with pytest.raises(QuotaExceededError) as refused:
            usage.check_quota(alice)
        name, _ = usage.period()
        assert totals.total(f"quota:alice:{name}") == 1000
        assert "alice" in str(refused.value) and name in str(refused.value)
        assert refused.value.status == 429 and dict(refused.value.headers)["Retry-After"].isdigit()
        usage.closed(Record("bob", 10**9, 0))
        usage.check_quota(Identity("bob", "htpasswd"))  # his table: no quota
        assert usage.accounts["alice"] == [100 + 1, 899, 1, 1]
    finally:
        usage.close()


class Proxy:
    """What the accounting records read of a proxy: its services' usage."""

    def __init__(self, usage: Usage) -> None:
        self.services = type("Services", (), {"usage": usage})()


def test_accounting_records_say_what_each_user_moved_in_the_interval(tmp_path):
    usage = Usage(Config(quota_bytes=10**6, accounting_interval=60), LocalTally(), LocalTally(), get_hub().loop)
    log = TextAccessLog(str(tmp_path / "access.log"))
    records = AccountingRecords(Proxy(usage), log, 60)
    try:
        usage.closed(Record("alice", 10, 2000))
        usage.forwarded(Record("carol", 5, 50))
        records.write()
        usage.closed(Record("alice", 1, 100))
        records.write()
        records.write()  # nothing new: no record
        log.flush()
        lines = [line.split(" ", 1)[1] for line in (tmp_path / "access.log").read_text().splitlines()]
    finally:
        usage.close()
        log.close()
    assert [line.rsplit(" seconds=", 1)[0] for line in lines] == [
        "event=account user=alice up=10 down=2000 tunnels=1 requests=0",
        "event=account user=carol up=5 down=50 tunnels=0 requests=1",
        "event=account user=alice up=1 down=100 tunnels=1 requests=0",
    ]
    assert lines[0].endswith("quota_used=2010 quota=1000000") and lines[2].endswith("quota_used=2111 quota=1000000")
