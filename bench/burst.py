"""python -m bench.burst: other tunnels' echo latency while 50 tunnels push a burst.

Issue 14, part 1: while 50 tunnels push as fast as they can into targets that
never read (so about a gigabyte fills the buffers on the way in the first
second), how long does a 64-byte echo take through *other* tunnels of the same
proxy? A proxy that moves a whole burst in one callback makes everyone else
wait behind it.

For each target in turn (proxy on CPU 0, everything else on CPU 1):

1. ``loadgen hold`` opens 20 echo tunnels (its own process: the probe);
2. echo round trips through one of them are measured idle;
3. ``loadgen bulk --dir up --conns 50`` starts pushing into a target that
   accepts and never reads, and the probe measures again during the burst.

Writes ``bench/results/burst.json`` and ``burst.md`` (``--out``, ``--name``).
``--gconnect-repo DIR`` runs gconnect from another checkout (for a before and
after in one run; that checkout's result is labelled ``gconnect@DIR``), and
``--baseline COMMIT`` runs the target ``gconnect-base`` from that commit.

``--from-start`` is issue 24's harder reading of the same burst: the probe
starts its round trips as the pushers start, so it measures the first second,
while every pusher's buffers fill (about 15 MiB each), on its own ("first")
as well as the whole burst ("overall"). ``--bulk`` adds, per target, one
tunnel's upload into loadgen's sink with the proxy's user and system CPU per
GB from /proc: what a smaller read costs when a tunnel is alone.

The probe is closed-loop: one echo at a time, the next sent when the last
came back, so a 35 ms stall costs it one sample where 2 ms turns cost it
many (coordinated omission, as wrk2 calls it). ``--open-loop RATE`` adds, per
target and repetition, a second burst measured open-loop (``loadgen hold``'s
``open``): RATE echoes a second on a fixed schedule, spread over the probe's
tunnels and sent whether or not earlier ones came back, each timed from its
scheduled send to its reply, as wrk2 times requests. Both probes run in the
same repetition, in alternating order.

``--realtime`` runs the probes and loadgen's echo server SCHED_FIFO (root or
CAP_SYS_NICE), so that on the load core a waking echo does not wait for the
pushers' time slice: otherwise the load side's own contention sets a floor
under every target's figure (``direct`` shows it). The open-loop probe
always raises itself for its sends.

Targets are the harness's, plus the gconnect variants in :data:`VARIANTS`
(the default gconnect with some options).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.harness.build import build_loadgen
from bench.harness.loadgen import LoadGen, hold_command, read_line, stop_process
from bench.harness.targets import Environment, RunningProxy, TargetUnavailable, launch_plan, prepare
from bench.harness.trees import extract
from gconnect.testing import procfs

RESULTS = Path(__file__).resolve().parent / "results"
PROBE_TUNNELS = 20
PUSHERS = 50
BURST_S = 3.0
ROUNDS = 3000
#: --from-start: the probe runs for the whole burst (its round count is only a ceiling), and the
#: round trips started in the first FIRST_S seconds are reported on their own.
FROM_START_ROUNDS = 1_000_000
FIRST_S = 1.0
BULK_S = 3.0
#: --from-start's targets take this SO_RCVBUF (net.core.rmem_max here; the kernel doubles it): a
#: target that never reads never grows its window, so without it each would hold ~128 KiB and the
#: proxy would have little to move. With it a tunnel absorbs ~15 MiB (this, the proxy's send and
#: receive buffers, the pusher's send buffer) in the burst's first second, as in issue 24.
TARGET_RCVBUF = 4 * 1024 * 1024
GB = 1e9
#: gconnect with options: name -> the options added to the default gconnect's command line.
VARIANTS = {
    "gconnect-chunk64k": ["--chunk-bytes", "65536"],
    "gconnect-fixed": ["--turn-budget-bytes", "0"],
    "gconnect-turn256k": ["--turn-budget-bytes", str(256 * 1024)],
    "gconnect-turn512k": ["--turn-budget-bytes", str(512 * 1024)],
    "gconnect-turn1m": ["--turn-budget-bytes", str(1024 * 1024)],
    "gconnect-turn2m": ["--turn-budget-bytes", str(2048 * 1024)],
    "gconnect-turn4m": ["--turn-budget-bytes", str(4096 * 1024)],
    "gconnect-turn8m": ["--turn-budget-bytes", str(8192 * 1024)],
    "gconnect-auto": ["--relay", "auto"],
    "gconnect-splice": ["--relay", "splice"],
    "gconnect-copy": ["--relay", "copy"],
}
#: Other processes' CPU, in percent of one core, above which a repetition is marked disturbed
#: (the harness's threshold): the machine is shared, and a p99 is what suffers first.
DISTURBED_PERCENT = 10.0


class Blackhole:
    """A target that accepts and never reads: pushed bytes fill the buffers and stay."""

    def __init__(self, rcvbuf: int = 0) -> None:
        self.rcvbuf = rcvbuf
        self.sock = socket.socket()
        if rcvbuf:
            # Set before listen, so accepted sockets inherit it and the handshake scales the window to it.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def queued(self) -> int:
        """Bytes waiting unread in the held connections: all the proxy delivered to them."""
        total = 0
        for conn in list(self.held):
            try:
                total += struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
            except OSError:
                pass
        return total

    def drop(self) -> None:
        """Close what the last burst left (its pushers are gone)."""
        held, self.held = self.held, []
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self.drop()


@dataclass
class Subject:
    """One target under measurement: where it listens, its process (None: no proxy) and its probe."""

    name: str
    address: str
    pid: int | None
    probe: subprocess.Popen[str]
    idle: list[dict] = field(default_factory=list)
    burst: list[dict] = field(default_factory=list)
    #: --open-loop: the same idle and burst measurements by the open-loop probe.
    open_idle: list[dict] = field(default_factory=list)
    open_burst: list[dict] = field(default_factory=list)
    bulk: list[dict] = field(default_factory=list)


def open_probe(lg: LoadGen, proxy: str, echo: str) -> subprocess.Popen[str]:
    probe = lg.start_hold(proxy, echo, PROBE_TUNNELS, 30.0)
    try:
        opened = json.loads(read_line(probe, 60))
    except Exception:
        stop_process(probe)
        raise
    if opened["held"] < PROBE_TUNNELS:
        stop_process(probe)
        raise TargetUnavailable(f"probe opened {opened['held']} of {PROBE_TUNNELS} tunnels")
    return probe


def burst_once(lg: LoadGen, subject: Subject, sink: str, args, hole: Blackhole, open_loop: bool = False) -> None:
    """One idle measurement and one burst through *subject*, by the closed-loop probe or (*open_loop*)
    the open-loop one; appended to its lists."""
    probe = subject.probe
    if open_loop:
        idle, bursts = subject.open_idle, subject.open_burst
        idle_command = f"open {args.open_loop:g} 1.0"
    else:
        idle, bursts = subject.idle, subject.burst
        idle_command = f"rtt {ROUNDS // 3} 2.0"
    idle.append(_watched(lambda: hold_command(probe, idle_command, 30)))
    before = _proxy_counters(subject.pid)
    pushers = lg.start_bulk(subject.address, sink, PUSHERS, BURST_S)
    if not args.from_start:
        time.sleep(0.05)  # the pushers' connects and CONNECTs are under way
    if open_loop:
        window = f"{BURST_S} {FIRST_S}" if args.from_start else f"{BURST_S - 0.5}"
        command = f"open {args.open_loop:g} {window}"
    elif args.from_start:
        command = f"rtt {FROM_START_ROUNDS} {BURST_S} {FIRST_S}"
    else:
        command = f"rtt {ROUNDS} {BURST_S - 0.5}"
    try:
        rep = _watched(lambda: hold_command(probe, command, 30))
        after = _proxy_counters(subject.pid)
        if sink == hole.target:
            rep["delivered_mb"] = round(hole.queued() / 1e6, 1)
    finally:
        stop_process(pushers)
    if subject.pid:
        rep["proxy_user_s"] = round(after[0] - before[0], 3)
        rep["proxy_sys_s"] = round(after[1] - before[1], 3)
    bursts.append(rep)
    hole.drop()
    time.sleep(1.0)


def _proxy_counters(pid: int | None) -> tuple[float, float]:
    """(user s, system s) of the proxy's process tree."""
    return procfs.tree_cpu_split(pid) if pid else (0.0, 0.0)


