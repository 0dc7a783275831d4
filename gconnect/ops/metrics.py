"""Counters of one process, and their Prometheus endpoint.

The hot path only adds to plain Python numbers in :class:`Stats` (a few tens
of nanoseconds per tunnel, whether or not metrics are served); prometheus-client
is imported only when ``--metrics-listen`` is given, and turns those numbers
into metric families at scrape time (a custom collector), so a scrape costs the
tunnels nothing but the moment it takes. The endpoint is a gevent WSGI server in
the same hub: it yields like any tunnel and never blocks one.

Several workers (``--workers``): each worker has its own Stats and does not
listen; it writes :func:`snapshot` as JSON to a directory the supervisor made
(once a second, and on exit), and the supervisor serves the sum with the same
:func:`families`, plus per-worker gauges with a ``worker`` label
(``workermetrics``). prometheus-client's multiprocess mode (mmap files per
metric) would cost a file write on every increment instead.
"""

from __future__ import annotations

import time
from bisect import bisect_left as _bucket
from collections.abc import Iterator
from typing import Any

from ..tunnel.namecheck import NAME_CHECK_REFUSED

#: Seconds from accept to the 200: a loopback tunnel set-up is ~100 µs, a
#: cached-DNS one to a near host 1-20 ms, a cold one 50 ms to the DNS timeout.
HANDSHAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds per forwarded request, head received to response sent: a cached
#: loopback GET is ~200 µs, a small page over the internet 20-500 ms.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Statuses that mean a limit refused the client (429 per-client
#: limits, 503 when the proxy is full).
LIMIT_STATUSES = (429, 503)
#: Each bucket's bounds: bucket i holds lower[i] < seconds <= upper[i]
#: (``bisect_left``'s, and Prometheus's ``le``).
_REQUEST_LOWER, _REQUEST_UPPER = (float("-inf"), *REQUEST_BUCKETS), (*REQUEST_BUCKETS, float("inf"))
_HANDSHAKE_LOWER, _HANDSHAKE_UPPER = (float("-inf"), *HANDSHAKE_BUCKETS), (*HANDSHAKE_BUCKETS, float("inf"))


