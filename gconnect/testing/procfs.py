"""What /proc says about a process: its tree, CPU time and RSS, descriptors, per-core busy time.

Everything here reads; nothing signals or changes a process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name sits in parentheses and may hold spaces; fields start after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, its threads included; (0, 0) once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
    # Fields 14 and 15 of /proc/PID/stat (utime, stime), 0-based 11 and 12 after the name.
    return int(fields[11]) / CLOCK_TICKS_PER_S, int(fields[12]) / CLOCK_TICKS_PER_S


def state(pid: int) -> str:
    """The one-letter state (R, S, T, Z, ...); FileNotFoundError once the process is
    reaped, or ProcessLookupError when it is reaped while its stat is read."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    return raw[raw.rindex(")") + 2 :].split()[0]


def gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent has not reaped it yet)."""
    try:
        return state(pid) == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped, before or during the read
        return True


def children(pid: int) -> list[int]:
    """The direct children of *pid* (a supervisor's workers), from its main thread's list."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def open_fds(pid: int) -> dict[int, str]:
    """Descriptor number -> what it points at (``socket:[INODE]``, ``pipe:[...]``, a path, ...)."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
    return found


def environ(pid: int) -> dict[str, str]:
    """The environment *pid* was started with."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = f.read().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)


def process_tree(root: int) -> list[int]:
    """The root and all of its live descendants (workers, helpers)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in the tree, threads included."""
    user = system = 0.0
    for pid in process_tree(root):
        one_user, one_system = cpu_seconds(pid)
        user += one_user
        system += one_system
    return user, system


def tree_cpu_seconds(root: int) -> float:
    """User plus system CPU seconds of every live process in the tree, threads included."""
    return sum(tree_cpu_split(root))


def tree_rss_kib(root: int) -> int:
    """Resident set of the tree in KiB (VmRSS summed; shared pages count once per process)."""
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class CoreTimes:
    """Cumulative busy and total jiffies per CPU, from /proc/stat."""

    busy: dict[int, int]
    total: dict[int, int]
    # irq + softirq: network work (loopback delivery) that the kernel may charge to no process.
    softirq: dict[int, int]


def core_times() -> CoreTimes:
    busy, total, softirq = {}, {}, {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            numbers = [int(v) for v in values[:8]]
            cpu = int(name[3:])
            # idle and iowait are the not-busy columns (proc(5)).
            busy[cpu] = sum(numbers) - numbers[3] - numbers[4]
            total[cpu] = sum(numbers)
            softirq[cpu] = numbers[5] + numbers[6]
    return CoreTimes(busy, total, softirq)


def busy_percent(before: CoreTimes, after: CoreTimes, column: str = "busy") -> dict[str, float]:
    """Per-core share of a column ("busy" or "softirq") between two snapshots, in percent, keyed by
    CPU number as text (for JSON)."""
    result = {}
    for cpu, total in after.total.items():
        elapsed = total - before.total.get(cpu, 0)
        value = getattr(after, column)[cpu] - getattr(before, column).get(cpu, 0)
        result[str(cpu)] = round(100.0 * value / elapsed, 1) if elapsed > 0 else 0.0
    return result


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cpu_seconds_by_pid() -> dict[int, float]:
    """CPU seconds of every user-space process now alive (kernel threads left out: they serve us)."""
    seconds = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        # Kernel threads are children of kthreadd (PID 2); ksoftirqd does our own loopback work.
        if fields is None or int(fields[1]) in (0, 2) or name == "2":
            continue
        seconds[int(name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S
    return seconds


def other_cpu_seconds(before: dict[int, float], after: dict[int, float], ours: set[int]) -> float:
    """CPU seconds that processes other than ours used between two cpu_seconds_by_pid snapshots.

    The machine may be shared (other sessions, CI): a figure measured while something else ran is
    flagged rather than silently published.
    """
    return sum(other_cpu_by_pid(before, after, ours).values())


def other_cpu_by_pid(before: dict[int, float], after: dict[int, float], ours: set[int]) -> dict[int, float]:
    """Per-PID CPU seconds between two snapshots, for the processes that are not ours and did use CPU."""
    deltas = {pid: after[pid] - before[pid] for pid in after.keys() & before.keys() if pid not in ours}
    return {pid: delta for pid, delta in deltas.items() if delta > 0}
