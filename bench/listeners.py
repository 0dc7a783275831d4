"""Who owns the listening sockets, measured (issue 11): ``python -m bench.listeners``.

Compares this tree's supervisor (every worker inherits the sockets the
supervisor holds) with per-worker ``SO_REUSEPORT`` sockets (the code at
``--baseline``, 5e494a9 by default, extracted with ``git archive``), with the
kernel's ``net.ipv4.tcp_migrate_req`` off and on. For each it reports:

- the accept spread: tunnels per worker over ``--tunnels`` (10,000) tunnels
  with 2 workers, one client at a time and 8 at once (counted from the
  workers' metrics snapshots);
- failed new connections while a worker is killed with SIGKILL ``--kills``
  times, at a random moment ("kill") and after it stalled 250 ms ("stall, then
  kill": a worker wedged in a long callback, then crashing), with 8 clients
  opening tunnels throughout, split into connections the killed worker had
  accepted (its own tunnels, lost in any design; the victim is frozen for a
  moment before SIGKILL so they can be read from /proc) and connections it
  never accepted (lost from its accept queue); and how long until the
  replacement accepts;
- the same through ``--upgrades`` SIGUSR2 upgrades (this tree only).

Run as root: it re-runs itself in a new network namespace (``unshare --net``)
so that ``tcp_migrate_req``, a per-namespace sysctl, can be set without
touching the host, and the load stays on that namespace's loopback. It writes
``listeners.json`` and ``listeners.md`` to ``--out`` (bench/results).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

from bench.harness.trees import extract  # noqa: E402
from gconnect.testing.connections import accepting, client_ports_held_by  # noqa: E402
from gconnect.testing.process import ProxyProcess  # noqa: E402
from gconnect.testing.procfs import children, environ  # noqa: E402

from .listeners_report import markdown  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: Two workers importing gevent on a loaded machine: more than a single process needs.
START_TIMEOUT_S = 60.0
#: A draining supervisor waits for its workers' tunnels.
STOP_TIMEOUT_S = 30.0
STALL_SECONDS = 0.25
#: Between two kills or upgrades: the stream runs on the survivors meanwhile.
SETTLE_SECONDS = 1.0
PAYLOAD = b"listener"
#: Clients opening tunnels one after another during kills and upgrades.
CLIENTS = 8


def log(message: str) -> None:
    print(f"[listeners {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Proxy(ProxyProcess):
    """``python -m gconnect serve --workers 2`` from *source* (a directory with gconnect/ in it)."""

    def __init__(self, source: Path, extra: tuple[str, ...] = ()) -> None:
        args = ["--listen", "127.0.0.1:0", "--workers", "2", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
        args += ["--access-log", "", "--log-level", "warning", "--metrics-listen", "127.0.0.1:0", *extra]
        self.source = source
        # cwd=source: -m puts the working directory first on sys.path, ahead of PYTHONPATH.
        super().__init__(args, cwd=source, env={"PYTHONPATH": str(source)}, start_timeout=START_TIMEOUT_S)

    def workers(self) -> list[int]:
        return children(self.pid)

    def snapshot_counts(self) -> dict[int, int]:
        """Tunnels each live worker has finished, from its metrics snapshot file."""
        directory = environ(self.workers()[0])["GCONNECT_METRICS_DIR"]
        counts = {}
        for name in os.listdir(directory):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(directory, name)) as f:
                        snap = json.load(f)
                except (OSError, ValueError):
                    continue
                counts[snap["pid"]] = sum(count for _, _, count in snap["outcomes"])
        return counts

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        return super().stop(sig, timeout)


class Stream:
    """*clients* greenlets opening tunnel after tunnel until stopped (or *limit* in all)."""

    def __init__(self, proxy_port: int, target: tuple[str, int], clients: int, limit: int = 10**9) -> None:
        self.address = ("127.0.0.1", proxy_port)
        self.head = f"CONNECT {target[0]}:{target[1]} HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\n\r\n".encode()
        self.left = limit
        self.ok = 0
        self.failures: Counter[str] = Counter()
        #: (client port or 0, kind) of each failure, for attributing it to a killed worker.
        self.failed: list[tuple[int, str]] = []
        self.running = True
        self.greenlets = [gevent.spawn(self._client) for _ in range(clients)]

    def _one(self) -> None:
        port = 0
        try:
            with socket.create_connection(self.address, timeout=10) as sock:
                port = sock.getsockname()[1]
                sock.sendall(self.head + PAYLOAD)
                data = b""
                while not data.endswith(b"\r\n\r\n" + PAYLOAD):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed before the echo")
                    data += chunk
                if not data.startswith(b"HTTP/1.1 200 "):
                    raise ConnectionError(data.split(b"\r\n")[0].decode())
            self.ok += 1
        except (OSError, gevent.Timeout) as exc:
            self.failures[type(exc).__name__] += 1
            self.failed.append((port, type(exc).__name__))

    def _client(self) -> None:
        while self.running and self.left > 0:
            self.left -= 1
            self._one()

    def join(self) -> None:
        gevent.joinall(self.greenlets)

    def stop(self) -> None:
        self.running = False
        self.join()


def spread(source: Path, target: tuple[str, int], tunnels: int, clients: int) -> dict:
    proxy = Proxy(source)
    try:
        started = time.monotonic()
        stream = Stream(proxy.port, target, clients, limit=tunnels)
        stream.join()
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 15
        while sum((counts := proxy.snapshot_counts()).values()) < stream.ok and time.monotonic() < deadline:
            gevent.sleep(0.2)  # snapshots are written once a second
    finally:
        proxy.stop()
    per_worker = sorted(counts.values(), reverse=True)
    return {
        "clients": clients,
        "tunnels": tunnels,
        "ok": stream.ok,
        "failures": dict(stream.failures),
        "per_worker": per_worker,
        "largest_share": round(per_worker[0] / max(1, sum(per_worker)), 4),
        "tunnels_per_s": round(stream.ok / elapsed),
    }


def kills(source: Path, target: tuple[str, int], count: int, stall: bool) -> dict:
    proxy = Proxy(source)
    stream = Stream(proxy.port, target, clients=CLIENTS)
    replaced = []
    held: set[int] = set()
    try:
        for _ in range(count):
            gevent.sleep(SETTLE_SECONDS * (0.5 + random.random()))
            victim = random.choice(proxy.workers())
            # Frozen for a moment (or the stall), so what it has accepted is read exactly.
            os.kill(victim, signal.SIGSTOP)
            if stall:
                gevent.sleep(STALL_SECONDS)
            held |= client_ports_held_by(victim, proxy.port)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + 30
            while time.monotonic() < deadline:
                now = [pid for pid in proxy.workers() if pid != victim]
                if len(now) == 2 and all(accepting(pid, proxy.port) for pid in now):
                    break
                gevent.sleep(0.02)
            replaced.append(round(time.monotonic() - killed, 2))
        gevent.sleep(SETTLE_SECONDS)
        stream.stop()
    finally:
        stream.running = False
        proxy.stop()
    accepted = sum(1 for port, _ in stream.failed if port in held)
    return {
        "kills": count,
        "ok": stream.ok,
        "failures": dict(stream.failures),
        # Connections the killed worker had accepted: its own tunnels, which end with it in any design.
        "failed_held_by_victim": accepted,
        "failed_never_accepted": len(stream.failed) - accepted,
        "replaced_after_s": replaced,
    }


def upgrades(source: Path, target: tuple[str, int], count: int) -> dict:
    proxy = Proxy(source, ("--drain-timeout", "2"))
    stream = Stream(proxy.port, target, clients=CLIENTS)
    took, codes = [], []
    try:
        for _ in range(count):
            gevent.sleep(SETTLE_SECONDS)
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "gconnect", "upgrade", str(proxy.proc.pid)],
                cwd=source,
                capture_output=True,
                text=True,
                timeout=120,
            )
            codes.append(done.returncode)
            took.append(round(time.monotonic() - started, 2))
        gevent.sleep(SETTLE_SECONDS)
        stream.stop()
    finally:
        stream.running = False
        proxy.stop()
    return {"upgrades": count, "exit_codes": codes, "ok": stream.ok, "failures": dict(stream.failures), "took_s": took}


def set_migrate(on: bool) -> None:
    with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
        f.write("1" if on else "0")


def start_target() -> tuple[subprocess.Popen, tuple[str, int]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.target"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    host, _, port = line.rsplit(" ", 1)[1].strip().rpartition(":")
    return proc, (host, int(port))


def measure(args: argparse.Namespace) -> dict:
    baseline = extract(args.baseline)
    target_proc, target = start_target()
    modes = {"inherited": (REPO, False), "reuseport": (baseline, False), "reuseport+migrate": (baseline, True)}
    results: dict = {"modes": {}}
    try:
        for mode, (source, migrate) in modes.items():
            set_migrate(migrate)
            entry: dict = {"source": "this tree" if source == REPO else f"git {args.baseline}", "migrate_req": migrate}
            if mode != "reuseport+migrate":  # migrate_req changes what happens at close, not the spread
                entry["spread"] = [spread(source, target, args.tunnels, clients) for clients in (1, 8)]
            log(f"{mode}: spread {[s['per_worker'] for s in entry.get('spread', [])]}")
            entry["kill"] = kills(source, target, args.kills, stall=False)
            entry["stall_then_kill"] = kills(source, target, args.kills, stall=True)
            log(f"{mode}: kill {entry['kill']['failures']}, stall+kill {entry['stall_then_kill']['failures']}")
            if source == REPO:
                entry["upgrade"] = upgrades(source, target, args.upgrades)
                log(f"{mode}: upgrade {entry['upgrade']['failures']} {entry['upgrade']['exit_codes']}")
            results["modes"][mode] = entry
    finally:
        set_migrate(False)
        target_proc.terminate()
        target_proc.wait()
        shutil.rmtree(baseline, ignore_errors=True)
    return results


def conditions(args: argparse.Namespace) -> dict:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout.strip()

    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "git": git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain") else ""),
        "baseline": args.baseline,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
        "command": " ".join(["python -m bench.listeners", *(a for a in sys.argv[1:] if a != "--inside")]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.listeners", description=__doc__.split("\n")[0])
    parser.add_argument("--tunnels", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--upgrades", type=int, default=3)
    parser.add_argument("--baseline", default="5e494a9", help="commit with per-worker SO_REUSEPORT listeners")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:
        if os.geteuid() != 0:
            parser.error("run as root: the measurement runs in its own network namespace")
        inner = ["unshare", "--net", "--", sys.executable, "-m", "bench.listeners", *sys.argv[1:], "--inside"]
        return subprocess.run(inner, cwd=REPO).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    results = {"conditions": conditions(args), **measure(args)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "listeners.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "listeners.md").write_text(markdown(results))
    log(f"wrote {args.out / 'listeners.json'} and {args.out / 'listeners.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
