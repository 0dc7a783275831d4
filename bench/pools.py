"""What pools and --bind-address cost per tunnel (issue 12): ``python -m bench.pools``.

The proxy under test is pinned to CPU 0; this process, its
clients, the echo target and the parent proxies run on CPU 1. Each round opens
``--tunnels`` tunnels one after another (CONNECT, the 200, 16 bytes echoed,
close) through each configuration in turn, and reads the proxy's user and
kernel CPU from ``/proc/PID/stat`` before and after; the figures are the
medians over ``--rounds`` rounds, in microseconds of proxy CPU per tunnel:

- ``direct``: no parent, no --bind-address (the fast path);
- ``direct, 2 bind addresses``: --bind-address 127.0.0.2 --bind-address 127.0.0.3;
- ``1 parent``: --upstream with one parent (what one parent cost before pools);
- ``pool of 3, round-robin``: three --upstream parents;
- ``pool of 3 + routes``: the same pool behind two routes that do not match and one that does;
- ``direct (before)`` and ``1 parent (before)``: the same with the code at
  ``--baseline`` (8a62e96, before pools; extracted with ``git archive``).

Writes ``pools.json`` and ``pools.md`` to ``--out`` (bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

from bench.harness.trees import extract
from gconnect.testing.process import ProxyProcess
from gconnect.testing.procfs import tree_cpu_split

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = b"0123456789abcdef"


def echo_server() -> int:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def start(args: list[str], cpu: int, root: Path = REPO) -> ProxyProcess:
    """``gconnect serve`` from the tree at *root*, pinned to *cpu*."""
    base = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
    base += ["--access-log", "", "--log-level", "warning"]
    # cwd=root: -m puts the working directory first on sys.path, ahead of PYTHONPATH.
    return ProxyProcess([*base, *args], cpus={cpu}, cwd=root, env={"PYTHONPATH": str(root)})


def tunnels(port: int, target: str, count: int) -> None:
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head)
            answer = b""
            while not answer.endswith(b"\r\n\r\n"):
                answer += sock.recv(1)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            sock.sendall(PAYLOAD)
            got = b""
            while len(got) < len(PAYLOAD):
                got += sock.recv(64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tunnels", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--baseline", default="8a62e96", help="commit to compare with (before pools)")
    options = parser.parse_args()
    before = extract(options.baseline)
    os.sched_setaffinity(0, {1})
    target = f"127.0.0.1:{echo_server()}"
    parents = [start([], 1) for _ in range(3)]
    urls = [f"http://{parent.address}" for parent in parents]
    pool = [a for url in urls for a in ("--upstream", url)]
    misses = ["--routes", "*.a.example,10.0.0.0/8=direct", "--routes", "*.b.example=direct"]
    configs = {
        "direct": [],
        "direct, 2 bind addresses": ["--bind-address", "127.0.0.2", "--bind-address", "127.0.0.3"],
        "1 parent": ["--upstream", urls[0]],
        "pool of 3, round-robin": pool,
        "pool of 3 + routes": [*pool, *misses, "--routes", "127.0.0.0/8=default"],
    }
    proxies = {name: start(args, 0) for name, args in configs.items()}
    proxies["direct (before)"] = start([], 0, before)
    proxies["1 parent (before)"] = start(["--upstream", urls[0]], 0, before)
    samples: dict[str, dict[str, list[float]]] = {name: {"user": [], "kernel": []} for name in proxies}
    try:
        for proxy in proxies.values():
            tunnels(proxy.port, target, 200)  # warm up: imports, caches
        for _ in range(options.rounds):
            for name, proxy in proxies.items():
                user0, kernel0 = tree_cpu_split(proxy.pid)
                tunnels(proxy.port, target, options.tunnels)
                user1, kernel1 = tree_cpu_split(proxy.pid)
                samples[name]["user"].append((user1 - user0) / options.tunnels * 1e6)
                samples[name]["kernel"].append((kernel1 - kernel0) / options.tunnels * 1e6)
    finally:
        for proxy in [*proxies.values(), *parents]:
            proxy.stop()
        shutil.rmtree(before, ignore_errors=True)
    medians = {
        name: {kind: round(statistics.median(values), 1) for kind, values in figures.items()}
        for name, figures in samples.items()
    }
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.release()}",
        "tunnels_per_round": options.tunnels,
        "rounds": options.rounds,
        "baseline": options.baseline,
        "median_us_per_tunnel": medians,
        "samples_us_per_tunnel": samples,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "pools.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Proxy CPU per tunnel: pools and --bind-address",
        "",
        f"{result['when']}, {result['machine']}; proxy on CPU 0, load, target and parents on CPU 1;",
        f"median of {options.rounds} rounds of {options.tunnels} sequential tunnels (`python -m bench.pools`).",
        "",
        "| configuration | user µs/tunnel | kernel µs/tunnel | total |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in medians.items():
        total = round(figures["user"] + figures["kernel"], 1)
        lines.append(f"| {name} | {figures['user']} | {figures['kernel']} | {total} |")
    (options.out / "pools.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
