"""Self-contained headless load test of an HTTP CONNECT proxy: ``gconnect loadtest``.

Starts the echo target (``gconnect.loadtest.target``), a gconnect (unless ``proxy`` names a
running proxy) and locust with ``locustfile.py`` (one process, or a master and ``locust_workers``
workers), all on this machine, each a child process stopped by its pid at the end. While locust
runs it prints a progress line and samples the proxy's RSS, CPU time and open descriptors from
/proc. At the end ``results`` holds locust's CSV files and HTML report, ``summary.json`` and
``summary.txt``; the summary is printed too.

Exit status: 0 when every CONNECT and ECHO succeeded and every user was spawned, 1 when anything
failed, 2 when the test could not be set up. Nothing here imports locust: only its child
processes load the locustfile.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import hostport
from .machine import ProcessStats, ephemeral_port_count, machine_cpu_busy, machine_cpu_ticks, raise_open_file_limit
from .report import (
    Run,
    format_summary,
    last_history_row,
    merge_latency,
    progress_line,
    proxy_report,
    read_failures,
    read_histograms,
    read_request_stats,
    successes_per_process,
)
from .wire import parse_address

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")

# How long a freshly started target or proxy gets to print its "listening on" line; gevent and
# dnspython import in well under a second, so this only matters on an overloaded machine.
STARTUP_TIMEOUT_SECONDS = 30.0

# Locust's own shutdown, the expect-workers wait and the final CSV write on top of the run time.
LOCUST_GRACE_SECONDS = 60.0

# A child that ignores SIGTERM this long is killed.
STOP_TIMEOUT_SECONDS = 10.0

PROGRESS_INTERVAL_SECONDS = 5.0
SAMPLE_INTERVAL_SECONDS = 1.0

# Descriptors a locust or proxy process uses besides its tunnels (logs, pipes, zmq, listeners).
FD_OVERHEAD = 200

LISTENING = re.compile(r"listening on \[?([^\s\]]+?)\]?:(\d+)\s*$", re.MULTILINE)


class SetupError(Exception):
    """The load test could not be started; nothing was measured."""


def parse_duration(text: str) -> int:
    """Seconds in a locust-style duration: ``90``, ``60s``, ``1m30s``, ``1h``."""
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or match is None:
        raise ValueError(f"expected a duration like 60s or 1m30s, got {text!r}")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class LoadTestOptions:
    """One load test's settings; the command line's options, parsed (``gconnect loadtest --help``)."""

    users: int = 5000
    spawn_rate: float = 500
    run_time: int = 60  # seconds, ramp-up included
    locust_workers: int = 0  # 0 runs one locust process
    message_bytes: int = 64
    think_time: float = 1.0  # seconds between the starts of two messages on one tunnel
    hold_time: float = 0.0  # reopen a tunnel after this many seconds; 0 holds it to the end
    reopen_ratio: float = 0.0  # chance to reopen after each echo
    credentials: str = ""  # USER:PASSWORD for Proxy-Authorization: Basic
    results: Path | None = None  # default: loadtest-results/<UTC time>
    proxy: tuple[str, int] | None = None  # a running proxy to load instead of starting a gconnect
    proxy_pid: int | None = None  # sample this process as the proxy
    proxy_args: tuple[str, ...] = ()  # extra arguments for the gconnect this starts
    target: tuple[str, int] | None = None  # a running echo target instead of starting one
    source_addresses: int | None = None  # 127.0.0.2..N+1; None: only if ephemeral ports run short
    connect_timeout: float = 10.0
    io_timeout: float = 10.0

    @classmethod
    def from_text(cls, run_time: str, proxy: str | None, target: str | None, **given: Any) -> LoadTestOptions:
        """Options from the command line's values; ValueError names a malformed one."""
        return dataclasses.replace(
            cls(),
            run_time=parse_duration(run_time),
            proxy=parse_address(proxy) if proxy else None,
            target=parse_address(target) if target else None,
            **given,
        )


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
    command = [sys.executable, "-m", "gconnect.loadtest.target", "--listen", "127.0.0.1:0", "--mode", "echo"]
    child = spawn(stack, "target", command, results)
    return child, wait_until_listening(child)


def start_gconnect(stack: ExitStack, results: Path, extra: list[str]) -> tuple[Child, tuple[str, int]]:
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


