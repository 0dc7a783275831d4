"""The four workloads of issue 4, each measured on one running target.

Each function returns plain dicts ready for JSON: one entry per case, with every repetition and a
median/min/max summary. The proxy's CPU time and RSS come from /proc (the whole process tree), and
per-core busy time is recorded around every timed measurement, so a figure limited by the load
generator rather than the proxy is flagged instead of published as the proxy's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.harness.loadgen import LoadGen, LoadGenError, ServerPorts, hold_command, read_line, stop_process
from gconnect.testing import procfs

GIB = 1 << 30
BULK_CASES = (("up", 1), ("down", 1), ("up", 8), ("down", 8))
RATE_CONCURRENCY = (1, 64)
BULK_KEYS = ("mb_per_s", "proxy_cpu_s_per_gib", "proxy_cpu_softirq_s_per_gib", "proxy_cores_busy_s_per_gib")
RATE_KEYS = (
    "tunnels_per_s",
    "setup_p50_us",
    "setup_p99_us",
    "cycle_p50_us",
    "cycle_p99_us",
    "errors",
    "proxy_cpu_ms_per_tunnel",
    "proxy_user_ms_per_tunnel",
    "proxy_sys_ms_per_tunnel",
)
HOLD_OPEN_TIMEOUT_S = 90.0
# After the last tunnel opened, give the proxy a moment to finish lazy allocations before RSS is read.
HOLD_SETTLE_S = 1.0
HOLD_COMMAND_TIMEOUT_S = 60.0
QUIET_SAMPLE_S = 0.3


class QuietGate:
    """Waits before a measurement until other processes go quiet, within a budget for the whole run.

    The machine may be shared; a short burst of someone else's work should delay a measurement,
    not spoil it, but a machine that never goes quiet must not stretch the run without bound.
    """

    def __init__(self, per_wait_s: float, budget_s: float) -> None:
        self.per_wait_s = per_wait_s
        self.remaining_s = budget_s

    def wait(self, threshold_percent: float, ours: set[int]) -> float:
        """Returns the seconds waited."""
        started = time.monotonic()
        limit = min(self.per_wait_s, self.remaining_s)
        while time.monotonic() - started < limit:
            before = procfs.cpu_seconds_by_pid()
            time.sleep(QUIET_SAMPLE_S)
            others = procfs.other_cpu_by_pid(before, procfs.cpu_seconds_by_pid(), ours)
            if 100 * sum(others.values()) / QUIET_SAMPLE_S < threshold_percent:
                break
        waited = time.monotonic() - started
        self.remaining_s = max(0.0, self.remaining_s - waited)
        return round(waited, 2)


@dataclass(frozen=True)
class Settings:
    """What one run measures and for how long."""

    seconds: float
    reps: int
    hold_sizes: tuple[int, ...]
    rtt_rounds: int
    # One repetition of round trips stops after this long even if rounds remain (proxy.py takes
    # ~100 ms each with 5,000 tunnels held).
    rtt_max_s: float
    integrity_bytes: int
    load_cpus: frozenset[int] | None
    # A measurement in which the load generator used this share of its CPUs may be its own limit,
    # not the proxy's.
    load_bound_percent: float = 90.0
    # Other processes' CPU use, in percent of one core, above which a measurement is marked disturbed.
    disturbed_percent: float = 10.0
    # Before each measurement, wait a little for other processes to quieten down (see QuietGate).
    quiet: QuietGate = field(default_factory=lambda: QuietGate(5.0, 120.0))


@dataclass
class Subject:
    """What is being measured: the proxy's address for loadgen (or "none") and its PID (or None)."""

    address: str
    pid: int | None
    alive: Callable[[], None] | None = None  # raises TargetUnavailable once the target has died
    cpus: frozenset[int] | None = None  # the CPUs the proxy is pinned to, if it is

    def check(self) -> None:
        if self.alive is not None:
            self.alive()


def summarise(reps: list[dict], keys: tuple[str, ...]) -> dict:
    """Median, min and max of each key over the repetitions that produced a number."""
    summary: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in reps if isinstance(r.get(key), (int, float)) and r[key] >= 0]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    summary["load_bound"] = any(r.get("load_bound") for r in reps)
    summary["disturbed"] = any(r.get("disturbed") for r in reps)
    return summary