def bulk_once(lg: LoadGen, subject: Subject, sink: str, conns: int) -> None:
    """*conns* tunnels' upload into a sink reading at full speed; the proxy's CPU from /proc."""
    before = procfs.tree_cpu_split(subject.pid) if subject.pid else (0.0, 0.0)
    rep = _watched(lambda: lg.run("bulk", subject.address, sink, BULK_S, dir="up", conns=conns, seconds=BULK_S))
    if subject.pid and rep.get("bytes"):
        user, system = procfs.tree_cpu_split(subject.pid)
        gigabytes = rep["bytes"] / GB
        rep["user_s_per_gb"] = round((user - before[0]) / gigabytes, 4)
        rep["sys_s_per_gb"] = round((system - before[1]) / gigabytes, 4)
    subject.bulk.append(rep)
    time.sleep(0.5)


def _watched(measure_one) -> dict:
    """One measurement, with the CPU other processes used meanwhile (``disturbed`` past the threshold)."""
    ours = set(procfs.process_tree(os.getpid()))
    before, started = procfs.cpu_seconds_by_pid(), time.monotonic()
    result = dict(measure_one())
    elapsed = time.monotonic() - started
    others = procfs.other_cpu_seconds(before, procfs.cpu_seconds_by_pid(), ours)
    result["other_cpu_percent"] = round(100 * others / elapsed, 1)
    result["disturbed"] = result["other_cpu_percent"] >= DISTURBED_PERCENT
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="direct,gconnect,gconnect-splice,gconnect-copy,squid")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gconnect-repo", type=Path, help="also run gconnect from this checkout")
    parser.add_argument("--baseline", help="commit that the target gconnect-base runs")
    parser.add_argument(
        "--sink",
        choices=("blackhole", "reader"),
        default="blackhole",
        help="pushers' target: one that never reads (the issue's burst) or loadgen's sink, which reads at full speed",
    )
    parser.add_argument("--from-start", action="store_true", help="probe from the burst's start; first second apart")
    parser.add_argument(
        "--target-rcvbuf",
        type=int,
        help=f"SO_RCVBUF of the never-reading targets (default {TARGET_RCVBUF} with --from-start, else the kernel's)",
    )
    parser.add_argument(
        "--open-loop",
        type=float,
        default=0.0,
        metavar="RATE",
        help="also measure with an open-loop probe: RATE echoes a second on a fixed schedule (e.g. 1000)",
    )
    parser.add_argument(
        "--realtime", action="store_true", help="run the probes and the echo server SCHED_FIFO (needs root)"
    )
    parser.add_argument("--bulk", action="store_true", help="also bulk uploads, with the proxy's CPU per GB")
    parser.add_argument(
        "--bulk-conns",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[1],
        help="tunnels per bulk upload, comma-separated (default 1)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="stem of the result files (default burst, or burst-reader)")
    args = parser.parse_args(argv)
    baseline = extract(args.baseline) if args.baseline else None
    env = Environment(venv=Path("/tmp/gconnect-bench-venv"), baseline=baseline)
    lg = LoadGen(build_loadgen(Path("/tmp/gconnect-bench-build")), frozenset({1}))
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.gconnect_repo:
        names.append(f"gconnect@{args.gconnect_repo}")
    hole = Blackhole(args.target_rcvbuf if args.target_rcvbuf is not None else TARGET_RCVBUF * args.from_start)
    results: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.burst " + " ".join(sys.argv[1:] if argv is None else argv),
        "sink": args.sink,
        "from_start": args.from_start,
        "open_loop_rate": args.open_loop,
        "realtime": args.realtime,
        "target_rcvbuf": hole.rcvbuf,
        "baseline": args.baseline,
        "targets": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="gconnect-burst-"))
    try:
        with lg.server() as ports, ExitStack() as stack:
            subjects = []
            for name in names:
                print(f"[burst] starting {name}", file=sys.stderr, flush=True)
                try:
                    subjects.append(start_target(name, env, lg, ports, workdir, stack))
                except TargetUnavailable as exc:
                    results["targets"][name] = {"skipped": str(exc)}
            if args.realtime:
                _set_fifo([s.probe.pid for s in subjects], True)
            run_rounds(subjects, lg, ports, hole, args)
            for subject in subjects:
                entry = {"idle": subject.idle, "burst": subject.burst}
                if args.open_loop:
                    entry["open_idle"], entry["open_burst"] = subject.open_idle, subject.open_burst
                if args.bulk:
                    entry["bulk"] = subject.bulk
                results["targets"][subject.name] = entry
    finally:
        hole.close()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("burst" if args.sink == "blackhole" else "burst-reader")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    from bench.burst_report import render  # it reads this module's constants

    markdown = render(results)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    return 0


