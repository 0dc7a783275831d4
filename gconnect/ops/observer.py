"""The tunnels' observer in a proxy process: the counters and the access log.

:class:`ProcessObserver` implements :class:`~gconnect.tunnel.observer.TunnelObserver`
for ``gconnect serve``: every tunnel's answer and end go to the
:class:`~gconnect.ops.metrics.Stats` counters and, when one is configured, to
the access log. One object, so the data path makes one call per moment.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .accesslog import AccessLog
from .metrics import Stats

if TYPE_CHECKING:
    from ..tunnel.observer import TunnelRecord as Tunnel


class ProcessObserver:
    """Counts every tunnel and writes its access-log records."""

    __slots__ = ("access_log", "stats")

    def __init__(self, stats: Stats, access_log: AccessLog | None) -> None:
        self.stats = stats
        self.access_log = access_log

    def opened(self, tunnel: Tunnel) -> None:
        self.stats.opened(time.monotonic() - tunnel.started)
        if self.access_log is not None:
            self.access_log.opened(tunnel)

    def would_deny(self, tunnel: Tunnel, reason: str) -> None:
        self.stats.would_deny(reason)

    def closed(self, tunnel: Tunnel) -> None:
        self.stats.closed(tunnel.status, tunnel.end_reason, tunnel.bytes_up, tunnel.bytes_down)
        if self.access_log is not None:
            self.access_log.closed(tunnel)