def _measured(
    lg: LoadGen, subject: Subject, settings: Settings, action: Callable[[], dict], helper: int | None = None
) -> dict:
    """Run action, adding over exactly that span: the proxy's CPU seconds, per-core busy percent,
    whether the load CPU was saturated, and how much CPU other processes on the machine took.
    helper is a load generator process that runs across the span (loadgen hold)."""
    ours = {os.getpid()} | ({helper} if helper else set())
    if lg.server_pid:
        ours.add(lg.server_pid)
    if subject.pid:
        ours.update(procfs.process_tree(subject.pid))
    waited = settings.quiet.wait(settings.disturbed_percent, ours)
    load_pids = [pid for pid in (lg.server_pid, helper) if pid]
    load_before = _load_cpu_seconds(load_pids)
    split_before = procfs.tree_cpu_split(subject.pid) if subject.pid else (0.0, 0.0)
    everyone_before = procfs.cpu_seconds_by_pid()
    cores_before = procfs.core_times()
    started = time.monotonic()
    result = action()
    wall = time.monotonic() - started
    cores_after = procfs.core_times()
    others = procfs.other_cpu_by_pid(everyone_before, procfs.cpu_seconds_by_pid(), ours)
    other = sum(others.values())
    top = sorted(others.items(), key=lambda item: -item[1])[:3]
    result["other_top"] = [[procfs.command_name(pid), round(seconds, 2)] for pid, seconds in top]
    busy = procfs.busy_percent(cores_before, cores_after)
    softirq = procfs.busy_percent(cores_before, cores_after, "softirq")
    result["cpu_busy_percent"] = busy
    result["cpu_softirq_percent"] = softirq
    result["waited_for_quiet_s"] = waited
    result["other_cpu_percent"] = round(100 * other / wall, 1)
    result["disturbed"] = result["other_cpu_percent"] >= settings.disturbed_percent
    if subject.pid:
        user, system = procfs.tree_cpu_split(subject.pid)
        # User and kernel time apart: a change to the handshake moves one or the other.
        result["proxy_user_s"] = round(user - split_before[0], 3)
        result["proxy_sys_s"] = round(system - split_before[1], 3)
        result["proxy_cpu_s"] = round(result["proxy_user_s"] + result["proxy_sys_s"], 3)
    if subject.pid and subject.cpus:
        # Loopback delivery of the proxy's sends runs as softirq on its core and is charged to no
        # process (about a third of a busy core here); with it, the proxy's cost is complete.
        irq_s = sum(softirq[str(c)] for c in subject.cpus) / 100 * wall
        result["proxy_cpu_softirq_s"] = round(result["proxy_cpu_s"] + irq_s, 3)
        result["proxy_cores_busy_s"] = round(sum(busy[str(c)] for c in subject.cpus) / 100 * wall, 3)
    # Judged on the load generator's own CPU time, not the core's busy time: on a shared machine
    # the core can be busy with someone else's work while the generator waits for the proxy.
    load_cores = len(settings.load_cpus) if settings.load_cpus else os.cpu_count() or 1
    load_percent = 100 * (_load_cpu_seconds(load_pids) - load_before) / wall / load_cores
    if settings.load_cpus:
        # The generator's loopback traffic costs softirq time on its own cores too. The kernel may
        # also have charged some of that to the process, so the sum is capped by the cores' busy time.
        load_percent += sum(softirq[str(c)] for c in settings.load_cpus) / load_cores
        load_percent = min(load_percent, sum(busy[str(c)] for c in settings.load_cpus) / load_cores)
    result["load_cpu_percent"] = round(load_percent, 1)
    result["load_bound"] = load_percent >= settings.load_bound_percent
    return result


