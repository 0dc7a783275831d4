"""How many examples a property test draws: all of them in CI, a fifth in the edit loop.

CI (``CI`` set, as ``.ci/run`` runs) keeps every test's full count, so the
suite is as strict as it was; a developer's ``pytest tests/unit`` after each
edit draws a fifth (at least 50), which keeps that loop to seconds on a
2-core machine. ``GCONNECT_FULL_EXAMPLES=1`` asks for the full count locally.
"""

from __future__ import annotations

import os

FULL = bool(os.environ.get("CI") or os.environ.get("GCONNECT_FULL_EXAMPLES"))


def examples(count: int) -> int:
    """*count* in CI; a fifth of it (at least 50) otherwise."""
    return count if FULL else max(50, count // 5)
