"""Metrics with ``--workers N``: workers write snapshots, the supervisor serves their sum.

A worker does not listen for scrapes. :class:`SnapshotWriter` writes
``metrics.snapshot(proxy)`` plus its process figures (RSS, CPU seconds, open
descriptors, from /proc/self) as JSON to ``DIR/<pid>.json`` every
:data:`SNAPSHOT_INTERVAL_SECONDS` and once more when it stops, atomically
(a temporary file, then ``os.replace``), so a reader sees the old snapshot or
the new one, never half of one. The tunnels' hot path is untouched: the only
new cost is that timer.

The supervisor makes DIR, serves ``/metrics`` from its own hub with
:class:`WorkerCollector` and removes DIR when it exits. At scrape time the
collector reads every worker's file and yields:

- the single-process families (``gconnect_*``) summed over the workers, so a
  dashboard reads the same names with one process or many; the policy
  generation is the highest any worker reached, a parent proxy is up
  (``gconnect_upstream_up``) only if every worker has it in rotation, and ``process_*`` (open
  descriptors, RSS, CPU) are sums over the workers (the small supervisor itself
  is not counted);
- per-worker series with a ``worker`` label (the index, 0 to N-1):
  ``gconnect_worker_tunnels_open``, ``_clients``, ``_open_fds``, ``_max_fds``,
  ``_resident_memory_bytes``, ``_cpu_seconds_total``, ``_policy_generation``,
  ``_restarts_total``.

Counters stay monotonic across restarts and upgrades: when a worker exits, the
supervisor folds the counters of its last snapshot into a base kept per worker
index and deletes its file; totals (and per-worker counters) are base plus live
figures. We label by index, not by pid, so restarts do not leave a trail of
dead series. During an upgrade an old worker draining and its successor share
an index: their figures are added. A new generation with more workers adds
indices; one with fewer keeps the counters of the indices it no longer has.
A worker that stops normally writes a final snapshot first; one killed by
SIGKILL loses what it counted since its last snapshot (at most one interval).
Gauges of a dead worker are dropped with its file.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import gevent

from .metrics import HANDSHAKE_BUCKETS, REQUEST_BUCKETS, families, snapshot
from .metricsserver import MetricsServer

log = logging.getLogger(__name__)

#: How often a worker writes its snapshot: Prometheus scrapes every 15-60 s
#: by default, so a second of staleness is below what a scrape can notice.
SNAPSHOT_INTERVAL_SECONDS = 1.0
#: Summed over workers and over a worker's past lives (never go backwards).
COUNTER_FIELDS = (
    "bytes_up",
    "bytes_down",
    "handshake_sum",
    "dns_lookups",
    "dns_cache_hits",
    "access_log_dropped_lines",
    "cpu_seconds",
)
#: Summed over the live workers only.
GAUGE_FIELDS = ("tunnels_open", "clients", "open_fds", "rss_bytes")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    """Descriptors open in this process."""
    # Linux 6.2+ gives the count as the directory's size, O(1); listing it
    # costs ~0.7 ms per 1,000 descriptors of hub time (14 ms at 19,000).
    counted = os.stat("/proc/self/fd").st_size
    return counted if counted > 0 else len(os.listdir("/proc/self/fd"))


def process_figures() -> dict[str, Any]:
    """This process's RSS, CPU seconds and descriptors, from /proc/self."""
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    times = os.times()
    return {
        "rss_bytes": rss_pages * _PAGE_BYTES,
        "cpu_seconds": times.user + times.system,
        "open_fds": open_fds(),
        "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def empty_snapshot() -> dict[str, Any]:
    """A snapshot with every figure zero: the start of a sum."""
    return {
        "tunnels_open": 0,
        "clients": 0,
        "outcomes": [],
        "bytes_up": 0,
        "bytes_down": 0,
        "handshake_counts": [0] * (len(HANDSHAKE_BUCKETS) + 1),
        "handshake_sum": 0.0,
        "dns_lookups": 0,
        "dns_cache_hits": 0,
        "policy_generation": 0,
        "access_log_dropped_lines": 0,
        "would_deny": [],
        "tls_name_checks": [],
        "auth_helper_failures": [],
        "rss_bytes": 0,
        "cpu_seconds": 0.0,
        "open_fds": 0,
        "max_fds": 0,
        "upstream_up": [],
        "upstream_tunnels": [],
        "request_outcomes": [],
        "request_counts": [0] * (len(REQUEST_BUCKETS) + 1),
        "request_sum": 0.0,
        "users": [],
    }


def add_counters(into: dict[str, Any], snap: dict[str, Any]) -> None:
    """Add *snap*'s counters (not its gauges) to *into*."""
    for field in COUNTER_FIELDS:
        into[field] += snap[field]
    into["handshake_counts"] = [a + b for a, b in zip(into["handshake_counts"], snap["handshake_counts"], strict=True)]
    outcomes = {(status, reason): count for status, reason, count in into["outcomes"]}
    for status, reason, count in snap["outcomes"]:
        outcomes[(status, reason)] = outcomes.get((status, reason), 0) + count
    into["outcomes"] = [[status, reason, count] for (status, reason), count in sorted(outcomes.items())]
    would_deny = dict(into["would_deny"])
    # A worker started by an older release writes no "would_deny".
    for reason, count in snap.get("would_deny", []):
        would_deny[reason] = would_deny.get(reason, 0) + count
    into["would_deny"] = [[reason, count] for reason, count in sorted(would_deny.items())]
    checks = {(outcome, action): count for outcome, action, count in into["tls_name_checks"]}
    # .get: a worker of an older release writes no "tls_name_checks".
    for outcome, action, count in snap.get("tls_name_checks", []):
        checks[(outcome, action)] = checks.get((outcome, action), 0) + count
    into["tls_name_checks"] = [[*key, count] for key, count in sorted(checks.items())]
    failures = {(helper, kind): count for helper, kind, count in into["auth_helper_failures"]}
    for helper, kind, count in snap.get("auth_helper_failures", []):
        failures[(helper, kind)] = failures.get((helper, kind), 0) + count
    into["auth_helper_failures"] = [[*key, count] for key, count in sorted(failures.items())]
    tried = {(pool, url, outcome): count for pool, url, outcome, count in into["upstream_tunnels"]}
    # .get: a worker of the previous release (during an upgrade) writes no upstream figures.
    for pool, url, outcome, count in snap.get("upstream_tunnels", []):
        tried[(pool, url, outcome)] = tried.get((pool, url, outcome), 0) + count
    into["upstream_tunnels"] = [[*key, count] for key, count in sorted(tried.items())]
    # .get: a worker of the previous release (during an upgrade) writes no request figures.
    requests = {(status, reason): count for status, reason, count in into["request_outcomes"]}
    for status, reason, count in snap.get("request_outcomes", []):
        requests[(status, reason)] = requests.get((status, reason), 0) + count
    into["request_outcomes"] = [[status, reason, count] for (status, reason), count in sorted(requests.items())]
    counts = snap.get("request_counts") or [0] * len(into["request_counts"])
    into["request_counts"] = [a + b for a, b in zip(into["request_counts"], counts, strict=True)]
    into["request_sum"] += snap.get("request_sum", 0.0)
    users = {user: figures for user, *figures in into["users"]}
    for user, *figures in snap.get("users", []):
        users[user] = [a + b for a, b in zip(users.get(user, [0] * len(figures)), figures, strict=True)]
    into["users"] = [[user, *figures] for user, figures in sorted(users.items())]


def add_gauges(into: dict[str, Any], snap: dict[str, Any]) -> None:
    """Add *snap*'s gauges to *into*; the policy generation is the highest seen."""
    for field in GAUGE_FIELDS:
        into[field] += snap[field]
    into["policy_generation"] = max(into["policy_generation"], snap["policy_generation"])
    into["max_fds"] = snap["max_fds"]
    # A parent is up only if every worker has it in rotation.
    up = {(pool, url): value for pool, url, value in into["upstream_up"]}
    for pool, url, value in snap.get("upstream_up", []):
        up[(pool, url)] = min(value, up.get((pool, url), value))
    into["upstream_up"] = [[*key, value] for key, value in sorted(up.items())]


class SnapshotWriter:
    """In a worker: write the proxy's snapshot to *directory* every interval and at stop."""

    def __init__(
        self, proxy: Any, observer: Any, directory: str, index: int, *, interval: float = SNAPSHOT_INTERVAL_SECONDS
    ) -> None:
        self.proxy = proxy
        self.observer = observer
        self.index = index
        self.interval = interval
        self.path = os.path.join(directory, f"{os.getpid()}.json")
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.write()
            gevent.sleep(self.interval)

    def write(self) -> None:
        """Replace the snapshot file (a temporary file, then os.replace)."""
        temporary = self.path + ".tmp"
        try:
            data = {
                **snapshot(self.proxy, self.observer),
                **process_figures(),
                "pid": os.getpid(),
                "worker": self.index,
            }
            with open(temporary, "w") as f:
                f.write(json.dumps(data))
            os.replace(temporary, self.path)
        except OSError as exc:
            # Most likely the supervisor removed the directory: it is gone or
            # stopping, and so are we. The next tick tries again either way.
            log.debug("cannot write the metrics snapshot %s: %s", self.path, exc)

    def stop(self) -> None:
        """Stop the timer and write the final figures."""
        if self._greenlet is not None:
            self._greenlet.kill()
        self.write()


class WorkerCollector:
    """In the supervisor: the workers' snapshots, summed, at scrape time."""

    def __init__(self, directory: str, workers: int) -> None:
        self.directory = directory
        self.workers = workers
        #: Per worker index: the counters of its earlier processes.
        self.base = [empty_snapshot() for _ in range(workers)]
        self.restarts = [0] * workers

    def _grow(self, workers: int) -> None:
        while self.workers < workers:
            self.base.append(empty_snapshot())
            self.restarts.append(0)
            self.workers += 1

    def _read(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def retire(self, index: int, pid: int, restarted: bool = True) -> None:
        """Worker *index* (process *pid*) exited: keep its counters as a base.
        *restarted*: it died and is being replaced (not drained by an upgrade)."""
        self._grow(index + 1)
        path = os.path.join(self.directory, f"{pid}.json")
        snap = self._read(path)
        if snap is not None:
            add_counters(self.base[index], snap)
        self.restarts[index] += restarted
        for name in (path, path + ".tmp"):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass

    def live(self) -> dict[int, dict[str, Any]]:
        """The current figures of each index with a live worker (two during an upgrade: added)."""
        found: dict[int, dict[str, Any]] = {}
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                snap = self._read(os.path.join(self.directory, name))
                index = snap.get("worker", -1) if snap is not None else -1
                if snap is None or not isinstance(index, int) or index < 0:
                    continue
                self._grow(index + 1)
                if index not in found:
                    found[index] = empty_snapshot()
                add_counters(found[index], snap)
                add_gauges(found[index], snap)
        return found

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        live = self.live()
        total = empty_snapshot()
        per_worker = []
        for index in range(self.workers):
            worker = empty_snapshot()
            add_counters(worker, self.base[index])
            if index in live:
                add_counters(worker, live[index])
                add_gauges(worker, live[index])
            add_counters(total, worker)
            if index in live:
                add_gauges(total, worker)
            per_worker.append((str(index), index in live, worker))
        yield from families(total)
        yield GaugeMetricFamily("process_open_fds", "Open descriptors, summed over the workers", total["open_fds"])
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory, summed over the workers", total["rss_bytes"]
        )
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU seconds, summed over the workers", total["cpu_seconds"]
        )
        gauges = (
            ("tunnels_open", "gconnect_worker_tunnels_open", "Tunnels past their 200, still open"),
            ("clients", "gconnect_worker_clients", "Client connections being served"),
            ("open_fds", "gconnect_worker_open_fds", "Open descriptors"),
            ("max_fds", "gconnect_worker_max_fds", "Descriptor limit (RLIMIT_NOFILE)"),
            ("rss_bytes", "gconnect_worker_resident_memory_bytes", "Resident memory"),
            ("policy_generation", "gconnect_worker_policy_generation", "Policy reloads applied (SIGHUP)"),
        )
        for field, name, text in gauges:
            family = GaugeMetricFamily(name, f"{text}, per worker", labels=("worker",))
            for label, alive, worker in per_worker:
                if alive:
                    family.add_metric((label,), worker[field])
            yield family
        cpu = CounterMetricFamily(
            "gconnect_worker_cpu_seconds", "User and system CPU seconds, per worker", labels=("worker",)
        )
        restarts = CounterMetricFamily("gconnect_worker_restarts", "Times the worker was restarted", labels=("worker",))
        for index, (label, _, worker) in enumerate(per_worker):
            cpu.add_metric((label,), worker["cpu_seconds"])
            restarts.add_metric((label,), self.restarts[index])
        yield cpu
        yield restarts


class SupervisorMetrics:
    """The snapshot directory and the ``/metrics`` server of a supervisor."""

    def __init__(self, workers: int, address: tuple[str, int]) -> None:
        self.directory = tempfile.mkdtemp(prefix="gconnect-metrics-")
        try:
            self.collector = WorkerCollector(self.directory, workers)
            self.server = MetricsServer(self.collector, address, process_metrics=False)
            self.address = self.server.start()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def close(self) -> None:
        """Stop serving and remove the snapshot directory."""
        self.server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
