"""Bandwidth limits: what a limited user gets, and what a limit costs.

    python -m bench.bandwidth [--rate 10M] [--seconds 10] [--repeat 3] [--bulk-mib 1024] [--baseline COMMIT]

The proxy runs pinned to CPU 0; the origin (a Python process answering
``GET /N`` with N bytes) and the clients (threads of this process reading raw
tunnels) to CPU 1. Figures, medians of ``--repeat`` runs:

* a user limited to ``--rate`` (``[users.alice] rate-per-user``): one download
  and eight parallel downloads, each read for ``--seconds``; the rate is the
  bytes over that time; the first second's bytes, from a bucket that starts as
  configured (empty) and from a full one (``--bucket-initial 1``), against
  rate + burst;
* the proxy's CPU (user and system from /proc) per GB: the limited downloads
  above; ``--bulk-mib`` through an unlimited user of the same proxy (carol, no
  table), through a proxy with no limit at all, through a user limited far
  above what the machine moves (the limited mover at full speed), and with
  ``--baseline`` through the tree at that commit.

Writes ``bandwidth-limits.json`` and ``bandwidth-limits.md`` to ``--out``.
Not a test.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import bcrypt

from bench.harness.trees import extract
from gconnect.ops.paramtypes import parse_bytes
from gconnect.testing.process import ProxyProcess, free_port, pin_to
from gconnect.testing.procfs import cpu_seconds

REPO = Path(__file__).resolve().parent.parent
ORIGIN = r"""
import socket, sys, threading
block = b"y" * 65536
def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(4096)
        if not data:
            return
        head += data
    size = int(head.split(b" ", 2)[1].strip(b"/"))
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while size > 0:
            conn.sendall(block[: min(size, len(block))])
            size -= len(block)
    except OSError:
        pass
    conn.close()
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(128)
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""
USERS = {"alice": "pw", "carol": "pw"}


