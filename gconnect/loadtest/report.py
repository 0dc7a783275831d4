"""What a load test produced: the ``Run`` record, read back from locust's CSV files and the
users' latency histograms, and its summary (``summary.json``, ``summary.txt``)."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .machine import ProcessStats

REQUEST_TYPES = ("CONNECT", "ECHO")


@dataclass
class Run:
    """Everything a load test produced, as written to summary.json."""

    users: int
    run_time_seconds: int
    locust_workers: int
    message_bytes: int
    think_time_seconds: float
    proxy: str
    target: str
    source_addresses: int
    fd_limit: int
    locust_exit_status: int | None = None
    timed_out: bool = False
    peak_users: int = 0
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    latency_us: dict[str, dict[str, int]] = field(default_factory=dict)
    successes_per_process: dict[str, dict[str, int]] = field(default_factory=dict)
    proxy_process: dict[str, Any] | None = None
    locust_cpu_seconds: float = 0.0
    target_cpu_seconds: float | None = None
    machine_cpu: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def failure_count(self) -> int:
        return sum(row["failures"] for row in self.requests.values())

    def problems(self) -> list[str]:
        """Why this run is not a pass; empty when it is."""
        found = []
        if self.timed_out:
            found.append("locust did not finish in time")
        if self.failure_count:
            found.append(f"{self.failure_count} failed requests")
        for kind in REQUEST_TYPES:
            if self.requests.get(kind, {}).get("requests", 0) == 0:
                found.append(f"no {kind} requests were made")
        if self.peak_users < self.users:
            found.append(f"only {self.peak_users} of {self.users} users were running")
        if self.locust_exit_status not in (0, None) and not found:
            found.append(f"locust exited with status {self.locust_exit_status}")
        return found


def last_history_row(results: Path) -> dict[str, str] | None:
    """The newest Aggregated row locust appended to its stats history, if any yet."""
    try:
        lines = (results / "locust_stats_history.csv").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 2:
        return None
    rows = list(csv.DictReader([lines[0], lines[-1]]))
    return rows[0] if rows else None


def progress_line(elapsed: float, run: Run, history: dict[str, str] | None, proxy: ProcessStats | None) -> str:
    parts = [f"[{elapsed:4.0f}s]"]
    if history:
        parts += [
            f"users {history['User Count']}/{run.users}",
            f"req/s {float(history['Requests/s']):.0f}",
            f"requests {int(history['Total Request Count'])}",
            f"failures {int(history['Total Failure Count'])}",
        ]
    if proxy is not None:
        parts += [
            f"proxy rss {proxy.rss_last_bytes / 2**20:.1f} MiB",
            f"cpu {proxy.cpu_seconds:.1f} s",
            f"peak fds {proxy.fds_peak}",
        ]
    return "  ".join(parts)


def read_request_stats(results: Path) -> dict[str, dict[str, Any]]:
    """Locust's final per-request-type totals (summed over names) from locust_stats.csv."""
    totals: dict[str, dict[str, Any]] = {}
    with open(results / "locust_stats.csv", newline="") as stats:
        for row in csv.DictReader(stats):
            kind = row["Type"]
            if kind not in REQUEST_TYPES:
                continue
            entry = totals.setdefault(kind, {"requests": 0, "failures": 0})
            entry["requests"] += int(row["Request Count"])
            entry["failures"] += int(row["Failure Count"])
            # One name per type in practice; locust's percentiles are whole milliseconds.
            for column in ("50%", "99%", "100%"):
                entry[f"locust_p{column.rstrip('%')}_ms"] = row[column]
    return totals


def read_failures(results: Path) -> list[dict[str, Any]]:
    rows = []
    with open(results / "locust_failures.csv", newline="") as failures:
        for row in csv.DictReader(failures):
            rows.append(
                {
                    "type": row["Method"],
                    "reason": row["Error"],
                    "count": int(row["Occurrences"]),
                }
            )
    return rows


def percentile(counts: Counter[int], fraction: float) -> int:
    """The smallest recorded value with at least ``fraction`` of the samples at or below it."""
    total = sum(counts.values())
    wanted = math.ceil(total * fraction)
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= wanted:
            return value
    return 0