def _load_cpu_seconds(live_pids: list[int]) -> float:
    """CPU seconds of the load generator: the live server (and hold client) plus reaped clients."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime + sum(procfs.tree_cpu_seconds(pid) for pid in live_pids)


def bulk(lg: LoadGen, subject: Subject, ports: ServerPorts, settings: Settings) -> list[dict]:
    """Throughput through 1 and 8 tunnels, upload (to the sink) and download (from the source)."""
    cases = []
    for direction, conns in BULK_CASES:
        target = ports.target("sink" if direction == "up" else "source")
        reps = []
        for _ in range(settings.reps):

            def action(direction=direction, conns=conns, target=target) -> dict:
                return lg.run(
                    "bulk",
                    subject.address,
                    target,
                    settings.seconds,
                    dir=direction,
                    conns=conns,
                    seconds=settings.seconds,
                )

            rep = _measured(lg, subject, settings, action)
            if subject.pid and rep.get("bytes"):
                rep["proxy_cpu_s_per_gib"] = round(rep["proxy_cpu_s"] / (rep["bytes"] / GIB), 4)
                for key in ("proxy_cpu_softirq_s", "proxy_cores_busy_s"):
                    if key in rep:
                        rep[f"{key}_per_gib"] = round(rep[key] / (rep["bytes"] / GIB), 4)
            reps.append(rep)
        summary = summarise(reps, BULK_KEYS)
        cases.append({"dir": direction, "conns": conns, "reps": reps, "summary": summary})
    return cases


def rate(lg: LoadGen, subject: Subject, ports: ServerPorts, settings: Settings) -> list[dict]:
    """New tunnels per second: CONNECT, a 64-byte echo, close; at concurrency 1 and 64."""
    cases = []
    for conns in RATE_CONCURRENCY:
        reps = []
        for _ in range(settings.reps):

            def action(conns=conns) -> dict:
                return lg.run(
                    "rate",
                    subject.address,
                    ports.target("echo"),
                    settings.seconds,
                    conns=conns,
                    seconds=settings.seconds,
                )

            rep = _measured(lg, subject, settings, action)
            if subject.pid and rep.get("tunnels"):
                for key in ("proxy_cpu", "proxy_user", "proxy_sys"):
                    rep[f"{key}_ms_per_tunnel"] = round(1000 * rep[f"{key}_s"] / rep["tunnels"], 4)
            reps.append(rep)
            time.sleep(0.5)  # let the TIME_WAIT sockets of the last burst age before the next
        cases.append({"conns": conns, "reps": reps, "summary": summarise(reps, RATE_KEYS)})
    return cases


def merge_rounds(rounds: list[list[dict]], keys: tuple[str, ...]) -> list[dict]:
    """One workload's cases from several rounds of one repetition each (--interleave): every
    case's repetitions together, summarised again."""
    merged = []
    for cases in zip(*rounds, strict=True):
        first = {k: v for k, v in cases[0].items() if k not in ("reps", "summary")}
        reps = [rep for case in cases for rep in case["reps"]]
        merged.append({**first, "reps": reps, "summary": summarise(reps, keys)})
    return merged


def integrity(lg: LoadGen, subject: Subject, ports: ServerPorts, settings: Settings) -> dict:
    """The configured number of bytes (256 MiB) both ways through one tunnel; sha256 of each direction."""
    return lg.run("integrity", subject.address, ports.target("echo"), 120.0, bytes=settings.integrity_bytes)


def warm_up(lg: LoadGen, subject: Subject, ports: ServerPorts) -> None:
    """A short burst of tunnels, so one-off allocations are not charged to the held tunnels."""
    lg.run("rate", subject.address, ports.target("echo"), 0.5, conns=8, seconds=0.5)


def hold(lg: LoadGen, subject: Subject, ports: ServerPorts, settings: Settings, count: int) -> dict:
    """Hold count idle tunnels: RSS per tunnel, how many stay open, and echo round trips through one."""
    warm_up(lg, subject, ports)
    time.sleep(0.5)
    rss_before = procfs.tree_rss_kib(subject.pid) if subject.pid else None
    process = lg.start_hold(subject.address, ports.target("echo"), count, HOLD_OPEN_TIMEOUT_S)
    try:
        opened = _json_line(read_line(process, HOLD_OPEN_TIMEOUT_S + 30))
        time.sleep(HOLD_SETTLE_S)
        result = {"requested": count, **{k: opened[k] for k in ("held", "failed", "open_seconds", "first_error")}}
        if subject.pid and rss_before is not None:
            rss_after = procfs.tree_rss_kib(subject.pid)
            result |= {"rss_before_kib": rss_before, "rss_after_kib": rss_after}
            if opened["held"]:
                result["rss_per_tunnel_kib"] = round((rss_after - rss_before) / opened["held"], 2)
        if opened["held"]:
            command = f"rtt {settings.rtt_rounds} {settings.rtt_max_s}"
            rtts = [
                _measured(
                    lg,
                    subject,
                    settings,
                    lambda: hold_command(process, command, HOLD_COMMAND_TIMEOUT_S),
                    helper=process.pid,
                )
                for _ in range(settings.reps)
            ]
            result["rtt_reps"] = rtts
            result["rtt"] = summarise(rtts, ("rtt_p50_us", "rtt_p99_us", "rtt_max_us"))
            # Counted after the round trips: a proxy that drops idle tunnels must not look cheap for it.
            result["alive_after"] = hold_command(process, "alive", HOLD_COMMAND_TIMEOUT_S)["alive"]
        hold_command_quit(process)
        return result
    finally:
        stop_process(process)


def hold_command_quit(process: subprocess.Popen[str]) -> None:
    """Ask ``loadgen hold`` to close its tunnels and exit; stop_process ends it if it does not."""
    try:
        assert process.stdin is not None
        process.stdin.write("quit\n")
        process.stdin.flush()
        process.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _json_line(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise LoadGenError(f"loadgen hold said {line!r}") from exc
