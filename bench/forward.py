"""Plain HTTP forwarding: small GETs on keep-alive connections and one bulk
GET, through gconnect, tinyproxy and Squid, against one origin on loopback.

Reported per proxy: requests/s (wall), the proxy's CPU per request (user and
system, from /proc, so other load on the machine inflates the wall figure but
not this one), and for the bulk GET MB/s and CPU seconds per GB.

    python -m bench.forward [--requests 4000] [--connections 16] [--bulk-mib 256] [--proxies gconnect,tinyproxy,squid]

Not a test: figures, written as a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.procfs import tree_cpu_split
from bench.harness.targets import free_port

SMALL_BODY = b"x" * 100
ORIGIN = r"""
import selectors, socket, sys
small = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
bulk_size = int(sys.argv[2])
block = b"y" * 65536
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(512); server.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(server, selectors.EVENT_READ)
buffers = {}
while True:
    for key, _ in sel.select():
        if key.fileobj is server:
            conn, _ = server.accept(); conn.setblocking(False)
            buffers[conn] = b""; sel.register(conn, selectors.EVENT_READ)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            sel.unregister(conn); conn.close(); buffers.pop(conn, None); continue
        buf = buffers[conn] + data
        while b"\r\n\r\n" in buf:
            head, _, buf = buf.partition(b"\r\n\r\n")
            conn.setblocking(True)
            if b"/bulk" in head.split(b"\r\n")[0]:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % bulk_size)
                for _ in range(bulk_size // len(block)):
                    conn.sendall(block)
            else:
                conn.sendall(small)
            conn.setblocking(False)
        buffers[conn] = buf
"""


def _get(origin_port: int, path: str) -> bytes:
    return f"GET http://127.0.0.1:{origin_port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode()


def start_proxy(name: str, rundir: Path, origin_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if name == "gconnect":
        argv = [sys.executable, "-m", "gconnect", "serve", "--listen", f"127.0.0.1:{port}"]
        argv += [
            "--allow-dest",
            "127.0.0.0/8",
            "--forward-port",
            "1-65535",
            "--access-log",
            "",
            "--log-level",
            "warning",
        ]
    elif name == "tinyproxy":
        conf = rundir / "tinyproxy.conf"
        conf.write_text(
            f"Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 1000\nAllow 127.0.0.0/8\nDisableViaHeader Yes\n"
            f'LogLevel Critical\nLogFile "{rundir}/tinyproxy.log"\nPidFile "{rundir}/tinyproxy.pid"\n'
        )
        argv = ["tinyproxy", "-d", "-c", str(conf)]
    elif name == "squid":
        conf = rundir / "squid.conf"
        conf.write_text(
            f"http_port 127.0.0.1:{port}\npid_filename {rundir}/squid.pid\ncoredump_dir {rundir}\n"
            "acl c src 127.0.0.0/8\nacl t dst 127.0.0.0/8\nhttp_access allow c t\nhttp_access deny all\n"
            "cache deny all\ncache_mem 0 MB\naccess_log none\ncache_store_log none\ncache_log /dev/null\n"
            "logfile_rotate 0\npinger_enable off\nworkers 1\nvia off\nforwarded_for delete\n"
            "shutdown_lifetime 0 seconds\n"
        )
        os.chmod(rundir, 0o777)
        argv = ["squid", "-N", "-f", str(conf)]
    else:
        raise ValueError(name)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=rundir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(
                    f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode()
                )
                if sock.recv(100).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def small_gets(port: int, origin_port: int, requests: int, connections: int) -> float:
    """Wall seconds for *requests* GETs over *connections* keep-alive connections,
    one in flight each; a proxy that closes after a response gets a new connection."""
    request = _get(origin_port, "/small")
    sel = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    in_flight: dict[socket.socket, bool] = {}
    left = requests
    done = 0

    def send_on_new() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request)
        buffers[sock], in_flight[sock] = b"", True
        sel.register(sock, selectors.EVENT_READ)

    start = time.monotonic()
    for _ in range(connections):
        send_on_new()
        left -= 1
    while done < requests:
        for key, _ in sel.select(10):
            sock = key.fileobj
            data = sock.recv(65536)
            if not data:
                sel.unregister(sock)
                sock.close()
                pending = in_flight.pop(sock)
                del buffers[sock]
                if pending or left > 0:
                    left -= 0 if pending else 1
                    send_on_new()
                continue
            buf = buffers[sock] + data
            while b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                if len(rest) < len(SMALL_BODY):
                    break
                buf = rest[len(SMALL_BODY) :]
                done += 1
                in_flight[sock] = False
                if left > 0 and b"onnection: close" not in head:
                    sock.sendall(request)
                    left -= 1
                    in_flight[sock] = True
            buffers[sock] = buf
    elapsed = time.monotonic() - start
    for sock in buffers:
        sock.close()
    return elapsed


def bulk_get(port: int, origin_port: int, size: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.monotonic()
        sock.sendall(
            f"GET http://127.0.0.1:{origin_port}/bulk HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\n\r\n".encode()
        )
        received = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        received = len(head.partition(b"\r\n\r\n")[2])
        while received < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError("bulk GET cut short")
            received += len(chunk)
        return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bulk-mib", type=int, default=256)
    parser.add_argument("--proxies", default="gconnect,tinyproxy,squid")
    args = parser.parse_args()
    bulk = args.bulk_mib * 1024 * 1024
    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, "-c", ORIGIN, str(origin_port), str(bulk)])
    rows = []
    try:
        time.sleep(0.5)
        for name in args.proxies.split(","):
            if name != "gconnect" and shutil.which(name) is None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    proc, port = start_proxy(name, Path(tmp), origin_port)
                except RuntimeError as exc:
                    rows.append(f"| {name} | not run: {exc} | | | | |")
                    continue
                try:
                    user0, sys0 = tree_cpu_split(proc.pid)
                    wall = small_gets(port, origin_port, args.requests, args.connections)
                    user1, sys1 = tree_cpu_split(proc.pid)
                    bulk_wall = bulk_get(port, origin_port, bulk)
                    user2, sys2 = tree_cpu_split(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(10)
            per = 1e6 / args.requests
            gb = bulk / 1e9
            rows.append(
                f"| {name} | {args.requests / wall:,.0f} | {(user1 - user0) * per:.0f} / {(sys1 - sys0) * per:.0f} "
                f"| {bulk / bulk_wall / 1e6:,.0f} | {(user2 - user1) / gb:.2f} / {(sys2 - sys1) / gb:.2f} |"
            )
    finally:
        origin.terminate()
    print(f"{args.requests} small GETs over {args.connections} keep-alive connections; one {args.bulk_mib} MiB GET\n")
    print("| proxy | requests/s | CPU µs/request user / sys | bulk MB/s | CPU s/GB user / sys |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