class Stats:
    """What the tunnels of this process did, in plain numbers."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "handshake_bucket",
        "handshake_counts",
        "handshake_sum",
        "name_checks",
        "outcomes",
        "request_bucket",
        "request_counts",
        "request_outcomes",
        "request_sum",
        "tunnels_open",
        "would_deny_counts",
    )

    def __init__(self) -> None:
        self.tunnels_open = 0
        #: (status, close reason) -> tunnels ended so
        self.outcomes: dict[tuple[int, str], int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        self.handshake_counts = [0] * (len(HANDSHAKE_BUCKETS) + 1)
        self.handshake_sum = 0.0
        #: The handshake bucket of the last tunnel: the next one is most often in it.
        self.handshake_bucket = 0
        #: Report mode: name-rule reason -> tunnels let through that it would have refused
        self.would_deny_counts: dict[str, int] = {}
        #: The TLS name check: (outcome, "pass" or "close") -> tunnels
        self.name_checks: dict[tuple[str, str], int] = {}
        #: Forwarded requests: status -> reason -> count (no key tuple built per
        #: request), and their durations.
        self.request_outcomes: dict[int, dict[str, int]] = {}
        self.request_counts = [0] * (len(REQUEST_BUCKETS) + 1)
        self.request_sum = 0.0
        #: The duration bucket of the last request: the next one is most often in it.
        self.request_bucket = 0

    # The TunnelObserver contract (gconnect/tunnel/observer.py): Stats is the
    # observer of a process without an access log, one call per moment.

    #: No figure here reads the step times (DNS, connect, first byte).
    timings = False

    def opened(self, tunnel: Any) -> None:
        """A tunnel got its 200."""
        handshake_seconds = time.monotonic() - tunnel.started
        self.tunnels_open += 1
        bucket = self.handshake_bucket
        if not _HANDSHAKE_LOWER[bucket] < handshake_seconds <= _HANDSHAKE_UPPER[bucket]:
            bucket = self.handshake_bucket = _bucket(HANDSHAKE_BUCKETS, handshake_seconds)
        self.handshake_counts[bucket] += 1
        self.handshake_sum += handshake_seconds

    def would_deny(self, tunnel: Any, reason: str) -> None:
        """Report mode let a tunnel through that the name rules refuse for *reason*."""
        counts = self.would_deny_counts
        counts[reason] = counts.get(reason, 0) + 1

    def closed(self, tunnel: Any) -> None:
        """A client is done (tunnel or refusal); status 200 means it was counted open."""
        status = tunnel.status
        if status == 200:
            self.tunnels_open -= 1
        outcomes = self.outcomes
        reason = tunnel.end_reason
        key = (status, reason)
        try:
            outcomes[key] += 1
        except KeyError:  # the first of its status and reason
            outcomes[key] = 1
        if tunnel.bytes_up:
            self.bytes_up += tunnel.bytes_up
        if tunnel.bytes_down:
            self.bytes_down += tunnel.bytes_down
        check = tunnel.sni_check
        if check is not None:
            # The TLS name check's outcome, and whether it closed the tunnel.
            checks = self.name_checks
            key2 = (check, "close" if reason == NAME_CHECK_REFUSED else "pass")
            checks[key2] = checks.get(key2, 0) + 1

    def forwarded(self, record: Any) -> None:
        """A forwarded request is done (answered, refused or cut off). Once per
        request, so nothing is built: no key tuple, and the bucket is the last
        request's when it fits there (two comparisons), else bisected."""
        try:
            self.request_outcomes[record.status][record.end_reason] += 1
        except KeyError:  # the first of its status and reason
            by_reason = self.request_outcomes.setdefault(record.status, {})
            by_reason[record.end_reason] = by_reason.get(record.end_reason, 0) + 1
        seconds = time.monotonic() - record.started
        bucket = self.request_bucket
        if not _REQUEST_LOWER[bucket] < seconds <= _REQUEST_UPPER[bucket]:
            bucket = self.request_bucket = _bucket(REQUEST_BUCKETS, seconds)
        self.request_counts[bucket] += 1
        self.request_sum += seconds
        if record.bytes_up:
            self.bytes_up += record.bytes_up
        self.bytes_down += record.bytes_down

    def request_outcome_rows(self) -> list[list[Any]]:
        """``[status, reason, count]`` of the forwarded requests, sorted."""
        return sorted(
            [status, reason, count]
            for status, by_reason in self.request_outcomes.items()
            for reason, count in by_reason.items()
        )


def snapshot(proxy: Any, observer: Any) -> dict[str, Any]:
    """The figures of *proxy* (a :class:`gconnect.proxy.Proxy`) and of its
    *observer* (:class:`gconnect.ops.observer.ProcessObserver`) as plain
    JSON-able data: what one scrape shows, and what a worker writes for its
    supervisor (``workermetrics``)."""
    stats: Stats = observer.stats
    services = proxy.services
    access_log = observer.access_log
    return {
        "tunnels_open": stats.tunnels_open,
        "clients": proxy.open_count(),
        "outcomes": [[status, reason, count] for (status, reason), count in sorted(stats.outcomes.items())],
        "bytes_up": stats.bytes_up,
        "bytes_down": stats.bytes_down,
        "handshake_counts": list(stats.handshake_counts),
        "handshake_sum": stats.handshake_sum,
        "request_outcomes": stats.request_outcome_rows(),
        "request_counts": list(stats.request_counts),
        "request_sum": stats.request_sum,
        "dns_lookups": services.resolver.lookups,
        "dns_cache_hits": services.resolver.cache_hits,
        "policy_generation": proxy.generation,
        "access_log_dropped_lines": access_log.dropped_lines if access_log is not None else 0,
        "would_deny": [[reason, count] for reason, count in sorted(stats.would_deny_counts.items())],
        "tls_name_checks": [[outcome, action, count] for (outcome, action), count in sorted(stats.name_checks.items())],
        "auth_helper_failures": auth_helper_failures(services),
        **upstream_figures(services.router),
        "users": user_figures(services),
    }


