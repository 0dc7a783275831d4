"""The metrics' arithmetic without a process: histogram buckets."""

from __future__ import annotations

import bisect
import itertools
import time
from types import SimpleNamespace

import pytest

from gconnect.ops.metrics import HANDSHAKE_BUCKETS, REQUEST_BUCKETS, Stats

pytestmark = pytest.mark.timeout(60)


def test_stats_histogram_buckets_are_upper_bounds():
    # le= is inclusive: a handshake of exactly a bucket's bound counts in that bucket.
    assert bisect.bisect_left(HANDSHAKE_BUCKETS, HANDSHAKE_BUCKETS[0]) == 0
    stats = Stats()  # the observer of a process without an access log
    now = time.monotonic()
    stats.opened(SimpleNamespace(started=now - HANDSHAKE_BUCKETS[0] / 10))
    stats.opened(SimpleNamespace(started=now - HANDSHAKE_BUCKETS[-1] * 2))
    assert stats.handshake_counts[0] == 1 and stats.handshake_counts[-1] == 1
    stats.closed(SimpleNamespace(status=200, end_reason="client_eof", bytes_up=3, bytes_down=4, sni_check=None))
    stats.closed(SimpleNamespace(status=403, end_reason="denied", bytes_up=0, bytes_down=0, sni_check=None))
    assert stats.tunnels_open == 1 and stats.outcomes == {(200, "client_eof"): 1, (403, "denied"): 1}
    assert (stats.bytes_up, stats.bytes_down) == (3, 4)


def _request(seconds: float, status: int = 200, reason: str = "complete") -> SimpleNamespace:
    """A finished forwarded request that took about *seconds*."""
    return SimpleNamespace(
        status=status, end_reason=reason, started=time.monotonic() - seconds, bytes_up=0, bytes_down=10
    )


def durations_and_buckets(bounds: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """Durations in every bucket of *bounds*, in both directions and repeated, and
    the counts per bucket that bisection gives them (``le`` is inclusive)."""
    middles = [bounds[0] / 10, *((low + high) / 2 for low, high in itertools.pairwise(bounds)), bounds[-1] * 2]
    order = [*middles, *reversed(middles), middles[3], middles[3], middles[0], middles[-1], middles[0]]
    expected = [0] * (len(bounds) + 1)
    for seconds in order:
        expected[bisect.bisect_left(bounds, seconds)] += 1
    return order, expected


def test_request_histogram_matches_bisection_whatever_the_order():
    # The bucket is looked for in the last request's first.
    order, expected = durations_and_buckets(REQUEST_BUCKETS)
    stats = Stats()
    for seconds in order:
        stats.forwarded(_request(seconds))
    assert stats.request_counts == expected
    assert stats.request_sum == pytest.approx(sum(order), abs=0.1)
    assert stats.bytes_down == 10 * len(order)


def test_handshake_histogram_matches_bisection_whatever_the_order():
    order, expected = durations_and_buckets(HANDSHAKE_BUCKETS)
    stats = Stats()
    for seconds in order:
        stats.opened(SimpleNamespace(started=time.monotonic() - seconds))
    assert stats.handshake_counts == expected and stats.tunnels_open == len(order)


def test_request_outcomes_are_rows_by_status_and_reason():
    stats = Stats()
    for status, reason in [(200, "complete"), (502, "bad_response"), (200, "complete"), (200, "client_timeout")]:
        stats.forwarded(_request(0.0001, status, reason))
    assert stats.request_outcome_rows() == [
        [200, "client_timeout", 1],
        [200, "complete", 2],
        [502, "bad_response", 1],
    ]