def run_rounds(subjects: list[Subject], lg: LoadGen, ports, hole: Blackhole, args) -> None:
    """Every repetition visits every target in turn, so the machine's noise falls on all of them alike."""
    sink = hole.target if args.sink == "blackhole" else ports.target("sink")
    if args.realtime:
        _set_fifo([lg.server_pid], True)
    for rep in range(args.reps):
        for subject in subjects:
            print(f"[burst] rep {rep + 1}/{args.reps} {subject.name}", file=sys.stderr, flush=True)
            modes = (False, True) if args.open_loop else (False,)
            # Alternate which probe goes first, so that an order effect falls on both alike.
            for open_loop in modes if rep % 2 == 0 else modes[::-1]:
                burst_once(lg, subject, sink, args, hole, open_loop)
    if args.bulk:
        # The server is also the bulk uploads' sink: at SCHED_FIFO it would change how a reader on the
        # load core shares it with the uploader, and so the figures earlier runs give.
        _set_fifo([lg.server_pid], False)
        for _ in range(args.reps):
            for conns in args.bulk_conns:
                for subject in subjects:
                    bulk_once(lg, subject, ports.target("sink"), conns)


def _set_fifo(pids: list[int | None], fifo: bool) -> None:
    """SCHED_FIFO (priority 1) for these processes, or back to the default policy."""
    policy, param = (os.SCHED_FIFO, os.sched_param(1)) if fifo else (os.SCHED_OTHER, os.sched_param(0))
    for pid in pids:
        if pid:  # never 0: that would be this process
            os.sched_setscheduler(pid, policy, param)


