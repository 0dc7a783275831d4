"""Counters shared by every process of a service, and of a fleet.

A :class:`Tally` holds named integer counters. Each process adds to its own
share of a counter and reads the sum of every share: the workers of one
service see each other's shares at once (the supervisor's shared memory), the
instances of a fleet within the synchronisation period of ``--shared-state``.
Neither call ever waits on another process or the network.

Two tallies serve a proxy, for two kinds of counter:

* **gauges** go up and down with what is open now (clients per address, a
  user's active tunnels): forgotten when the service stops.
* **totals** only grow (a user's bytes in a quota period, failed logins in a
  window): kept across restarts and upgrades where the backend has a state
  directory. The key names its period (``quota:alice:2026-12``), so a new
  period is a new counter; a backend may drop keys of periods gone by.

:class:`LocalTally` is the simplest case, a dict in one process (tests, and
anything built without the operations layer). A proxy started by the CLI gets
:class:`gconnect.state.shared.SharedTally` on a shared-memory table (an
anonymous one when alone), kept, loaded and synchronised by
:mod:`gconnect.state.keeper`.

Keys, for the backends that persist and share them:

* a period is the key's last ``:`` field, in UTC: ``2026-12`` (a month),
  ``2026-12-06`` (a day) or ``w60-29612345`` (window number 29612345 of 60 s).
  A total is dropped once a whole period has passed since its period ended
  (:func:`gconnect.state.shared.expired`). Keys without such a field never
  expire.
* a total's key is at most :data:`gconnect.state.table.MAX_KEY_BYTES` bytes
  of UTF-8. A longer one is counted in its process only, and the log says so.
* an ``add`` costs about a microsecond (a hash, a shared-memory write, a read
  per other worker). Add per read or per second, not per byte.
"""

from __future__ import annotations

from typing import Protocol


class Tally(Protocol):
    def add(self, key: str, delta: int) -> int:
        """Add *delta* to this process's share of *key*; returns :meth:`total` after it."""
        ...

    def total(self, key: str) -> int:
        """The sum of every share of *key* as this process knows it now (0 if never added)."""
        ...

    def mine(self, key: str) -> int:
        """This process's own share of *key*."""
        ...


class LocalTally:
    """A tally of one process: every share is this process's."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, key: str, delta: int) -> int:
        count = self._counts.get(key, 0) + delta
        if count:
            self._counts[key] = count
        else:
            self._counts.pop(key, None)
        return count

    def total(self, key: str) -> int:
        return self._counts.get(key, 0)

    mine = total
