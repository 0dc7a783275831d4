"""The metrics' arithmetic without a process: histogram buckets."""

from __future__ import annotations

import bisect
import time
from types import SimpleNamespace

import pytest

from gconnect.ops.metrics import HANDSHAKE_BUCKETS, Stats

pytestmark = pytest.mark.timeout(60)


def test_stats_histogram_buckets_are_upper_bounds():
    # le= is inclusive: a handshake of exactly a bucket's bound counts in that bucket.
    assert bisect.bisect_left(HANDSHAKE_BUCKETS, HANDSHAKE_BUCKETS[0]) == 0
    stats = Stats()  # the observer of a process without an access log
    now = time.monotonic()
    stats.opened(SimpleNamespace(started=now - HANDSHAKE_BUCKETS[0] / 10))
    stats.opened(SimpleNamespace(started=now - HANDSHAKE_BUCKETS[-1] * 2))
    assert stats.handshake_counts[0] == 1 and stats.handshake_counts[-1] == 1
    stats.closed(SimpleNamespace(status=200, end_reason="client_eof", bytes_up=3, bytes_down=4))
    stats.closed(SimpleNamespace(status=403, end_reason="denied", bytes_up=0, bytes_down=0))
    assert stats.tunnels_open == 1 and stats.outcomes == {(200, "client_eof"): 1, (403, "denied"): 1}
    assert (stats.bytes_up, stats.bytes_down) == (3, 4)
