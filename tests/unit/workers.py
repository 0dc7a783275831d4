"""Two workers' views of one shared state region, for the tests of what workers share."""

from __future__ import annotations

from gconnect.state.shared import SharedTally
from gconnect.state.table import FIRST_WORKER_ROW, Region


def two_workers(table: str) -> tuple[SharedTally, SharedTally]:
    """*table*'s tallies of the first two worker rows of a new region in a memfd, both rows handed out."""
    region = Region.create(FIRST_WORKER_ROW + 2, 64, shared=True)
    region.hand_out(FIRST_WORKER_ROW + 1)
    return SharedTally(region, table, FIRST_WORKER_ROW), SharedTally(region, table, FIRST_WORKER_ROW + 1)