def user_figures(services: Any) -> list[list[Any]]:
    """``[user, up, down, tunnels, requests]`` per user, only with --metrics-user-label."""
    usage = services.usage
    if usage is None or not services.config.metrics_user_label:
        return []
    return [[user, *account] for user, account in sorted(usage.accounts.items())]


def auth_helper_failures(services: Any) -> list[list[Any]]:
    """``[helper, kind, count]``: helper answers that let no one in (crash, timeout, bh, protocol, start)."""
    pools = services.auth.helper_pools() if services.auth is not None else []
    if services.external_acl is not None:
        pools.append(services.external_acl.pool)
    return [[pool.name, kind, count] for pool in pools for kind, count in sorted(pool.failures.items())]


def upstream_figures(router: Any) -> dict[str, list[list[Any]]]:
    """Each parent's state (``upstream_up``: [pool, url, 0|1]) and attempts by
    outcome (``upstream_tunnels``: [pool, url, outcome, count])."""
    parents = router.snapshot() if router is not None else []
    return {
        "upstream_up": [[pool, url, up] for pool, url, up, _ in parents],
        "upstream_tunnels": [
            [pool, url, outcome, count] for pool, url, _, outcomes in parents for outcome, count in outcomes.items()
        ],
    }


def families(snap: dict[str, Any]) -> Iterator[Any]:
    """The ``gconnect_*`` metric families of one :func:`snapshot` (or of a sum of them)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    outcomes = [(int(status), str(reason), count) for status, reason, count in snap["outcomes"]]
    yield GaugeMetricFamily("gconnect_tunnels_open", "Tunnels past their 200, still open", snap["tunnels_open"])
    yield GaugeMetricFamily("gconnect_clients", "Client connections being served", snap["clients"])
    total = CounterMetricFamily(
        "gconnect_tunnels", "Clients served, by status and close reason", labels=("status", "reason")
    )
    for status, reason, count in sorted(outcomes):
        total.add_metric((str(status), reason), count)
    yield total
    moved = CounterMetricFamily("gconnect_bytes", "Tunnel bytes (up: client to target)", labels=("direction",))
    moved.add_metric(("up",), snap["bytes_up"])
    moved.add_metric(("down",), snap["bytes_down"])
    yield moved
    yield HistogramMetricFamily(
        "gconnect_handshake_seconds",
        "Accept to 200 sent",
        buckets=cumulative_buckets(HANDSHAKE_BUCKETS, snap["handshake_counts"]),
        sum_value=snap["handshake_sum"],
    )
    yield CounterMetricFamily("gconnect_dns_lookups", "DNS lookups sent", snap["dns_lookups"])
    yield CounterMetricFamily("gconnect_dns_cache_hits", "Names answered from the cache", snap["dns_cache_hits"])
    yield CounterMetricFamily(
        "gconnect_auth_failures",
        "Clients answered 407",
        sum(n for status, _, n in outcomes if status == 407),
    )
    yield CounterMetricFamily(
        "gconnect_limit_rejections",
        "Clients refused by a limit (429, 503)",
        # A helper's failure is a 503 too, but no limit: it has its own family below.
        sum(n for status, reason, n in outcomes if status in LIMIT_STATUSES and reason != "auth_unavailable"),
    )
    yield GaugeMetricFamily("gconnect_policy_generation", "Policy reloads applied (SIGHUP)", snap["policy_generation"])
    yield CounterMetricFamily(
        "gconnect_access_log_dropped_lines",
        "Access-log lines dropped because the file could not take them (disk full)",
        snap["access_log_dropped_lines"],
    )
    yield from policy_families(snap)
    yield auth_helper_family(snap)
    yield from upstream_families(snap)
    yield from request_families(snap)
    if snap.get("users"):
        yield from user_families(snap)


def user_families(snap: dict[str, Any]) -> Iterator[Any]:
    """Per-user bytes, tunnels and forwarded requests (--metrics-user-label: one series per user)."""
    from prometheus_client.core import CounterMetricFamily

    moved = CounterMetricFamily(
        "gconnect_user_bytes", "Bytes moved per user (up: client to target)", labels=("user", "direction")
    )
    tunnels = CounterMetricFamily("gconnect_user_tunnels", "Tunnels opened per user", labels=("user",))
    requests = CounterMetricFamily("gconnect_user_requests", "Forwarded http:// requests per user", labels=("user",))
    for user, up, down, opened, forwarded in snap["users"]:
        moved.add_metric((user, "up"), up)
        moved.add_metric((user, "down"), down)
        tunnels.add_metric((user,), opened)
        requests.add_metric((user,), forwarded)
    yield from (moved, tunnels, requests)


def policy_families(snap: dict[str, Any]) -> Iterator[Any]:
    """What the name rules' report mode let through, and the TLS name check's outcomes."""
    from prometheus_client.core import CounterMetricFamily

    would_deny = CounterMetricFamily(
        "gconnect_policy_would_deny",
        "Tunnels let through by --host-rules-mode report that the name rules refuse, by reason",
        labels=("reason",),
    )
    for reason, count in snap.get("would_deny", []):
        would_deny.add_metric((str(reason),), count)
    yield would_deny
    checks = CounterMetricFamily(
        "gconnect_tls_name_checks",
        "Tunnels whose TLS ClientHello server name was checked, by outcome and action (pass, close)",
        labels=("outcome", "action"),
    )
    for outcome, action, count in snap.get("tls_name_checks", []):
        checks.add_metric((str(outcome), str(action)), count)
    yield checks


def request_families(snap: dict[str, Any]) -> Iterator[Any]:
    """Forwarded plain-HTTP requests: how they ended, and how long they took."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    requests = CounterMetricFamily(
        "gconnect_requests", "Forwarded http:// requests, by status and reason", labels=("status", "reason")
    )
    for status, reason, count in snap.get("request_outcomes", []):
        requests.add_metric((str(status), str(reason)), count)
    yield requests
    counts = snap.get("request_counts") or [0] * (len(REQUEST_BUCKETS) + 1)
    yield HistogramMetricFamily(
        "gconnect_request_seconds",
        "Forwarded request, head received to response sent",
        buckets=cumulative_buckets(REQUEST_BUCKETS, counts),
        sum_value=snap.get("request_sum", 0.0),
    )


