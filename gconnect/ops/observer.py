"""The tunnels' observer in a proxy process: the counters and the access log.

:class:`ProcessObserver` holds the :class:`~gconnect.ops.metrics.Stats`
counters and the access log (None without one); :meth:`ProcessObserver.observer`
is what the data path is given as its
:class:`~gconnect.tunnel.observer.TunnelObserver`: the counters alone when
there is no access log (one call per moment), else this object, which tells
both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .accesslog import AccessLog
from .metrics import Stats

if TYPE_CHECKING:
    from ..tunnel.observer import ForwardedRecord
    from ..tunnel.observer import TunnelRecord as Tunnel


class ProcessObserver:
    """A process's counters and access log (None without one)."""

    __slots__ = ("access_log", "stats")

    def __init__(self, stats: Stats, access_log: AccessLog | None) -> None:
        self.stats = stats
        self.access_log = access_log

    def observer(self) -> Stats | StatsAndLog:
        """The TunnelObserver to give the data path."""
        if self.access_log is None:
            return self.stats
        return StatsAndLog(self.stats, self.access_log)


class StatsAndLog:
    """The observer of a process with an access log: counts, then writes."""

    __slots__ = ("access_log", "stats")

    def __init__(self, stats: Stats, access_log: AccessLog) -> None:
        self.stats = stats
        self.access_log = access_log

    @property
    def timings(self) -> bool:
        """Whether the log's records show the step times (only JSON's do)."""
        return self.access_log.timings

    def opened(self, tunnel: Tunnel) -> None:
        self.stats.opened(tunnel)
        self.access_log.opened(tunnel)

    def would_deny(self, tunnel: Tunnel, reason: str) -> None:
        self.stats.would_deny(tunnel, reason)

    def closed(self, tunnel: Tunnel) -> None:
        self.stats.closed(tunnel)
        self.access_log.closed(tunnel)

    def forwarded(self, request: ForwardedRecord) -> None:
        self.stats.forwarded(request)
        self.access_log.forwarded(request)
