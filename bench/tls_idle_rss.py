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
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path

import trustme

from bench.h2 import RESULTS, h1_tunnel, start_proxy
from bench.h2_bulk import tree_commit
from bench.h2_idle_rss import settled_rss
from bench.harness.trees import extract

KINDS = ("echo", "bulk")
ECHO_BYTES = 16
CHUNK = 256 * 1024


class EchoTarget:
    """A loopback server in a thread: each connection reads *size* bytes, sends as many
    back, then holds the connection until EOF."""

    def __init__(self, size: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.sock.getsockname()[1]
        self.size = size
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

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
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    tmp = Path(tempfile.mkdtemp())
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    pem = (str(tmp / "cert.pem"), str(tmp / "key.pem"))
    sizes = {"echo": ECHO_BYTES, "bulk": mib * 1024 * 1024}
    trees = {"this tree": None} | {f"gconnect-base {commit}": extract(commit) for commit in baselines}
    result: dict = {"tunnels": count, "mib": mib, "tree": tree_commit(), "proxies": {}}
    try:
        for name, tree in trees.items():
            figures = result["proxies"][name] = {}
            for kind in KINDS:
                extra = {} if tree is None else {"cwd": tree, "env": {"PYTHONPATH": str(tree)}}
                with start_proxy(*pem, **extra) as proxy:
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tls-idle-rss.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "tls-idle-rss.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
