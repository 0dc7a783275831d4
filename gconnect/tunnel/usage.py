"""Per-user usage: bandwidth limits, byte quotas and the accounts.

:class:`Usage` is one process's view, kept across reloads (SIGHUP gives it the
new limits with :meth:`Usage.configure`; open tunnels follow). It exists only
when something asks for it (a rate, a quota, accounting): a proxy without any
of them has none, and its tunnels pay nothing.

* **Which tunnels**: :meth:`Usage.attach` is called once a tunnel relays. A
  tunnel with a limit, a quota or accounting to keep is *metered*: its bytes
  are read from its relay every :data:`TICK_SECONDS` and counted; a limited
  one also gets the :mod:`~gconnect.tunnel.shaping` movers (an HTTP/2
  stream, whose relay has none, its throttles). Any other tunnel is counted
  once, at its close (through :class:`UsageObserver`). A forwarded request's
  response and its body are each limited by a
  :class:`~gconnect.tunnel.shaping.Pacer` (:meth:`Usage.pacer`).
* **Quotas**: the bytes a user moved, both ways, are added to the ``totals``
  tally under ``quota:USER:PERIOD`` (``2026-12-06`` or ``2026-12``, UTC), per
  user once a tick, never per read. :meth:`Usage.check_quota` refuses a new
  tunnel or forwarded request with 429 once the total reaches the quota; with
  ``--quota-close`` the tick that finds it spent closes the user's open
  tunnels. So a quota is overshot by at most what the user moves in one tick
  (plus, across a fleet, the shared state's synchronisation period), and a
  forwarded request is counted when it ends.
* **Accounts**: per-user bytes, tunnels and forwarded requests since start,
  for the metrics (``--metrics-user-label``) and the periodic accounting
  records (``--accounting-interval``), read by the operations layer.

Ownership: the usage owns its tick timer and the shaper (:meth:`Usage.close`).
"""

from __future__ import annotations

import datetime
import logging
import math
from typing import Any

from ..config import Config
from ..errors import QuotaExceededError
from ..state.tally import Tally
from .shaping import Limit, Pacer, Shaper

log = logging.getLogger(__name__)

#: How often open tunnels' bytes are counted (and quotas checked): the bound on
#: a quota's overshoot, in seconds of the user's traffic. Bandwidth shares are
#: rebalanced every tick: until then a fleet's instances that each see only
#: their own tunnels of a user each take the whole rate.
TICK_SECONDS = 0.5
#: Key prefixes in the tallies.
QUOTA_PREFIX = "quota:"
USER_PREFIX = "bw:user:"
CLIENT_PREFIX = "bw:client:"
TOTAL_KEY = "bw:total"


def needed(config: Config) -> bool:
    """True if *config* asks for any limit, quota or account."""
    tables = (*config.users, *config.groups)
    return bool(
        config.rate_per_user
        or config.rate_per_client
        or config.rate_total
        or config.quota_bytes
        or config.accounting_interval
        or config.metrics_user_label
        or any(t.rate_per_user or t.quota_bytes for t in tables)
    )


def limit(rate: int | None, burst: int | None, seconds: float = 1.0) -> Limit | None:
    """A bucket's limit from a rate and a burst (0: one second of the rate); None without a rate."""
    if not rate:
        return None
    return Limit(rate, burst or max(1, int(rate * seconds)))


def period(kind: str, now: datetime.datetime) -> tuple[str, int]:
    """The quota period *now* falls in (``2026-12-06`` for a day, ``2026-12``
    for a month, UTC) and the whole seconds until the next one starts."""
    now = now.astimezone(datetime.timezone.utc)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        name, end = start.strftime("%Y-%m-%d"), start + datetime.timedelta(days=1)
    else:
        start = start.replace(day=1)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        name = start.strftime("%Y-%m")
    return name, max(1, math.ceil((end - now).total_seconds()))


class Meter:
    """A metered tunnel: its user, and the bytes of it counted so far."""

    __slots__ = ("down", "up", "user")

    def __init__(self, user: str | None) -> None:
        self.user = user
        self.up = 0
        self.down = 0


