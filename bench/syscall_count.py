"""System calls a running process tree makes, by name, counted by the kernel: ``perf stat`` on the
syscall tracepoints. No ptrace (as ``strace -c`` needs), so the process runs at its own speed and
waits, batches and speculative reads happen as they do untraced: ``strace`` slows a proxy until
every peer has answered before it reads, and its event loop no longer waits at all.

:func:`count` attaches to every thread of the tree, gives perf :data:`ATTACH_S` to attach, runs
the load, and stops perf with SIGINT (it writes its counts then). :func:`idle_rate` is the same
without the load, per second, for processes that wake up on their own (Traffic Server's event
threads), so a caller can take the idle part out.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gconnect.testing.procfs import process_tree

#: The calls counted by name; ``total`` is every call, so what these miss shows as ``other``.
NAMES = (
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "getpid",
    "futex",
    "accept4",
    "close",
    "poll",
    "ioctl",
    "fcntl",
    "clock_nanosleep",
    "nanosleep",
    "sched_yield",
    "io_uring_enter",
    "madvise",
    "brk",
    "mmap",
    "munmap",
    "setsockopt",
    "getsockopt",
)
#: perf attaches to each thread in turn; what runs before it is attached is not counted.
ATTACH_S = 1.0


def _perf(pid: int, run: Callable[[], object]) -> tuple[dict[str, int], float]:
    events = ["-e", "raw_syscalls:sys_enter", *(f"-esyscalls:sys_enter_{name}" for name in NAMES)]
    with tempfile.NamedTemporaryFile(prefix="perf-syscalls-", suffix=".csv") as out:
        pids = ",".join(str(p) for p in process_tree(pid))
        argv = ["perf", "stat", "-x,", "-o", out.name, *events, "-p", pids]
        perf = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(ATTACH_S)
        start = time.monotonic()
        run()
        elapsed = time.monotonic() - start
        perf.send_signal(signal.SIGINT)
        _, err = perf.communicate(timeout=30)
        text = Path(out.name).read_text()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and "sys_enter" in fields[2]:
            # "<not counted>": the thread never ran while perf watched, so it made no call.
            value = int(fields[0]) if fields[0].isdigit() else 0
            event = fields[2]
            counts["total" if event == "raw_syscalls:sys_enter" else event.rpartition("_enter_")[2]] = value
    if "total" not in counts:
        raise RuntimeError(f"perf stat counted nothing: {err.decode(errors='replace')[-500:]}")
    counts["other"] = counts["total"] - sum(v for k, v in counts.items() if k != "total")
    return counts, elapsed + ATTACH_S


def idle_rate(pid: int, seconds: float = 2.0) -> dict[str, float]:
    """System calls per second by name the tree of *pid* makes with nothing to do."""
    counts, elapsed = _perf(pid, lambda: time.sleep(seconds))
    return {name: value / elapsed for name, value in counts.items()}


def count(pid: int, run: Callable[[], object], idle: dict[str, float] | None = None) -> dict[str, float]:
    """System calls by name the tree of *pid* makes while *run* runs (and perf attaches), less
    *idle* (per second, from :func:`idle_rate`) times that time."""
    counts, elapsed = _perf(pid, run)
    idle = idle or {}
    return {name: value - idle.get(name, 0.0) * elapsed for name, value in counts.items()}


def per_unit(counts: dict[str, float], units: int) -> dict[str, float]:
    """*counts* divided by *units*, the names that make at least 0.05 per unit, largest first."""
    shares = {name: round(value / units, 2) for name, value in counts.items()}
    return dict(sorted(((k, v) for k, v in shares.items() if v >= 0.05), key=lambda kv: -kv[1]))