def start_target(name: str, env: Environment, lg: LoadGen, ports, workdir: Path, stack: ExitStack) -> Subject:
    """Start *name* (stopped when *stack* closes) and open its probe tunnels."""
    echo = ports.target("echo")
    if name == "direct":
        probe = open_probe(lg, "none", echo)
        stack.callback(stop_process, probe)
        return Subject(name, "none", None, probe)
    base, _, repo = name.partition("@")
    launched = "gconnect" if base in VARIANTS else base
    prepare(launched, env)
    rundir = Path(tempfile.mkdtemp(prefix=f"{base}-", dir=workdir))
    plan = launch_plan(launched, rundir, env)
    if base in VARIANTS:
        plan = replace(plan, argv=plan.argv + VARIANTS[base])
    if repo:
        plan = replace(plan, cwd=Path(repo))
    path = repo or (str(env.baseline) if base == "gconnect-base" else "")
    if path:
        os.environ["PYTHONPATH"] = path  # the subprocess imports that checkout's gconnect
    try:
        proxy = stack.enter_context(RunningProxy(name, plan, rundir))
        address = proxy.start(echo)
    finally:
        os.environ.pop("PYTHONPATH", None)
    probe = open_probe(lg, address, echo)
    stack.callback(stop_process, probe)
    return Subject(name, address, proxy.pid, probe)


if __name__ == "__main__":
    sys.exit(main())
