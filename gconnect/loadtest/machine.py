"""What the load test sets and reads on this machine: the open-file limit, the ephemeral port
range, and /proc samples of a process (RSS, CPU time, descriptors) and of all cores."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def ephemeral_port_count() -> int:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(high) - int(low) + 1


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