def cumulative_buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Prometheus histogram buckets (``le`` text, cumulative count) from per-bucket *counts*."""
    buckets, cumulative = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


def auth_helper_family(snap: dict[str, Any]) -> Any:
    """gconnect_auth_helper_failures{helper,kind} from a snapshot."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(
        "gconnect_auth_helper_failures",
        "Auth and external ACL helper requests that failed (the client got 503), by helper and kind",
        labels=("helper", "kind"),
    )
    for helper, kind, count in snap.get("auth_helper_failures", []):
        family.add_metric((str(helper), str(kind)), count)
    return family


def upstream_families(snap: dict[str, Any]) -> Iterator[Any]:
    """The parent pools' families: each parent's state and its tries by outcome."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    up = GaugeMetricFamily(
        "gconnect_upstream_up",
        "1 if the parent proxy is in rotation (every worker agrees), 0 if out",
        labels=("pool", "url"),
    )
    for pool, url, value in snap.get("upstream_up", []):
        up.add_metric((pool, url), value)
    yield up
    tried = CounterMetricFamily(
        "gconnect_upstream_tunnels",
        "Tunnels tried through a parent proxy, by outcome (ok, status_4xx, status_5xx, connect_error, timeout)",
        labels=("pool", "url", "outcome"),
    )
    for pool, url, outcome, count in snap.get("upstream_tunnels", []):
        tried.add_metric((pool, url, outcome), count)
    yield tried


class ProxyCollector:
    """Reads one in-process proxy and its observer at scrape time."""

    def __init__(self, proxy: Any, observer: Any) -> None:
        self.proxy = proxy
        self.observer = observer

    def collect(self) -> Iterator[Any]:
        return families(snapshot(self.proxy, self.observer))
