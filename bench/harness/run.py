"""One benchmark run: build the load generator, measure each target in turn, collect the results.

Targets run one after another, never side by side, each with a fresh echo/sink/source server; every
process started here is stopped in a ``finally`` by its PID.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from bench.harness import workloads
from bench.harness.build import build_loadgen, gcc_version
from bench.harness.loadgen import LoadGen, LoadGenError, ServerPorts
from bench.harness.targets import (
    REPO_DIR,
    Environment,
    RunningProxy,
    TargetUnavailable,
    launch_plan,
    prepare,
)
from bench.harness.workloads import Settings, Subject


@dataclass(frozen=True)
class Options:
    """Everything the command line decides."""

    targets: tuple[str, ...]
    workloads: tuple[str, ...]
    settings: Settings
    env: Environment
    build_dir: Path
    quick: bool
    #: Bulk and rate one repetition at a time, round-robin over targets all started at once, so
    #: each repetition of every target is measured within a minute of the others'.
    interleave: bool = False


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict:
    """The conditions a reader needs to compare two result files."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    with open("/proc/loadavg") as f:
        loadavg = f.read().split()[:3]
    return {
        "kernel": platform.release(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "mem_total_kib": mem_kib,
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "python": platform.python_version(),
        "gcc": gcc_version(),
        "loadavg_at_start": loadavg,
    }


def git_info() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    return {"revision": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


@contextmanager
def started(name: str, options: Options, ports: ServerPorts, workdir: Path, entry: dict) -> Iterator[Subject]:
    """The target running and tunnelling for the block (direct: nothing to start)."""
    if name == "direct":
        yield Subject("none", None)
        return
    rundir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    plan = launch_plan(name, rundir, options.env)
    entry.setdefault("command", plan.argv)
    entry.setdefault("proxy_cpus", sorted(plan.cpus) if plan.cpus is not None else "all")
    entry.setdefault("notes", plan.notes)
    with RunningProxy(name, plan, rundir) as proxy:
        address = proxy.start(ports.target("echo"))
        yield Subject(address, proxy.pid, alive=proxy.check_alive, cpus=plan.cpus)


def guarded(label: str, subject: Subject, action: Callable[[], object]) -> object:
    """Run one workload; a failure becomes an error entry, and the run goes on."""
    started_at = time.monotonic()
    try:
        subject.check()
        result = action()
        subject.check()
    except (LoadGenError, TargetUnavailable) as exc:
        log(f"  {label}: failed: {exc}")
        return {"error": str(exc)}
    log(f"  {label}: done in {time.monotonic() - started_at:.1f} s")
    return result


def measure_target(name: str, options: Options, lg: LoadGen, workdir: Path) -> dict:
    """The selected workloads on one target; raises TargetUnavailable if it cannot be started at all."""
    settings = options.settings
    entry: dict = {"name": name, "status": "ok", "version": prepare(name, options.env)}
    log(f"{name}: {entry['version']}")
    steps = {
        "bulk": workloads.bulk,
        "rate": workloads.rate,
        "integrity": workloads.integrity,
    }
    chosen = [w for w in steps if w in options.workloads]
    with lg.server() as ports:
        if chosen:
            with started(name, options, ports, workdir, entry) as subject:
                for workload in chosen:
                    entry[workload] = guarded(workload, subject, partial(steps[workload], lg, subject, ports, settings))
        if "hold" in options.workloads:
            entry["hold"] = [hold_one(name, options, lg, ports, workdir, entry, count) for count in settings.hold_sizes]
    return entry


INTERLEAVED = {"bulk": (workloads.bulk, workloads.BULK_KEYS), "rate": (workloads.rate, workloads.RATE_KEYS)}


def measure_interleaved(names: tuple[str, ...], options: Options, lg: LoadGen, workdir: Path) -> dict[str, dict]:
    """Bulk and rate round-robin over the targets (--interleave); then hold and integrity per target."""
    entries: dict[str, dict] = {}
    chosen = [w for w in INTERLEAVED if w in options.workloads]
    one_rep = replace(options.settings, reps=1)
    with lg.server() as ports, ExitStack() as stack:
        subjects: dict[str, Subject] = {}
        for name in names:
            entry: dict = {"name": name, "status": "ok"}
            entries[name] = entry
            try:
                entry["version"] = prepare(name, options.env)
                subjects[name] = stack.enter_context(started(name, options, ports, workdir, entry))
            except TargetUnavailable as exc:
                log(f"{name}: skipped: {exc}")
                entries[name] = {"name": name, "status": "skipped", "reason": str(exc)}
        rounds: dict[str, dict[str, list]] = {name: {w: [] for w in chosen} for name in subjects}
        for round_no in range(options.settings.reps):
            for name, subject in subjects.items():
                for workload in chosen:
                    if isinstance(entries[name].get(workload), dict):
                        continue  # failed in an earlier round
                    action = partial(INTERLEAVED[workload][0], lg, subject, ports, one_rep)
                    result = guarded(f"{name} {workload} round {round_no + 1}", subject, action)
                    if isinstance(result, dict):
                        entries[name][workload] = result
                    else:
                        rounds[name][workload].append(result)
        for name, per_workload in rounds.items():
            for workload, done in per_workload.items():
                if done and workload not in entries[name]:
                    entries[name][workload] = workloads.merge_rounds(done, INTERLEAVED[workload][1])
    rest = replace(options, workloads=tuple(w for w in options.workloads if w not in INTERLEAVED))
    for name, entry in entries.items():
        if entry["status"] != "ok" or not rest.workloads:
            continue
        try:
            entry.update({k: v for k, v in measure_target(name, rest, lg, workdir).items() if k not in entry})
        except TargetUnavailable as exc:
            log(f"{name}: {', '.join(rest.workloads)} skipped: {exc}")
    return entries


def hold_one(
    name: str, options: Options, lg: LoadGen, ports: ServerPorts, workdir: Path, entry: dict, count: int
) -> object:
    """A fresh target instance per size, so memory freed by an earlier size is not reused and hidden."""
    try:
        with started(name, options, ports, workdir, entry) as subject:
            result = guarded(
                f"hold {count}", subject, lambda: workloads.hold(lg, subject, ports, options.settings, count)
            )
            assert isinstance(result, dict)
            return {"requested": count, **result}
    except TargetUnavailable as exc:
        return {"requested": count, "error": str(exc)}


def run_benchmark(options: Options) -> dict:
    """Measure every selected target and return the whole result document."""
    started_at = datetime.datetime.now(datetime.timezone.utc)
    binary = build_loadgen(options.build_dir)
    lg = LoadGen(binary, options.settings.load_cpus)
    settings = options.settings
    results: dict = {
        "schema": 1,
        "started": started_at.isoformat(timespec="seconds"),
        "command": [sys.executable, "-m", "bench.harness", *sys.argv[1:]],
        "machine": machine_info(),
        "git": git_info(),
        "conditions": {
            "mode": "quick" if options.quick else "full",
            "interleaved": options.interleave,
            "workloads": list(options.workloads),
            "repetitions": settings.reps,
            "seconds_per_measurement": settings.seconds,
            "hold_sizes": list(settings.hold_sizes),
            "rtt_rounds": settings.rtt_rounds,
            "rtt_max_s": settings.rtt_max_s,
            "integrity_bytes": settings.integrity_bytes,
            "proxy_cpus": sorted(options.env.proxy_cpus) if options.env.proxy_cpus is not None else "all",
            "load_cpus": sorted(settings.load_cpus) if settings.load_cpus is not None else "all",
            "load_bound_percent": settings.load_bound_percent,
            "disturbed_percent": settings.disturbed_percent,
            "quiet_wait_s": settings.quiet.per_wait_s,
            "quiet_budget_s": settings.quiet.remaining_s,
            "load_receive": "recv(MSG_TRUNC), no copy to user space",
        },
        "targets": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="gconnect-bench-"))
    try:
        if options.interleave:
            results["targets"] = measure_interleaved(options.targets, options, lg, workdir)
        for name in options.targets if not options.interleave else ():
            try:
                results["targets"][name] = measure_target(name, options, lg, workdir)
            except TargetUnavailable as exc:
                log(f"{name}: skipped: {exc}")
                results["targets"][name] = {"name": name, "status": "skipped", "reason": str(exc)}
            except Exception as exc:
                # A bug in the harness costs one target's figures, not the whole run's.
                log(f"{name}: harness error:\n{traceback.format_exc()}")
                results["targets"][name] = {"name": name, "status": "skipped", "reason": f"harness error: {exc!r}"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    with open("/proc/loadavg") as f:
        results["machine"]["loadavg_at_end"] = f.read().split()[:3]
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return results
