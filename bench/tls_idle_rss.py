"""Memory per idle HTTP/1.1 TLS tunnel: the proxy's RSS before and after N tunnels sit idle.

``python -m bench.tls_idle_rss [--tunnels 200] [--mib 2] [--baseline COMMIT ...]`` starts this
tree's gconnect (and the gconnect package of each ``--baseline`` commit) with a TLS listener
pinned to CPU 0, the clients and the target on CPU 1 in this process, and for each kind of use
opens ``--tunnels`` HTTP/1.1 CONNECT tunnels over TLS one after the other, each doing:

* **echo**: 16 bytes to the target and the same 16 back;
* **bulk**: ``--mib`` MiB to the target, then ``--mib`` MiB back from it;

and keeps them open and idle (client and target connected). The figure is the proxy's VmRSS
(/proc/PID/status) with them idle, less the VmRSS before them (after one warm-up tunnel of the
same kind), per tunnel, in KiB. Each kind has a proxy of its own. Writes ``tls-idle-rss.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
from pathlib import Path

from bench.h2 import CHUNK, RESULTS, Target, h1_tunnel, start_proxy
from bench.h2_idle_rss import settled_rss
from bench.harness.trees import extract
from bench.tlsproxy import tls_files, tree_commit, tree_options, write_results

KINDS = ("echo", "bulk")
ECHO_BYTES = 16


class EchoTarget(Target):
    """bench/h2.py's loopback server, serving an echo: each connection reads *size*
    bytes, sends as many back, then holds the connection until EOF."""

    def __init__(self, size: int) -> None:
        super().__init__("echo", size)

    def _serve(self, conn: socket.socket) -> None:
        block = b"\1" * CHUNK
        with conn:
            try:
                got = 0
                while got < self.size and (chunk := conn.recv(CHUNK)):
                    got += len(chunk)
                left = self.size
                while left:
                    left -= conn.send(block[: min(left, CHUNK)])
                while conn.recv(CHUNK):
                    pass
            except OSError:
                pass


def one_tunnel(port: int, context: ssl.SSLContext, target: EchoTarget) -> ssl.SSLSocket:
    """A tunnel that moved target.size bytes each way and is now idle."""
    sock = h1_tunnel(port, context, f"127.0.0.1:{target.port}")
    sock.settimeout(30)
    block = b"\2" * CHUNK
    left = target.size
    while left:
        left -= sock.send(block[: min(left, CHUNK)])
    got = 0
    while got < target.size:
        chunk = sock.recv(CHUNK)
        assert chunk, "the tunnel closed early"
        got += len(chunk)
    return sock


def measure(port: int, pid: int, context: ssl.SSLContext, size: int, count: int) -> dict:
    target = EchoTarget(size)
    one_tunnel(port, context, target).close()  # warm-up: imports, caches, the allocator
    before = settled_rss(pid)
    tunnels = [one_tunnel(port, context, target) for _ in range(count)]
    after = settled_rss(pid)
    for sock in tunnels:
        sock.close()
    target.sock.close()
    return {"rss_before_kib": before, "rss_idle_kib": after, "kib_per_tunnel": round((after - before) / count, 1)}


def run(count: int, mib: int, baselines: list[str]) -> dict:
    os.sched_setaffinity(0, {1})
    pem, context = tls_files()
    sizes = {"echo": ECHO_BYTES, "bulk": mib * 1024 * 1024}
    trees = {"this tree": None} | {f"gconnect-base {commit}": extract(commit) for commit in baselines}
    result: dict = {"tunnels": count, "mib": mib, "tree": tree_commit(), "proxies": {}}
    try:
        for name, tree in trees.items():
            figures = result["proxies"][name] = {}
            for kind in KINDS:
                with start_proxy(*pem, **tree_options(tree)) as proxy:
                    figures[kind] = measure(proxy.port, proxy.pid, context, sizes[kind], count)
                print(name, kind, figures[kind], flush=True)
    finally:
        for tree in trees.values():
            if tree is not None:
                shutil.rmtree(tree, ignore_errors=True)
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# RSS per idle HTTP/1.1 TLS tunnel ({result['tunnels']} tunnels held idle)",
        "",
        f"This tree: {result['tree']}. Proxy VmRSS with the tunnels idle less before them, per tunnel,",
        f"KiB; echo moved {ECHO_BYTES} bytes each way, bulk {result['mib']} MiB each way.",
        "",
        "| proxy | echo | bulk |",
        "|---|---|---|",
    ]
    for name, figures in result["proxies"].items():
        cells = " | ".join(str(figures[kind]["kib_per_tunnel"]) for kind in KINDS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--mib", type=int, default=2)
    parser.add_argument("--baseline", action="append", default=[], help="a commit whose gconnect is measured too")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.tunnels, args.mib, args.baseline)
    write_results(args.out, "tls-idle-rss", result, markdown(result))


if __name__ == "__main__":
    main()
