"""Where a proxy's kernel time per tunnel goes: ``python -m bench.kernel_time --targets floor,gconnect,ats``.

For each target (the harness's, started the same way and pinned the same way), ``loadgen rate``
opens tunnels (CONNECT, 200, 64-byte echo, client closes) at ``--conns`` concurrent, three times:

- under ``strace -c -f``: system calls per tunnel, by name (strace slows the proxy; counts only);
- under ``perf record -e cpu-clock -g``: the proxy's kernel samples, attributed to the system call
  they ran under (the outermost ``__x64_sys_*`` frame of the stack), or to the interrupt or
  softirq work that landed on the proxy's CPU while it ran; sampling with call chains slows the
  kernel side, so the shares are kept and applied to the plain run's system time;
- plain, for the proxy's user and system CPU per tunnel from /proc.

``--touch 0,512,2048`` measures instead how the kernel's time per tunnel follows the proxy's own
memory traffic: ``floor-cb`` with ``--touch-kib`` each of those sizes (one byte written per cache
line of that buffer per client), user and system CPU per tunnel from /proc, ``--reps`` rounds.
``--spin 0,30,100`` does the same with ``--spin-us``: a slower proxy that touches no more memory.

Writes ``NAME.json`` and ``NAME.md`` to ``--out``. Needs strace and perf (``linux-perf``); perf's
kernel symbols need ``kernel.kptr_restrict`` 0 or root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from bench.harness.build import build_loadgen
from bench.harness.loadgen import LoadGen
from bench.harness.targets import Environment, RunningProxy, launch_plan, prepare
from bench.harness.trees import extract
from gconnect.testing import procfs

RESULTS = Path(__file__).resolve().parent / "results"
STRACE_LINE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")
SYSCALL_FRAME = re.compile(r"^_{2,4}(?:x64_|se_|do_)?sys_(\w+)")
PERF_HZ = 4000
TOOL_TIMEOUT_S = 120.0
ENV = Environment(venv=Path("/tmp/gconnect-bench-venv"))


def strace_counts(pid: int, run) -> tuple[dict, int]:
    """System calls by name while run() generates tunnels; returns (counts, tunnels)."""
    out = Path(tempfile.mktemp(prefix="strace-", suffix=".txt"))
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # strace attaches to every thread
    try:
        result = run()
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=TOOL_TIMEOUT_S)
    counts = {}
    for line in out.read_text().splitlines():
        match = STRACE_LINE.match(line)
        if match and match.group(2) != "total":
            counts[match.group(2)] = int(match.group(1))
    out.unlink()
    return counts, result["tunnels"]


def perf_kernel(pid: int, run, keep: Path | None = None) -> tuple[dict, float]:
    """Shares of kernel samples by system call while run() generates tunnels, and the kernel's
    share of all samples."""
    data = Path(tempfile.mktemp(prefix="perf-", suffix=".data"))
    argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(PERF_HZ), "-g", "-o", str(data), "-p", str(pid)]
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        run()
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=TOOL_TIMEOUT_S)
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "ip,sym"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    ).stdout
    if keep is not None:
        data.rename(keep)
    else:
        data.unlink()
    by_call: Counter[str] = Counter()
    user = 0
    for sample in script.split("\n\n"):
        frames = [line.split(None, 1) for line in sample.strip().splitlines()]
        frames = [f for f in frames if len(f) == 2]
        if not frames:
            continue
        top = int(frames[0][0], 16)
        if top < 0xFFFF800000000000:
            user += 1
            continue
        symbols = [f[1] for f in frames]
        calls = [m.group(1) for s in symbols if (m := SYSCALL_FRAME.search(s))]
        if calls:
            by_call[calls[-1]] += 1
        elif any("softirq" in s or "irq" in s for s in symbols):
            by_call["(interrupts, softirq outside a system call)"] += 1
        else:
            by_call["(other: page faults, scheduling)"] += 1
    total = sum(by_call.values())
    return {name: n / total for name, n in by_call.items()}, total / (total + user)


def touch_series(lg: LoadGen, echo: str, option: str, sizes: list[int], reps: int, seconds: float, conns: int) -> dict:
    """User and system ms per tunnel of floor-cb with each value of option (--touch-kib, --spin-us)."""
    series: dict[int, list] = {kib: [] for kib in sizes}
    for _ in range(reps):
        for kib in sizes:
            plan = launch_plan("floor-cb", Path(tempfile.mkdtemp()), ENV)
            plan.argv[-1:-1] = [option, str(kib)]
            with RunningProxy("floor-cb", plan, Path(tempfile.mkdtemp())) as proxy:
                address = proxy.start(echo)
                lg.run("rate", address, echo, 1.0, conns=conns, seconds=1.0)  # warm
                before = procfs.tree_cpu_split(proxy.pid)
                n = lg.run("rate", address, echo, seconds, conns=conns, seconds=seconds)["tunnels"]
                after = procfs.tree_cpu_split(proxy.pid)
                series[kib].append([round(1000 * (a - b) / n, 4) for a, b in zip(after, before, strict=True)])
                print(kib, series[kib][-1], file=sys.stderr, flush=True)
    return {
        str(kib): {
            "user_ms_per_tunnel": statistics.median(r[0] for r in reps_),
            "sys_ms_per_tunnel": statistics.median(r[1] for r in reps_),
            "reps": reps_,
        }
        for kib, reps_ in series.items()
    }


def measure(
    name: str, env: Environment, rundir: Path, lg: LoadGen, echo: str, options: argparse.Namespace, keep: Path | None
) -> dict:
    """One target's figures: /proc CPU of a plain run, then strace's counts, then perf's shares."""
    version = prepare(name, env)
    with RunningProxy(name, launch_plan(name, rundir, env), rundir) as proxy:
        address = proxy.start(echo)

        def run() -> dict:
            return lg.run("rate", address, echo, options.seconds, conns=options.conns, seconds=options.seconds)

        run()  # warm
        before = procfs.tree_cpu_split(proxy.pid)
        plain = run()
        after = procfs.tree_cpu_split(proxy.pid)
        n = plain["tunnels"]
        calls, traced = strace_counts(proxy.pid, run)
        shares, kernel_share = perf_kernel(proxy.pid, run, keep)
    sys_ms = 1000 * (after[1] - before[1]) / n
    return {
        "version": version,
        "tunnels_per_s": plain["tunnels_per_s"],
        "user_ms_per_tunnel": round(1000 * (after[0] - before[0]) / n, 4),
        "sys_ms_per_tunnel": round(sys_ms, 4),
        "syscalls_per_tunnel": {k: round(v / traced, 2) for k, v in sorted(calls.items(), key=lambda i: -i[1])},
        "perf_kernel_share": round(kernel_share, 3),
        "kernel_ms_per_tunnel": {k: round(v * sys_ms, 4) for k, v in sorted(shares.items(), key=lambda i: -i[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="floor,gconnect,ats")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--baseline", help="commit that the gconnect-base target runs")
    parser.add_argument("--name", default="kernel-per-tunnel")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--touch", help="KiB sizes for floor-cb --touch-kib, comma-separated (see above)")
    parser.add_argument("--spin", help="µs for floor-cb --spin-us, comma-separated (see above)")
    parser.add_argument("--reps", type=int, default=3, help="rounds of --touch or --spin")
    parser.add_argument("--keep-perf", type=Path, help="keep each target's perf.data in this directory")
    options = parser.parse_args()
    targets = [t for t in options.targets.split(",") if t]
    env = replace(ENV, baseline=extract(options.baseline) if options.baseline else None)
    lg = LoadGen(build_loadgen(Path("/tmp/gconnect-bench-build")), frozenset({1}))
    work = Path(tempfile.mkdtemp(prefix="kernel-time-"))
    figures: dict[str, dict] = {}
    with lg.server() as ports:
        echo = ports.target("echo")
        if options.touch or options.spin:
            option, values = ("--touch-kib", options.touch) if options.touch else ("--spin-us", options.spin)
            sizes = [int(value) for value in values.split(",")]
            touch = touch_series(lg, echo, option, sizes, options.reps, options.seconds, options.conns)
            return write_touch(options, option, touch)
        for name in targets:
            rundir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
            keep = options.keep_perf / f"{name}.data" if options.keep_perf else None
            figures[name] = measure(name, env, rundir, lg, echo, options, keep)
            print(name, json.dumps(figures[name], indent=1), file=sys.stderr, flush=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.kernel_time " + " ".join(sys.argv[1:]),
        "conns": options.conns,
        "seconds": options.seconds,
        "loadavg": os.getloadavg(),
        "figures": figures,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"{options.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (options.out / f"{options.name}.md").write_text(render(result))
    print(render(result))


def write_touch(options: argparse.Namespace, option: str, touch: dict) -> None:
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.kernel_time " + " ".join(sys.argv[1:]),
        "conns": options.conns,
        "loadavg": os.getloadavg(),
        "option": option,
        "touch": touch,
    }
    lines = [
        "# Kernel time per tunnel against the proxy's own "
        + ("memory traffic" if option == "--touch-kib" else "time per client (spinning)"),
        "",
        f"{result['when']}, `{result['command']}`; floor-cb at {options.conns} concurrent, medians of"
        f" {options.reps}, load average {result['loadavg'][0]:.1f}.",
        "",
        "| "
        + ("KiB written per client (a byte per cache line)" if option == "--touch-kib" else "µs spun per client")
        + " | user ms per tunnel | system ms per tunnel |",
        "|---:|---:|---:|",
        *(f"| {kib} | {f['user_ms_per_tunnel']:.3f} | {f['sys_ms_per_tunnel']:.3f} |" for kib, f in touch.items()),
    ]
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"{options.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (options.out / f"{options.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def render(result: dict) -> str:
    figures = result["figures"]
    names = list(figures)
    lines = [
        "# Kernel time per tunnel, by system call",
        "",
        f"{result['when']}, `{result['command']}`; {result['conns']} concurrent,"
        f" load average {result['loadavg'][0]:.1f}.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| user / sys ms per tunnel (/proc) | "
        + " | ".join(f"{f['user_ms_per_tunnel']:.3f} / {f['sys_ms_per_tunnel']:.3f}" for f in figures.values())
        + " |",
        "| system calls per tunnel (strace -c) | "
        + " | ".join(f"{sum(f['syscalls_per_tunnel'].values()):.1f}" for f in figures.values())
        + " |",
        "| kernel share of perf's samples | "
        + " | ".join(f"{f['perf_kernel_share']:.2f}" for f in figures.values())
        + " |",
    ]
    calls = sorted({c for f in figures.values() for c in f["kernel_ms_per_tunnel"]})
    calls.sort(key=lambda c: -max(f["kernel_ms_per_tunnel"].get(c, 0) for f in figures.values()))
    lines += ["", "Kernel µs per tunnel under each system call (/proc's system time, split as perf's samples):", ""]
    lines += ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for call in calls:
        cells = [f"{1000 * f['kernel_ms_per_tunnel'].get(call, 0):.1f}" for f in figures.values()]
        lines.append(f"| {call} | " + " | ".join(cells) + " |")
    syscalls = sorted({c for f in figures.values() for c in f["syscalls_per_tunnel"]})
    syscalls.sort(key=lambda c: -max(f["syscalls_per_tunnel"].get(c, 0) for f in figures.values()))
    lines += ["", "System calls per tunnel (strace -c -f):", ""]
    lines += ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for call in syscalls:
        cells = [f"{f['syscalls_per_tunnel'].get(call, 0):.2f}" for f in figures.values()]
        lines.append(f"| {call} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
