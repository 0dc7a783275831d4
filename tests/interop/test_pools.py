"""A pool with a real third-party parent: round-robin over gconnect and tinyproxy."""

from __future__ import annotations

import pytest

from ..conftest import wait_until
from ..e2e.test_pools import served, tunnel, via_counts

pytestmark = pytest.mark.timeout(90)


def test_round_robin_spreads_evenly_over_gconnect_and_tinyproxy_parents(start_proxy, echo, tinyproxy):
    first, second = start_proxy(), start_proxy()
    urls = [f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}", f"http://127.0.0.1:{tinyproxy}"]
    child = start_proxy(*(a for url in urls for a in ("--upstream", url)))
    for _ in range(30):
        tunnel(child, echo.target)
    wait_until(lambda: sum(via_counts(child, echo.target).values()) == 30)
    assert via_counts(child, echo.target) == dict.fromkeys(urls, 10)
    # What the parents saw: ten each for ours, and the target saw thirty in all.
    wait_until(lambda: served(first, echo.target) == 10 and served(second, echo.target) == 10)
    assert echo.accepted == 30