class Usage:
    """Limits, quotas and accounts of one process (see the module docstring)."""

    def __init__(self, config: Config, gauges: Tally, totals: Tally, loop: Any) -> None:
        self.totals = totals
        self.loop = loop
        self.shaper = Shaper(gauges, loop, config.bucket_initial)
        #: Open metered tunnels.
        self.metered: dict[Any, Meter] = {}
        #: user -> [bytes up, bytes down] not yet added to the totals and accounts.
        self.pending: dict[str, list[int]] = {}
        #: user -> [bytes up, bytes down, tunnels, forwarded requests] since start.
        self.accounts: dict[str, list[int]] = {}
        #: The group each user was last seen with (their table's limits may come from it).
        self.groups: dict[str, str | None] = {}
        #: Users whose quota this process found spent, by period (logged once).
        self.spent: set[tuple[str, str]] = set()
        self.configure(config)
        self._timer = loop.timer(TICK_SECONDS, TICK_SECONDS)
        self._timer.ref = False  # counting never keeps a stopping process alive
        self._timer.start(self.tick)

    def configure(self, config: Config) -> None:
        """Take *config*'s limits (at start, and on SIGHUP: open tunnels follow)."""
        self.config = config
        self.users = {t.name: config.for_user(t) for t in config.users}
        self.group_configs = {t.name: config.for_user(t) for t in config.groups}
        self.client_limit = limit(config.rate_per_client, config.burst_per_client)
        self.total_limit = limit(config.rate_total, config.burst_total)
        self.quotas = bool(config.quota_bytes or any(c.quota_bytes for c in self.users.values()))
        self.quotas = self.quotas or any(c.quota_bytes for c in self.group_configs.values())
        self.accounting = bool(config.accounting_interval or config.metrics_user_label)
        self.shaper.initial = config.bucket_initial
        self.shaper.reconfigure(self.limit_of)

    def user_config(self, user: str, group: str | None) -> Config:
        """The configuration as it applies to *user*: their table, their group's, or the global one."""
        config = self.users.get(user)
        if config is None and group is not None:
            config = self.group_configs.get(group)
        return config or self.config

    def limit_of(self, key: str) -> Limit | None:
        """The limit of a bucket key now."""
        if key == TOTAL_KEY:
            return self.total_limit
        if key.startswith(CLIENT_PREFIX):
            return self.client_limit
        user = key[len(USER_PREFIX) :]
        config = self.user_config(user, self.groups.get(user))
        return limit(config.rate_per_user, config.burst_per_user)

    def limits_for(self, user: str | None, group: str | None, who: str) -> list[tuple[str, Limit]]:
        """The buckets a tunnel of *user* from client *who* draws on, by key."""
        limits = []
        if user is not None:
            config = self.user_config(user, group)
            user_limit = limit(config.rate_per_user, config.burst_per_user)
            if user_limit is not None:
                limits.append((USER_PREFIX + user, user_limit))
        if self.client_limit is not None:
            limits.append((CLIENT_PREFIX + who, self.client_limit))
        if self.total_limit is not None:
            limits.append((TOTAL_KEY, self.total_limit))
        return limits

    # --- quotas --------------------------------------------------------------------------

    def quota_of(self, user: str) -> int:
        return self.user_config(user, self.groups.get(user)).quota_bytes if self.quotas else 0

    def quota_status(self, user: str) -> tuple[int, int] | None:
        """(bytes used this period, the quota) of *user*, None without a quota."""
        quota = self.quota_of(user)
        if not quota:
            return None
        return self.totals.total(f"{QUOTA_PREFIX}{user}:{self.period()[0]}"), quota

    def period(self) -> tuple[str, int]:
        return period(self.config.quota_period, datetime.datetime.now(datetime.timezone.utc))

    def check_quota(self, identity: Any) -> None:
        """Refuse (429) a new tunnel or request of a user whose quota is spent."""
        if identity is None or not self.quotas:
            return
        user = identity.user
        self.groups[user] = identity.group
        quota = self.quota_of(user)
        if not quota:
            return
        name, seconds_left = self.period()
        used = self.totals.total(f"{QUOTA_PREFIX}{user}:{name}")
        if used >= quota:
            raise QuotaExceededError(
                f"quota of user {user} for {name} is spent: {used} of {quota} bytes", retry_after=seconds_left
            )

    # --- tunnels -------------------------------------------------------------------------

    def attach(self, tunnel: Any) -> None:
        """*tunnel* relays now: meter it, and limit it if a limit applies."""
        relay = tunnel.relay
        if relay is None or relay.end_reason:
            return  # it ended already, and was counted at its close
        user = tunnel.user
        group = tunnel.identity.group if tunnel.identity is not None else None
        if user is not None:
            self.groups[user] = group
        limits = self.limits_for(user, group, tunnel.who)
        if not (limits or self.accounting or (user is not None and self.quota_of(user))):
            return
        self.metered[tunnel] = Meter(user)
        if limits:
            self.shaper.attach(tunnel, (relay.up, relay.down), limits)

    def pacer(self, user: str | None, identity: Any, who: str, *, up: bool = False) -> Pacer | None:
        """The download limit of a forwarded request's response (*up*: the upload
        limit of its body); None if none applies."""
        limits = self.limits_for(user, identity.group if identity is not None else None, who)
        return self.shaper.pacer(limits, up=up) if limits else None

    def closed(self, record: Any) -> None:
        """A tunnel is done: count what it moved since the last tick."""
        meter = self.metered.pop(record, None)
        up, down = record.bytes_up, record.bytes_down
        if meter is not None:
            self.shaper.detach(record)
            up -= meter.up
            down -= meter.down
        user = record.user
        if user is None:
            return
        if up or down:
            self.count(user, up, down)
            if self.quota_of(user):
                self.flush()  # at close, so the next tunnel is judged on this one's bytes
        if self.accounting and record.status == 200:
            self.account(user)[2] += 1

    def forwarded(self, record: Any) -> None:
        """A forwarded request is done: count it, and its bytes."""
        user = record.user
        if user is None:
            return
        if record.bytes_up or record.bytes_down:
            self.count(user, record.bytes_up, record.bytes_down)
            if self.quota_of(user):
                self.flush()
        if self.accounting:
            self.account(user)[3] += 1

    def count(self, user: str, up: int, down: int) -> None:
        pending = self.pending.get(user)
        if pending is None:
            self.pending[user] = [up, down]
        else:
            pending[0] += up
            pending[1] += down

    def account(self, user: str) -> list[int]:
        account = self.accounts.get(user)
        if account is None:
            account = self.accounts[user] = [0, 0, 0, 0]
        return account

    # --- the tick ------------------------------------------------------------------------

    def tick(self) -> None:
        """Count the open metered tunnels' progress, add it up, rebalance the shares."""
        try:
            for tunnel, meter in self.metered.items():
                relay = tunnel.relay
                up, down = relay.up.nbytes, relay.down.nbytes
                if meter.user is not None and (up != meter.up or down != meter.down):
                    self.count(meter.user, up - meter.up, down - meter.down)
                    meter.up, meter.down = up, down
            self.flush()
            self.shaper.rebalance()
        except Exception:
            log.exception("usage tick failed")

    def flush(self) -> None:
        """Add the pending bytes to the accounts and the quota totals; act on spent quotas."""
        pending, self.pending = self.pending, {}
        if not pending:
            return
        name = self.period()[0] if self.quotas else ""
        for user, (up, down) in pending.items():
            if self.accounting:
                account = self.account(user)
                account[0] += up
                account[1] += down
            if self.quotas:
                total = self.totals.add(f"{QUOTA_PREFIX}{user}:{name}", up + down)
                quota = self.quota_of(user)
                if quota and total >= quota:
                    self.quota_spent(user, name, total, quota)

    def quota_spent(self, user: str, name: str, total: int, quota: int) -> None:
        if (user, name) not in self.spent:
            self.spent.add((user, name))
            log.info("quota of user %s for %s is spent (%d of %d bytes)", user, name, total, quota)
        if self.config.quota_close:
            for tunnel in [t for t, meter in self.metered.items() if meter.user == user]:
                tunnel.abort("quota_exceeded")

    def close(self) -> None:
        """Stop counting (the process is done); what is pending is added first."""
        self.tick()
        self._timer.close()


class UsageObserver:
    """The observer of a process with :class:`Usage`: counts, then tells the next one."""

    __slots__ = ("inner", "usage")

    def __init__(self, inner: Any, usage: Usage) -> None:
        self.inner = inner
        self.usage = usage

    def opened(self, tunnel: Any) -> None:
        self.inner.opened(tunnel)

    def would_deny(self, tunnel: Any, reason: str) -> None:
        self.inner.would_deny(tunnel, reason)

    def closed(self, tunnel: Any) -> None:
        self.usage.closed(tunnel)
        self.inner.closed(tunnel)

    def forwarded(self, request: Any) -> None:
        self.usage.forwarded(request)
        self.inner.forwarded(request)
