"""Bandwidth limits across processes: one user's rate shared by the two workers
of ``--workers 2`` and by two instances sharing a redis-server.

    python -m bench.bandwidth_shared [--rate 10M] [--seconds 10] [--repeat 3] [--period 0.2]

The proxies run pinned to CPU 0; the origin (bench.bandwidth's), redis-server
and the clients (threads of this process reading raw tunnels) to CPU 1. A user
limited to ``--rate`` (``--rate-per-user``, burst one second of it, the bucket
starting empty) downloads once, and eight times in parallel, for ``--seconds``:
through one proxy with two workers (the kernel spreads the eight), and through
two instances with ``--shared-state`` (four each; the single download through
the first). Each run starts fresh proxies, so no bucket carries over. Figures,
medians of ``--repeat`` runs: the total rate (bytes over the window), the first
second's bytes, and how the tunnels were spread (the two-worker rows).

Writes ``bandwidth-shared.json`` and ``bandwidth-shared.md`` to ``--out``. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.bandwidth import median, open_download, read_parallel, start, start_origin, write_htpasswd
from gconnect.ops.paramtypes import parse_bytes
from gconnect.testing import procfs
from gconnect.testing.connections import client_ports_held_by
from gconnect.testing.process import ProxyProcess, free_port, pin_to

REPO = Path(__file__).resolve().parent.parent


def downloads(proxies: list[ProxyProcess], origin: int, count: int, rate: int, seconds: float) -> dict:
    """*count* parallel downloads by alice, dealt round the *proxies*, for *seconds*:
    the total rate, the first second, and the tunnels each worker process held."""
    socks = [open_download(proxies[i % len(proxies)], origin, "alice", 4 * rate * int(seconds)) for i in range(count)]
    held = sorted(
        len(client_ports_held_by(pid, proxy.port))
        for proxy in proxies
        for pid in (procfs.children(proxy.pid) or [proxy.pid])
    )
    moved, window, first = read_parallel(socks, seconds)
    return {"rate": moved / window, "first_second": first, "held": held}


class Redis:
    """redis-server on a loopback port, no persistence."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def workers_ready(proxy: ProxyProcess, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(procfs.children(proxy.pid)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not start")
        time.sleep(0.05)


def run(setup: str, work: Path, redis: Redis, period: float, origin: int, count: int, rate: int, seconds: float):
    limit = ("--rate-per-user", str(rate))
    if setup == "workers":
        proxies = [start(work, "--workers", "2", *limit)]
        workers_ready(proxies[0], 2)
    else:
        shared = ("--shared-state", f"redis://127.0.0.1:{redis.port}/0", "--shared-state-period", str(period))
        proxies = [start(work, *limit, *shared) for _ in range(2)]
    try:
        return downloads(proxies, origin, count, rate, seconds)
    finally:
        for proxy in proxies:
            proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", default="10M")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--period", type=float, default=0.2, help="--shared-state-period of the instances")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args()
    rate, seconds = parse_bytes(options.rate), options.seconds
    pin_to([1])()  # the clients, and the origin and redis-server started below
    work = Path(tempfile.mkdtemp(prefix="gconnect-bandwidth-shared-"))
    write_htpasswd(work)
    port, origin = start_origin()
    redis = Redis(work)
    figures: dict = {"rate": rate, "burst": rate, "seconds": seconds, "repeat": options.repeat}
    figures["period"] = options.period
    try:
        for setup in ("workers", "instances"):
            for count in (1, 8):
                runs = [
                    run(setup, work, redis, options.period, port, count, rate, seconds) for _ in range(options.repeat)
                ]
                row = median([{k: v for k, v in r.items() if k != "held"} for r in runs])
                row["held"] = [r["held"] for r in runs]
                figures[f"{setup}_{count}"] = row
                print(f"{setup} x{count}: {row}", flush=True)
    finally:
        redis.stop()
        origin.kill()
        origin.wait()
        shutil.rmtree(work, ignore_errors=True)
    write(options.out, figures)


def write(out: Path, figures: dict) -> None:
    figures["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    (out / "bandwidth-shared.json").write_text(json.dumps(figures, indent=2) + "\n")
    rate, seconds = figures["rate"], figures["seconds"]
    lines = [
        "# Bandwidth limits across processes: one user's rate over two workers and two instances",
        "",
        f"{figures['when']}; `python -m bench.bandwidth_shared` (proxies on CPU 0; origin, redis-server and"
        f" clients on CPU 1), medians of {figures['repeat']} runs, fresh proxies each run. Rate"
        f" {rate / 1e6:g} MB/s per user, burst {rate / 1e6:g} MB, bucket starting empty;"
        f" instances sync every {figures['period']:g} s.",
        "",
        f"| downloads by one limited user, {seconds:g} s | MB/s | vs rate | first second, MB"
        " | tunnels per process, each run |",
        "|---|---:|---:|---:|---|",
    ]
    for key, label in (
        ("workers_1", "one, `--workers 2`"),
        ("workers_8", "eight in parallel, `--workers 2`"),
        ("instances_1", "one, two instances (through the first)"),
        ("instances_8", "eight in parallel, two instances (four each)"),
    ):
        row = figures[key]
        spread = "; ".join("+".join(str(n) for n in held) for held in row["held"])
        lines.append(
            f"| {label} | {row['rate'] / 1e6:.2f} | {row['rate'] / rate - 1:+.1%} | {row['first_second'] / 1e6:.2f}"
            f" | {spread} |"
        )
    lines += ["", f"One process's first second from an empty bucket: the rate, {rate / 1e6:g} MB."]
    (out / "bandwidth-shared.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
