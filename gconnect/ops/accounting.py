"""Per-user accounting records: every ``--accounting-interval`` seconds, one
access-log record per user who moved bytes, opened a tunnel or sent a
forwarded request in the interval.

The figures are the :class:`~gconnect.tunnel.usage.Usage` accounts (bytes of
open tunnels counted every half second, the rest at their close), read as
differences from the last record; a worker writes its own records, so with
``--workers`` a user's interval is the sum of the workers' lines. The last
record is written at stop.
"""

from __future__ import annotations

from typing import Any

from gevent import get_hub

from .accesslog import AccessLog

#: The figures of a record, in the order of an account (Usage.accounts).
FIELDS = ("up", "down", "tunnels", "requests")


class AccountingRecords:
    """Writes *proxy*'s per-user accounts to *access_log* every *interval* seconds."""

    def __init__(self, proxy: Any, access_log: AccessLog, interval: float) -> None:
        self.proxy = proxy
        self.access_log = access_log
        self.interval = interval
        self.last: dict[str, list[int]] = {}
        loop = get_hub().loop
        self.written_at = loop.now()
        self._timer = loop.timer(interval, interval)
        self._timer.ref = False

    def start(self) -> None:
        self._timer.start(self.write)

    def write(self) -> None:
        """One record per user whose figures moved since the last."""
        usage = self.proxy.services.usage
        now = get_hub().loop.now()
        seconds, self.written_at = round(now - self.written_at, 3), now
        if usage is None:
            return
        for user, account in list(usage.accounts.items()):
            last = self.last.get(user, [0, 0, 0, 0])
            if account == last:
                continue
            figures: dict[str, Any] = {key: now_ - then for key, now_, then in zip(FIELDS, account, last, strict=True)}
            figures["seconds"] = seconds
            quota = usage.quota_status(user)
            if quota is not None:
                figures["quota_used"], figures["quota"] = quota
            self.access_log.account(user, figures)
            self.last[user] = list(account)

    def stop(self) -> None:
        """The process stops: the last record, then no more."""
        self._timer.close()
        self.write()


def start_accounting(config: Any, proxy: Any, access_log: AccessLog | None) -> AccountingRecords | None:
    """``--accounting-interval`` with an access log: the records, started (None otherwise)."""
    if not config.accounting_interval or access_log is None:
        return None
    records = AccountingRecords(proxy, access_log, config.accounting_interval)
    records.start()
    return records
