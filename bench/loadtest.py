"""Self-contained headless load test of an HTTP CONNECT proxy: ``python -m bench.loadtest``.

Starts the echo target (``bench.target``), a gconnect (unless ``--proxy`` names a running proxy)
and locust with ``bench/locustfile.py`` (one process, or a master and ``--locust-workers``
workers), all on this machine. While locust runs it prints a progress line and samples the
proxy's RSS, CPU time and open descriptors from /proc. At the end ``--results`` holds locust's
CSV files and HTML report, ``summary.json`` and ``summary.txt``; the summary is printed too.

Exit status: 0 when every CONNECT and ECHO succeeded and every user was spawned, 1 when anything
failed, 2 when the test could not be set up.
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import json
import math
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
LOCUSTFILE = BENCH_DIR / "locustfile.py"

# How long a freshly started target or proxy gets to print its "listening on" line; gevent and
# dnspython import in well under a second, so this only matters on an overloaded machine.
STARTUP_TIMEOUT_SECONDS = 30.0

# Locust's own shutdown, the expect-workers wait and the final CSV write on top of --run-time.
LOCUST_GRACE_SECONDS = 60.0

# A child that ignores SIGTERM this long is killed.
STOP_TIMEOUT_SECONDS = 10.0

PROGRESS_INTERVAL_SECONDS = 5.0
SAMPLE_INTERVAL_SECONDS = 1.0

# Descriptors a locust or proxy process uses besides its tunnels (logs, pipes, zmq, listeners).
FD_OVERHEAD = 200

LISTENING = re.compile(r"listening on \[?([^\s\]]+?)\]?:(\d+)\s*$", re.MULTILINE)
REQUEST_TYPES = ("CONNECT", "ECHO")


class SetupError(Exception):
    """The load test could not be started; nothing was measured."""


def parse_duration(text: str) -> int:
    """Seconds in a locust-style duration: ``90``, ``60s``, ``1m30s``, ``1h``."""
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 60s or 1m30s, got {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` into a tuple."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadtest",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--users", type=int, default=5000, help="concurrent tunnels")
    add("--spawn-rate", type=float, default=500, help="users started per second")
    add(
        "--run-time",
        type=parse_duration,
        default=60,
        help="whole run, ramp-up included",
    )
    add("--locust-workers", type=int, default=0, help="0 runs one locust process")
    add("--message-bytes", type=int, default=64)
    add(
        "--think-time",
        type=float,
        default=1.0,
        help="seconds between messages per tunnel",
    )
    add(
        "--hold-time",
        type=float,
        default=0.0,
        help="reopen tunnels after this; 0 = never",
    )
    add(
        "--reopen-ratio",
        type=float,
        default=0.0,
        help="chance to reopen after each echo",
    )
    add(
        "--credentials",
        default="",
        metavar="USER:PASSWORD",
        help="proxy Basic credentials",
    )
    add(
        "--results",
        type=Path,
        default=None,
        help="default: loadtest-results/<UTC time>",
    )
    add(
        "--proxy",
        type=parse_address,
        default=None,
        metavar="HOST:PORT",
        help="load this running proxy instead of starting a gconnect",
    )
    add("--proxy-pid", type=int, default=None, help="sample this process as the proxy")
    add(
        "--proxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for 'gconnect serve', repeatable (--proxy-arg=--idle-timeout=30)",
    )
    add(
        "--target",
        type=parse_address,
        default=None,
        metavar="HOST:PORT",
        help="use this running echo target instead of starting bench.target",
    )
    add(
        "--source-addresses",
        type=int,
        default=None,
        metavar="N",
        help="spread tunnels over 127.0.0.2..N+1; default: only if ephemeral ports run short",
    )
    add("--connect-timeout", type=float, default=10.0)
    add("--io-timeout", type=float, default=10.0)
    return parser  # fmt: skip


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ephemeral_port_count() -> int:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(high) - int(low) + 1


def plan_source_addresses(users: int, requested: int | None) -> int:
    """How many 127.0.0.x source addresses the users should spread over; 0 means one."""
    if requested is not None:
        return requested
    # Linux picks a connect() port per (source, destination) pair, and every tunnel goes to
    # the one proxy address, so one source address carries one tunnel per ephemeral port.
    # Half is kept back for sockets of earlier runs still in TIME_WAIT.
    per_address = ephemeral_port_count() // 2
    if users <= per_address:
        return 0
    return math.ceil(users / per_address)


def check_descriptor_budget(users: int, processes: int, limit: int) -> list[str]:
    """Warnings for the open-file limit the load would run into (the proxy's being the point)."""
    warnings = []
    per_locust = math.ceil(users / processes) + FD_OVERHEAD
    if per_locust > limit:
        warnings.append(
            f"each locust process needs ~{per_locust} descriptors but the limit is {limit}: add --locust-workers"
        )
    if 2 * users + FD_OVERHEAD > limit:
        warnings.append(
            f"a proxy holding {users} tunnels needs ~{2 * users} descriptors (limit {limit}); "
            f"expect failures from about {(limit - FD_OVERHEAD) // 2} tunnels"
        )
    return warnings


def free_port() -> int:
    """A loopback port free right now, for locust's master (it cannot report a port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Child:
    """A process this load test started; its output goes to a log file in the results."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS; return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn(stack: ExitStack, name: str, command: list[str], results: Path) -> Child:
    """Start ``command`` with output to ``results/<name>.log``; it is stopped when ``stack`` closes."""
    log_path = results / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    child = Child(name, process, log_path)
    stack.callback(child.stop)
    return child


def wait_until_listening(child: Child) -> tuple[str, int]:
    """The address from the child's ``... listening on HOST:PORT`` line."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        match = LISTENING.search(child.log_path.read_text(errors="replace"))
        if match:
            return match.group(1), int(match.group(2))
        if child.process.poll() is not None:
            break
        time.sleep(0.05)
    tail = child.log_path.read_text(errors="replace")[-2000:]
    raise SetupError(f"{child.name} did not start listening; its log ends:\n{tail}")


def start_target(stack: ExitStack, results: Path) -> tuple[Child, tuple[str, int]]:
    command = [
        sys.executable,
        "-m",
        "bench.target",
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "echo",
    ]
    child = spawn(stack, "target", command, results)
    return child, wait_until_listening(child)


def start_gconnect(stack: ExitStack, results: Path, extra: list[str]) -> tuple[Child, tuple[str, int]]:
    if importlib.util.find_spec("gconnect") is None:
        raise SetupError("gconnect is not installed: pip install -e . or pass --proxy HOST:PORT")
    command = [
        sys.executable, "-m", "gconnect", "serve",
        "--listen", "127.0.0.1:0",
        "--allow-port", "1-65535",
        "--allow-dest", "127.0.0.0/8",
        "--access-log", str(results / "access.log"),
        "--log-level", "warning",
        *extra,
    ]  # fmt: skip
    child = spawn(stack, "gconnect", command, results)
    return child, wait_until_listening(child)


@dataclass
class ProcessStats:
    """What /proc says about one process, as sampled over the run."""

    pid: int
    rss_start_bytes: int = 0
    rss_peak_bytes: int = 0
    rss_last_bytes: int = 0
    cpu_start_seconds: float = 0.0
    cpu_last_seconds: float = 0.0
    fds_peak: int = 0

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_last_seconds - self.cpu_start_seconds

    def sample(self) -> bool:
        """Read /proc once; False once the process is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if "VmRSS" not in fields:
            # A zombie: exited, not yet reaped, no memory left to measure.
            return False
        rss = int(fields["VmRSS"].split()[0]) * 1024
        # VmHWM is the kernel's own peak, so a spike between two samples is not missed.
        hwm = int(fields.get("VmHWM", "0 kB").split()[0]) * 1024
        # proc(5): after "(comm)" come state, ... utime (14th field) and stime (15th).
        after_comm = stat.rpartition(")")[2].split()
        cpu = (int(after_comm[11]) + int(after_comm[12])) / os.sysconf("SC_CLK_TCK")
        if not self.rss_start_bytes:
            self.rss_start_bytes, self.cpu_start_seconds = rss, cpu
        self.rss_last_bytes, self.cpu_last_seconds = rss, cpu
        self.rss_peak_bytes = max(self.rss_peak_bytes, rss, hwm)
        self.fds_peak = max(self.fds_peak, fds)
        return True


def machine_cpu_ticks() -> list[int]:
    """/proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal ..."""
    return [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def machine_cpu_busy(before: list[int], after: list[int]) -> dict[str, float]:
    """Percent of all cores busy between two readings, and the softirq part of it.

    Loopback TCP is processed in softirq context, often by ksoftirqd rather than by the process
    that sent: that work is in no process's CPU seconds, so it is reported here.
    """
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    return {"busy_percent": round(100 * (total - idle) / total, 1), "softirq_percent": round(100 * delta[6] / total, 1)}


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


def locust_commands(args: argparse.Namespace, run: Run, results: Path) -> list[list[str]]:
    """The locust command line(s): one process, or a master followed by its workers."""
    tunnel_options = [
        f"--tunnel-proxy={run.proxy}",
        f"--tunnel-target={run.target}",
        f"--tunnel-credentials={args.credentials}",
        f"--tunnel-message-bytes={args.message_bytes}",
        f"--tunnel-think-time={args.think_time}",
        f"--tunnel-hold-time={args.hold_time}",
        f"--tunnel-reopen-ratio={args.reopen_ratio}",
        f"--tunnel-connect-timeout={args.connect_timeout}",
        f"--tunnel-io-timeout={args.io_timeout}",
        f"--tunnel-source-addresses={run.source_addresses}",
        f"--tunnel-latency-dir={results / 'latency'}",
    ]
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *tunnel_options]
    main = [
        *base,
        "--headless",
        f"--users={args.users}",
        f"--spawn-rate={args.spawn_rate}",
        f"--run-time={args.run_time}s",
        f"--csv={results / 'locust'}",
        f"--html={results / 'locust.html'}",
        "--only-summary",
        # Stop users at once at the end: an echo cut short is not counted as a failure.
        "--stop-timeout=0",
    ]
    if not args.locust_workers:
        return [main]
    port = free_port()
    master = [
        *main,
        "--master",
        "--master-bind-host=127.0.0.1",
        f"--master-bind-port={port}",
        f"--expect-workers={args.locust_workers}",
        "--expect-workers-max-wait=30",
    ]
    worker = [*base, "--worker", "--master-host=127.0.0.1", f"--master-port={port}"]
    return [master] + [worker] * args.locust_workers


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


def watch(children: list[Child], run: Run, results: Path, samplers: dict[str, ProcessStats]) -> None:
    """Sample and report until locust (the first child) exits or overruns its time."""
    started = time.monotonic()
    deadline = started + run.run_time_seconds + LOCUST_GRACE_SECONDS
    next_progress = started + PROGRESS_INTERVAL_SECONDS
    tty = sys.stdout.isatty()
    while children[0].process.poll() is None:
        if time.monotonic() > deadline:
            run.timed_out = True
            break
        for stats in samplers.values():
            stats.sample()
        # The peak user count is read every second so a short run does not miss it.
        history = last_history_row(results)
        if history:
            run.peak_users = max(run.peak_users, int(history["User Count"]))
        if time.monotonic() >= next_progress:
            line = progress_line(time.monotonic() - started, run, history, samplers.get("proxy"))
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
            next_progress += PROGRESS_INTERVAL_SECONDS
        time.sleep(SAMPLE_INTERVAL_SECONDS)
    if tty:
        print()
    run.locust_exit_status = children[0].process.poll()


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


def run_load_test(args: argparse.Namespace, results: Path) -> Run:
    fd_limit = raise_open_file_limit()
    # Histograms left by an earlier run into the same folder would be merged into this one.
    for stale in glob.glob(str(results / "latency" / "latency-*.json")):
        os.unlink(stale)
    with ExitStack() as stack:
        target = args.target
        target_pid = None
        if target is None:
            target_child, target = start_target(stack, results)
            target_pid = target_child.process.pid
        proxy, proxy_pid = args.proxy, args.proxy_pid
        if proxy is None:
            gconnect, proxy = start_gconnect(stack, results, args.proxy_arg)
            proxy_pid = gconnect.process.pid
        run = Run(
            users=args.users,
            run_time_seconds=args.run_time,
            locust_workers=args.locust_workers,
            message_bytes=args.message_bytes,
            think_time_seconds=args.think_time,
            proxy=f"{proxy[0]}:{proxy[1]}",
            target=f"{target[0]}:{target[1]}",
            source_addresses=plan_source_addresses(args.users, args.source_addresses),
            fd_limit=fd_limit,
        )
        run.warnings = check_descriptor_budget(args.users, max(1, args.locust_workers), fd_limit)
        for warning in run.warnings:
            print(f"warning: {warning}", flush=True)
        samplers: dict[str, ProcessStats] = {}
        if proxy_pid:
            samplers["proxy"] = ProcessStats(proxy_pid)
            samplers["proxy"].sample()
        if target_pid:
            samplers["target"] = ProcessStats(target_pid)
        children = [
            spawn(stack, "locust" if i == 0 else f"locust-worker-{i}", command, results)
            for i, command in enumerate(locust_commands(args, run, results))
        ]
        for index, child in enumerate(children):
            samplers[f"locust-{index}"] = ProcessStats(child.process.pid)
        ticks_before = machine_cpu_ticks()
        watch(children, run, results, samplers)
        run.machine_cpu = machine_cpu_busy(ticks_before, machine_cpu_ticks())
        # Sample once more before anything is stopped: CPU time is read at its final value.
        for stats in samplers.values():
            stats.sample()
        if "proxy" in samplers:
            run.proxy_process = proxy_report(samplers["proxy"], run.peak_users)
        run.locust_cpu_seconds = sum(
            stats.cpu_last_seconds for name, stats in samplers.items() if name.startswith("locust")
        )
        if "target" in samplers:
            run.target_cpu_seconds = samplers["target"].cpu_seconds
        # Leaving the stack stops locust (if it overran), then gconnect, then the target.
    run.requests = read_request_stats(results)
    run.failures = read_failures(results)
    histograms = read_histograms(results)
    run.latency_us = merge_latency(histograms)
    run.successes_per_process = successes_per_process(histograms)
    return run


def default_results_dir() -> Path:
    return Path("loadtest-results") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = args.results or default_results_dir()
    results.mkdir(parents=True, exist_ok=True)
    try:
        run = run_load_test(args, results)
    except (SetupError, FileNotFoundError) as exc:
        print(f"load test not run: {exc}", file=sys.stderr)
        return 2
    summary = format_summary(run)
    (results / "summary.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    (results / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"results in {results}")
    return 1 if run.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