def read_histograms(results: Path) -> dict[str, dict[str, Counter[int]]]:
    """Each locust process's microsecond histograms, by the file it wrote them to."""
    histograms = {}
    for path in sorted(glob.glob(str(results / "latency" / "latency-*.json"))):
        raw = json.loads(Path(path).read_text())
        histograms[Path(path).stem.replace("latency-", "locust pid ")] = {
            kind: Counter({int(value): n for value, n in counts.items()}) for kind, counts in raw.items()
        }
    return histograms


def merge_latency(histograms: dict[str, dict[str, Counter[int]]]) -> dict[str, dict[str, int]]:
    """Percentiles over all locust processes together."""
    merged: dict[str, Counter[int]] = {}
    for per_kind in histograms.values():
        for kind, counts in per_kind.items():
            merged.setdefault(kind, Counter()).update(counts)
    return {
        kind: {
            "p50": percentile(counts, 0.50),
            "p90": percentile(counts, 0.90),
            "p99": percentile(counts, 0.99),
            "p99.9": percentile(counts, 0.999),
            "max": max(counts),
            "samples": sum(counts.values()),
        }
        for kind, counts in merged.items()
        if counts
    }


def successes_per_process(histograms: dict[str, dict[str, Counter[int]]]) -> dict[str, dict[str, int]]:
    """Successful requests per locust process: in distributed mode, proof every worker worked."""
    return {
        name: {kind: sum(per_kind[kind].values()) for kind in REQUEST_TYPES if kind in per_kind}
        for name, per_kind in histograms.items()
    }


def format_latency(latency: dict[str, int] | None) -> str:
    if not latency:
        return "no latency recorded"
    return f"p50 {latency['p50'] / 1000:.2f} ms  p99 {latency['p99'] / 1000:.2f} ms  max {latency['max'] / 1000:.1f} ms"


def format_summary(run: Run) -> str:
    lines = [
        (
            f"users {run.users} (peak seen {run.peak_users}), run {run.run_time_seconds} s, "
            f"{run.message_bytes} B every {run.think_time_seconds} s, "
            f"locust workers {run.locust_workers}, proxy {run.proxy}"
        ),
    ]
    for kind in REQUEST_TYPES:
        entry = run.requests.get(kind, {"requests": 0, "failures": 0})
        lines.append(
            f"{kind:8} {entry['requests']:>9} requests {entry['failures']:>6} failures  "
            + format_latency(run.latency_us.get(kind))
        )
        steady = run.latency_us.get(f"{kind} steady")
        if steady:
            lines.append(f"  once all users ran: {steady['samples']} ok  " + format_latency(steady))
    if len(run.successes_per_process) > 1:
        for name, counts in run.successes_per_process.items():
            lines.append(f"  {name}: " + ", ".join(f"{n} {kind} ok" for kind, n in sorted(counts.items())))
    for failure in run.failures:
        lines.append(f"  failure {failure['type']} {failure['reason']!r}: {failure['count']}")
    proxy = run.proxy_process
    if proxy:
        lines.append(
            f"proxy    peak rss {proxy['rss_peak_mib']:.1f} MiB "
            f"(start {proxy['rss_start_mib']:.1f} MiB, {proxy['rss_per_tunnel_kib']:.1f} KiB "
            f"per tunnel), cpu {proxy['cpu_seconds']:.1f} s, peak fds {proxy['fds_peak']}"
        )
    # The proxy shares the machine with locust and the target: their CPU shows whose it was.
    target_cpu = "" if run.target_cpu_seconds is None else f", target cpu {run.target_cpu_seconds:.1f} s"
    lines.append(f"locust   cpu {run.locust_cpu_seconds:.1f} s{target_cpu}")
    if run.machine_cpu:
        lines.append(
            f"machine  {os.cpu_count()} cores {run.machine_cpu['busy_percent']:.0f}% busy "
            f"({run.machine_cpu['softirq_percent']:.0f}% softirq) while locust ran"
        )
    lines += [f"warning: {warning}" for warning in run.warnings]
    problems = run.problems()
    lines.append("FAIL: " + "; ".join(problems) if problems else "PASS")
    return "\n".join(lines)


def proxy_report(stats: ProcessStats, tunnels: int) -> dict[str, Any]:
    grown = max(0, stats.rss_peak_bytes - stats.rss_start_bytes)
    return {
        **asdict(stats),
        "cpu_seconds": round(stats.cpu_seconds, 2),
        "rss_start_mib": stats.rss_start_bytes / 2**20,
        "rss_peak_mib": stats.rss_peak_bytes / 2**20,
        "rss_per_tunnel_kib": grown / max(1, tunnels) / 1024,
    }