def open_download(proxy: ProxyProcess, origin: int, user: str, size: int) -> tuple[socket.socket, float]:
    """A tunnel through *proxy* as *user* with ``GET /size`` sent (the 200 read), and when it was sent."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=30)
    token = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    target = f"127.0.0.1:{origin}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"CONNECT refused: {head!r}")
    sock.sendall(b"GET /%d HTTP/1.1\r\nHost: origin\r\n\r\n" % size)
    return sock, time.monotonic()


def read_for(sock: socket.socket, started: float, seconds: float, first: list[int]) -> int:
    """Bytes read in *seconds* from *started* (*first*: appended the bytes of the first second)."""
    total, first_second = 0, None
    while (left := started + seconds - time.monotonic()) > 0:
        to_mark = started + 1.0 - time.monotonic()
        if first_second is None and to_mark <= 0:
            first_second = total
        # Until the one-second mark, no wait runs past it: bytes after it are not the first second's.
        sock.settimeout(min(left, to_mark) if first_second is None else left)
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            break
        total += len(data)
    first.append(total if first_second is None else first_second)
    sock.close()
    return total


def downloads(proxy: ProxyProcess, origin: int, count: int, rate: int, seconds: float) -> dict:
    """*count* parallel downloads by alice for *seconds*: rate, first second, proxy CPU per GB."""
    socks = [open_download(proxy, origin, "alice", 4 * rate * int(seconds)) for _ in range(count)]
    before = cpu_seconds(proxy.pid)
    moved, window, first = read_parallel(socks, seconds)
    after = cpu_seconds(proxy.pid)
    return {
        "rate": moved / window,
        "first_second": first,
        "cpu_user_per_gb": (after[0] - before[0]) / moved * 1e9,
        "cpu_system_per_gb": (after[1] - before[1]) / moved * 1e9,
    }


def read_parallel(socks: list[tuple[socket.socket, float]], seconds: float) -> tuple[int, float, int]:
    """Each of *socks* (open_download's) read for *seconds* in a thread of its own, then closed:
    the bytes moved, the window they moved in, and the bytes of each one's first second, summed."""
    # Each download is read for *seconds* from its GET; the GETs went out a moment apart.
    window = seconds + socks[-1][1] - socks[0][1]
    first: list[int] = []
    totals = [0] * len(socks)
    threads = [
        threading.Thread(target=lambda i=i: totals.__setitem__(i, read_for(*socks[i], seconds, first)))
        for i in range(len(socks))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(totals), window, sum(first)


def write_htpasswd(work: Path) -> None:
    """*work*/htpasswd with USERS (bcrypt at its cheapest cost: the benches measure tunnels, not logins)."""
    (work / "htpasswd").write_text(
        "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n" for u, p in USERS.items())
    )


def start_origin() -> tuple[int, subprocess.Popen]:
    """ORIGIN in a process of its own (on this process's CPUs): its port, and the process."""
    port = free_port()
    return port, subprocess.Popen([sys.executable, "-c", ORIGIN, str(port)])


def bulk(proxy: ProxyProcess, origin: int, user: str, size: int) -> dict:
    """One download of *size* bytes as fast as it goes: MB/s and proxy CPU per GB."""
    sock, _ = open_download(proxy, origin, user, size)
    before, started = cpu_seconds(proxy.pid), time.monotonic()
    received = 0
    while received < size:
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError(f"bulk download cut off at {received} of {size}")
        received += len(data)
    elapsed, after = time.monotonic() - started, cpu_seconds(proxy.pid)
    sock.close()
    return {
        "mb_per_s": received / elapsed / 1e6,
        "cpu_user_per_gb": (after[0] - before[0]) / received * 1e9,
        "cpu_system_per_gb": (after[1] - before[1]) / received * 1e9,
    }


def settle(proxy: ProxyProcess) -> None:
    """Wait until *proxy* has closed every tunnel: a bucket still used by the last
    run's closing tunnel would carry its level into the next run."""
    url = next(line.split()[-1] for line in proxy.lines if "metrics on" in line)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{url}/metrics", timeout=5) as response:
            if "\ngconnect_tunnels_open 0.0\n" in response.read().decode():
                return
        time.sleep(0.05)
    raise RuntimeError("the proxy kept tunnels open for 30 s")


def median(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def start(work: Path, *extra: str, root: Path = REPO) -> ProxyProcess:
    args = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
    args += ["--access-log", "", "--log-level", "warning", "--auth-file", str(work / "htpasswd"), *extra]
    args += ["--metrics-listen", "127.0.0.1:0"]
    return ProxyProcess(args, cwd=root, env={"PYTHONPATH": str(root)}, cpus=[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", default="10M")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bulk-mib", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--baseline", help="a commit whose bulk download (no limits) to measure too")
    options = parser.parse_args()
    rate, seconds, size = parse_bytes(options.rate), options.seconds, options.bulk_mib << 20
    pin_to([1])()  # the clients, and the origin started below
    work = Path(tempfile.mkdtemp(prefix="gconnect-bandwidth-"))
    write_htpasswd(work)
    (work / "limited.toml").write_text(f"[users.alice]\nrate-per-user = {rate}\n")
    (work / "fast.toml").write_text(f"[users.alice]\nrate-per-user = {100 * rate}\n")
    port, origin = start_origin()
    time.sleep(0.5)
    cleanup: list[Path] = []
    figures: dict = {"rate": rate, "burst": rate, "seconds": seconds, "repeat": options.repeat}
    try:
        for name, extra in (("empty", ()), ("full", ("--bucket-initial", "1"))):
            proxy = start(work, "--config", str(work / "limited.toml"), *extra)
            try:
                for count in (1, 8) if name == "empty" else (1,):
                    runs = []
                    for _ in range(options.repeat):
                        settle(proxy)
                        runs.append(downloads(proxy, port, count, rate, seconds))
                    figures[f"limited_{count}_{name}"] = median(runs)
                    print(f"limited x{count} ({name} bucket): {figures[f'limited_{count}_{name}']}", flush=True)
                if name == "empty":
                    runs = [bulk(proxy, port, "carol", size) for _ in range(options.repeat)]
                    figures["unlimited_user_beside_limits"] = median(runs)
            finally:
                proxy.stop()
        trees: list[tuple[str, tuple[str, ...], Path]] = [
            ("no_limits", (), REPO),
            ("limited_far_above", ("--config", str(work / "fast.toml")), REPO),
        ]
        if options.baseline:
            trees.append(("baseline", (), extract(options.baseline)))
            cleanup.append(trees[-1][2])
            figures["baseline_commit"] = options.baseline
        for name, options_, root in trees:
            proxy = start(work, *options_, root=root)
            user = "alice" if name == "limited_far_above" else "carol"
            try:
                figures[name] = median([bulk(proxy, port, user, size) for _ in range(options.repeat)])
                print(f"{name}: {figures[name]}", flush=True)
            finally:
                proxy.stop()
    finally:
        origin.kill()
        origin.wait()
        for directory in [work, *cleanup]:
            shutil.rmtree(directory, ignore_errors=True)
    write(options.out, figures)


def write(out: Path, figures: dict) -> None:
    figures["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    (out / "bandwidth-limits.json").write_text(json.dumps(figures, indent=2) + "\n")
    rate, seconds = figures["rate"], figures["seconds"]

    def cpu(row: dict) -> str:
        return f"{row['cpu_user_per_gb']:.2f} + {row['cpu_system_per_gb']:.2f}"

    lines = [
        "# Bandwidth limits: what a limited user gets, and what a limit costs",
        "",
        f"{figures['when']}; `python -m bench.bandwidth` (proxy on CPU 0, origin and clients on CPU 1),"
        f" medians of {figures['repeat']} runs. Rate {rate / 1e6:g} MB/s per user, burst {rate / 1e6:g} MB.",
        "",
        f"| downloads by one limited user, {seconds:g} s | MB/s | vs rate | first second, MB"
        " | proxy CPU s per GB (user + system) |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (
        ("limited_1_empty", "one"),
        ("limited_8_empty", "eight in parallel"),
        ("limited_1_full", "one, from a full bucket"),
    ):
        row = figures[key]
        lines.append(
            f"| {label} | {row['rate'] / 1e6:.2f} | {row['rate'] / rate - 1:+.1%} | {row['first_second'] / 1e6:.2f}"
            f" | {cpu(row)} |"
        )
    lines += [
        "",
        f"First second's bound: rate + burst = {2 * rate / 1e6:g} MB.",
        "",
        "| bulk download, as fast as it goes | MB/s | proxy CPU s per GB (user + system) |",
        "|---|---:|---:|",
    ]
    for key, label in (
        ("no_limits", "no limit configured"),
        ("unlimited_user_beside_limits", "an unlimited user, limits configured for another"),
        ("limited_far_above", f"a user limited to {100 * rate / 1e6:g} MB/s (the limited mover at speed)"),
        ("baseline", f"at {figures.get('baseline_commit')}, before the limits"),
    ):
        if key not in figures:
            continue
        row = figures[key]
        lines.append(f"| {label} | {row['mb_per_s']:.0f} | {cpu(row)} |")
    (out / "bandwidth-limits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
