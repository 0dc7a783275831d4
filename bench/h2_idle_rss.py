"""Memory per idle HTTP/2 connection: the proxy's RSS before and after N connections sit idle.

``python -m bench.h2_idle_rss [--connections 200] [--mib 2] [--baseline COMMIT ...]`` starts
this tree's gconnect (and the gconnect package of each ``--baseline`` commit) with a TLS listener
pinned to CPU 0, the clients and targets on CPU 1 in this process (bench/h2.py's), and for each
kind of use opens ``--connections`` HTTP/2 connections one after the other, each doing:

* **short**: one CONNECT stream to an idle target, reset by the client;
* **upload**: one stream sending ``--mib`` MiB to a target, then reset;
* **download**: one stream receiving ``--mib`` MiB from a target, then reset;

and keeps them open with no stream. The figure is the proxy's VmRSS (/proc/PID/status) with them
idle, less the VmRSS before them (after one warm-up connection of the same kind), per
connection, in KiB. Each kind has a proxy of its own. Writes ``h2-idle-rss.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import time
from pathlib import Path

from bench.h2 import RESULTS, H2Tunnels, Target, start_proxy
from bench.harness.trees import extract
from bench.tlsproxy import tls_files, tree_commit, tree_options, write_results
from gconnect.testing.procfs import tree_rss_kib

KINDS = ("short", "upload", "download")
#: RSS is read until it holds still this long (the proxy closes the targets' sockets).
SETTLE_S = 1.0
SETTLE_LIMIT_S = 20.0


def settled_rss(pid: int) -> int:
    """The proxy's RSS once two readings SETTLE_S apart agree (or after SETTLE_LIMIT_S)."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    last = tree_rss_kib(pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        now = tree_rss_kib(pid)
        if now == last:
            break
        last = now
    return last


def one_connection(port: int, context: ssl.SSLContext, kind: str, targets: dict[str, Target], size: int) -> H2Tunnels:
    """A connection that did *kind* once and now has no stream."""
    client = H2Tunnels(port, context)
    target = targets[kind]
    (stream_id,) = client.open(f"127.0.0.1:{target.port}", 1)
    if kind == "upload":
        target.received.clear()
        client.upload(stream_id, size, target)
        assert target.received.is_set()
    elif kind == "download":
        client.download(stream_id)
    client.conn.reset_stream(stream_id)
    client.sock.sendall(client.conn.data_to_send())
    return client


def measure(port: int, pid: int, context: ssl.SSLContext, kind: str, count: int, size: int) -> dict:
    targets = {"short": Target("idle"), "upload": Target("sink", size), "download": Target("source", size)}
    one_connection(port, context, kind, targets, size).close()  # warm-up: imports, caches, the allocator
    before = settled_rss(pid)
    clients = [one_connection(port, context, kind, targets, size) for _ in range(count)]
    after = settled_rss(pid)
    for client in clients:
        client.close()
    for target in targets.values():
        target.sock.close()
    return {"rss_before_kib": before, "rss_idle_kib": after, "kib_per_connection": round((after - before) / count, 1)}


def run(count: int, mib: int, baselines: list[str]) -> dict:
    os.sched_setaffinity(0, {1})
    pem, context = tls_files()
    trees = {"this tree": None} | {f"gconnect-base {commit}": extract(commit) for commit in baselines}
    result: dict = {"connections": count, "mib": mib, "tree": tree_commit(), "proxies": {}}
    try:
        for name, tree in trees.items():
            figures = result["proxies"][name] = {}
            for kind in KINDS:
                with start_proxy(*pem, **tree_options(tree)) as proxy:
                    figures[kind] = measure(proxy.port, proxy.pid, context, kind, count, mib * 1024 * 1024)
                print(name, kind, figures[kind], flush=True)
    finally:
        for tree in trees.values():
            if tree is not None:
                shutil.rmtree(tree, ignore_errors=True)
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# RSS per idle HTTP/2 connection ({result['connections']} connections, each after one stream)",
        "",
        f"This tree: {result['tree']}. Proxy VmRSS with the connections idle (no stream) less before them,",
        f"per connection, KiB; upload / download moved {result['mib']} MiB on the connection's one stream.",
        "",
        "| proxy | short stream | upload | download |",
        "|---|---|---|---|",
    ]
    for name, figures in result["proxies"].items():
        cells = " | ".join(str(figures[kind]["kib_per_connection"]) for kind in KINDS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--mib", type=int, default=2)
    parser.add_argument("--baseline", action="append", default=[], help="a commit whose gconnect is measured too")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.connections, args.mib, args.baseline)
    write_results(args.out, "h2-idle-rss", result, markdown(result))


if __name__ == "__main__":
    main()
