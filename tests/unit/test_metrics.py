"""The metrics' arithmetic without a process: histogram buckets."""

from __future__ import annotations

import pytest

from gconnect.ops.metrics import HANDSHAKE_BUCKETS, Stats

pytestmark = pytest.mark.timeout(60)


def test_stats_histogram_buckets_are_upper_bounds():
    stats = Stats()
    stats.opened(HANDSHAKE_BUCKETS[0])  # le= is inclusive
    stats.opened(HANDSHAKE_BUCKETS[-1] * 2)
    assert stats.handshake_counts[0] == 1 and stats.handshake_counts[-1] == 1
    stats.closed(200, "client_eof", 3, 4)
    stats.closed(403, "denied", 0, 0)
    assert stats.tunnels_open == 1 and stats.outcomes == {(200, "client_eof"): 1, (403, "denied"): 1}