def locust_commands(options: LoadTestOptions, run: Run, results: Path) -> list[list[str]]:
    """The locust command line(s): one process, or a master followed by its workers."""
    tunnel_options = [
        f"--tunnel-proxy={run.proxy}",
        f"--tunnel-target={run.target}",
        f"--tunnel-credentials={options.credentials}",
        f"--tunnel-message-bytes={options.message_bytes}",
        f"--tunnel-think-time={options.think_time}",
        f"--tunnel-hold-time={options.hold_time}",
        f"--tunnel-reopen-ratio={options.reopen_ratio}",
        f"--tunnel-connect-timeout={options.connect_timeout}",
        f"--tunnel-io-timeout={options.io_timeout}",
        f"--tunnel-source-addresses={run.source_addresses}",
        f"--tunnel-latency-dir={results / 'latency'}",
    ]
    base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *tunnel_options]
    main = [
        *base,
        "--headless",
        f"--users={options.users}",
        f"--spawn-rate={options.spawn_rate}",
        f"--run-time={options.run_time}s",
        f"--csv={results / 'locust'}",
        f"--html={results / 'locust.html'}",
        "--only-summary",
        # Stop users at once at the end: an echo cut short is not counted as a failure.
        "--stop-timeout=0",
    ]
    if not options.locust_workers:
        return [main]
    port = free_port()
    master = [
        *main,
        "--master",
        "--master-bind-host=127.0.0.1",
        f"--master-bind-port={port}",
        f"--expect-workers={options.locust_workers}",
        "--expect-workers-max-wait=30",
    ]
    worker = [*base, "--worker", "--master-host=127.0.0.1", f"--master-port={port}"]
    return [master] + [worker] * options.locust_workers


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


def run_load_test(options: LoadTestOptions, results: Path) -> Run:
    """Start what is missing (target, gconnect), run locust, sample; stop them all, by pid."""
    fd_limit = raise_open_file_limit()
    # Histograms left by an earlier run into the same folder would be merged into this one.
    for stale in glob.glob(str(results / "latency" / "latency-*.json")):
        os.unlink(stale)
    with ExitStack() as stack:
        target = options.target
        target_pid = None
        if target is None:
            target_child, target = start_target(stack, results)
            target_pid = target_child.process.pid
        proxy, proxy_pid = options.proxy, options.proxy_pid
        if proxy is None:
            gconnect, proxy = start_gconnect(stack, results, list(options.proxy_args))
            proxy_pid = gconnect.process.pid
        run = Run(
            users=options.users,
            run_time_seconds=options.run_time,
            locust_workers=options.locust_workers,
            message_bytes=options.message_bytes,
            think_time_seconds=options.think_time,
            proxy=hostport(*proxy),
            target=hostport(*target),
            source_addresses=plan_source_addresses(options.users, options.source_addresses),
            fd_limit=fd_limit,
        )
        run.warnings = check_descriptor_budget(options.users, max(1, options.locust_workers), fd_limit)
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
            for i, command in enumerate(locust_commands(options, run, results))
        ]
        for index, child in enumerate(children):
            samplers[f"locust-{index}"] = ProcessStats(child.process.pid)
        ticks_before = machine_cpu_ticks()
        watch(children, run, results, samplers)
        run.machine_cpu = machine_cpu_busy(ticks_before, machine_cpu_ticks())
        record_processes(run, samplers)
        # Leaving the stack stops locust (if it overran), then gconnect, then the target.
    read_results(run, results)
    return run


def record_processes(run: Run, samplers: dict[str, ProcessStats]) -> None:
    """The proxy's, locust's and the target's figures, read before any of them is stopped."""
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


def read_results(run: Run, results: Path) -> None:
    """Locust's totals and failures, and the latency histograms every locust process wrote."""
    run.requests = read_request_stats(results)
    run.failures = read_failures(results)
    histograms = read_histograms(results)
    run.latency_us = merge_latency(histograms)
    run.successes_per_process = successes_per_process(histograms)


def default_results_dir() -> Path:
    return Path("loadtest-results") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def main(options: LoadTestOptions) -> int:
    """Run one load test, write and print its summary; return the exit status."""
    results = options.results or default_results_dir()
    results.mkdir(parents=True, exist_ok=True)
    try:
        run = run_load_test(options, results)
    except (SetupError, FileNotFoundError) as exc:
        print(f"load test not run: {exc}", file=sys.stderr)
        return 2
    summary = format_summary(run)
    (results / "summary.json").write_text(json.dumps(asdict(run), indent=2) + "\n")
    (results / "summary.txt").write_text(summary + "\n")
    print(summary)
    print(f"results in {results}")
    return 1 if run.problems() else 0
