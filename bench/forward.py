"""Plain HTTP forwarding: small GETs on keep-alive connections and one bulk
GET, through gconnect and its peers (Squid, Apache Traffic Server, tinyproxy),
against one origin on loopback; ``floor`` and ``floor-cb`` are
bench/floor_forward.py (a greenlet per client, or callbacks only), the least a
gevent forward proxy can do, ``floor-eager`` the first making gconnect's
system calls (reads before waiting, a peek at an idle upstream connection),
``floor-fields`` the first parsing both heads field by field in Python.

Reported per proxy: requests/s (wall), the proxy's CPU per request (user and
system, from /proc, so other load on the machine inflates the wall figure but
not this one), and for the bulk GET MB/s and CPU seconds per GB. With
``--repeat N`` the proxies take turns N times (so they share the machine's
noise) and the medians are reported, with gconnect's CPU per request as a
ratio of each peer's in the same round; ``--pin`` puts the proxy on CPU 0 and
the client and origin on CPU 1.

    python -m bench.forward [--requests 4000] [--connections 16] [--bulk-mib 256]
        [--proxies gconnect,squid,ats,tinyproxy,floor,floor-cb] [--repeat 1] [--pin] [--json PATH]
        [--gconnect-args "..."] [--baseline DIR] [--syscalls]

``--syscalls`` runs the small GETs a third time under ``perf stat`` (the
kernel's syscall tracepoints, bench/syscall_count.py: the proxy at full speed,
unlike under strace) and reports system calls per request by name.
``--baseline DIR`` adds a row for gconnect from another tree (``python -c "from
bench.harness.trees import extract; print(extract('REF'))"`` makes one), so a
change is measured against what it changes in the same run.

Not a test: figures, written as a Markdown table to stdout (and JSON to PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import syscall_count
from bench.ats import ats_argv
from bench.harness.targets import free_port
from gconnect.testing.procfs import tree_cpu_split

#: Names the proxies go by on the command line, and the executable each needs.
EXECUTABLES = {"gconnect": sys.executable, "squid": "squid", "ats": "traffic_server", "tinyproxy": "tinyproxy"}
#: bench/floor_forward.py's two shapes, by the name they go by in --proxies.
FLOORS = {"floor": (), "floor-cb": ("--callbacks",), "floor-eager": ("--eager",), "floor-fields": ("--fields",)}
EXECUTABLES |= dict.fromkeys(FLOORS, sys.executable)
#: The row of gconnect from another tree (--baseline), for a before/after in one run.
BASELINE = "gconnect-baseline"
#: Requests sent through each proxy before measuring (connections opened, caches warm).
WARMUP_REQUESTS = 400

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


def start_proxy(
    name: str,
    rundir: Path,
    origin_port: int,
    pin: bool = False,
    extra: tuple[str, ...] = (),
    tree: str = "",
    prefix: tuple[str, ...] = (),
    start_timeout: float = 20.0,
) -> tuple[subprocess.Popen, int]:
    """Start proxy *name* on a free port; gconnect (and the floor) from *tree* (default: the one
    this file is in); *prefix* runs it through another command (valgrind)."""
    port = free_port()
    if name in ("gconnect", BASELINE):
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
            *extra,
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
    elif name == "ats":
        argv = ats_argv(rundir, port)
    elif name in FLOORS:
        argv = [sys.executable, "-m", "bench.floor_forward", str(port), *FLOORS[name]]
    else:
        raise ValueError(name)
    argv = [*prefix, *argv]
    if pin:
        argv = ["taskset", "-c", "0", *argv]
    # gconnect from this tree (the one the bench was started from), whatever is installed.
    env = {**os.environ, "PYTHONPATH": tree or str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=rundir, env=env)
    deadline = time.monotonic() + start_timeout
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


def measure(name: str, origin_port: int, args: argparse.Namespace, bulk: int) -> dict:
    """One round of one proxy: CPU and wall per small request, and the bulk GET if asked."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = tuple(shlex.split(args.gconnect_args)) if name in ("gconnect", BASELINE) else ()
        tree = args.baseline if name == BASELINE else ""
        proc, port = start_proxy(name, Path(tmp), origin_port, args.pin, extra, tree)
        try:
            small_gets(port, origin_port, WARMUP_REQUESTS, args.connections)
            user0, sys0 = tree_cpu_split(proc.pid)
            wall = small_gets(port, origin_port, args.requests, args.connections)
            user1, sys1 = tree_cpu_split(proc.pid)
            row = {
                "requests_per_s": args.requests / wall,
                "user_us_per_request": (user1 - user0) * 1e6 / args.requests,
                "sys_us_per_request": (sys1 - sys0) * 1e6 / args.requests,
            }
            if args.syscalls:
                idle = syscall_count.idle_rate(proc.pid)
                load = syscall_count.count(
                    proc.pid, lambda: small_gets(port, origin_port, args.requests, args.connections), idle
                )
                row["syscalls_per_request"] = syscall_count.per_unit(load, args.requests)
            if bulk:
                bulk_wall = bulk_get(port, origin_port, bulk)
                user2, sys2 = tree_cpu_split(proc.pid)
                row |= {
                    "bulk_mb_per_s": bulk / bulk_wall / 1e6,
                    "bulk_user_s_per_gb": (user2 - user1) / (bulk / 1e9),
                    "bulk_sys_s_per_gb": (sys2 - sys1) / (bulk / 1e9),
                }
        finally:
            proc.terminate()
            proc.wait(10)
    row["cpu_us_per_request"] = row["user_us_per_request"] + row["sys_us_per_request"]
    return row


def _median(values: list) -> float | dict[str, float]:
    """The median of numbers, or of dicts of numbers key by key (a key missing from one is 0)."""
    if not isinstance(values[0], dict):
        return statistics.median(values)
    keys = {key: None for value in values for key in value}
    medians = {key: statistics.median(value.get(key, 0.0) for value in values) for key in keys}
    return dict(sorted(medians.items(), key=lambda kv: -kv[1]))


def summarise(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Medians per proxy over the rounds, and gconnect's CPU per request over each peer's, round by round."""
    names = list(rounds[0])
    summary: dict[str, dict] = {}
    for name in names:
        rows = [r[name] for r in rounds if name in r]
        summary[name] = {key: _median([row[key] for row in rows]) for key in rows[0]}
        if name != "gconnect" and "gconnect" in names:
            ratios = [r["gconnect"]["cpu_us_per_request"] / r[name]["cpu_us_per_request"] for r in rounds]
            summary[name]["gconnect_cpu_ratio"] = statistics.median(ratios)
    return summary


def table(summary: dict[str, dict], bulk: bool) -> str:
    head = "| proxy | requests/s | CPU µs/request user / sys (total) | gconnect's CPU / this |"
    rule = "|---|---|---|---|"
    if bulk:
        head, rule = head + " bulk MB/s | CPU s/GB user / sys |", rule + "---|---|"
    calls = any("syscalls_per_request" in row for row in summary.values())
    if calls:
        head, rule = head + " system calls/request (most made) |", rule + "---|"
    lines = [head, rule]
    for name, row in summary.items():
        ratio = f"{row['gconnect_cpu_ratio']:.2f}" if "gconnect_cpu_ratio" in row else ""
        line = (
            f"| {name} | {row['requests_per_s']:,.0f} | {row['user_us_per_request']:.0f} / "
            f"{row['sys_us_per_request']:.0f} ({row['cpu_us_per_request']:.0f}) | {ratio} |"
        )
        if bulk:
            line += f" {row['bulk_mb_per_s']:,.0f} | {row['bulk_user_s_per_gb']:.2f} / {row['bulk_sys_s_per_gb']:.2f} |"
        if calls:
            line += f" {_calls(row.get('syscalls_per_request', {}))} |"
        lines.append(line)
    return "\n".join(lines)


def _calls(counts: dict[str, float]) -> str:
    named = [f"{name} {value:.1f}" for name, value in counts.items() if name not in ("total", "other")]
    return f"{counts.get('total', 0):.1f} ({', '.join(named[:4])})" if counts else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--bulk-mib", type=int, default=256, help="0: no bulk GET")
    parser.add_argument("--proxies", default="gconnect,squid,ats,tinyproxy")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, the proxies taking turns in each")
    parser.add_argument("--pin", action="store_true", help="proxy on CPU 0; client and origin on CPU 1")
    parser.add_argument("--json", help="also write every round and the medians here")
    parser.add_argument("--gconnect-args", default="", help="more options for gconnect serve")
    parser.add_argument("--baseline", default="", help=f"a gconnect tree (a directory) to run as {BASELINE} too")
    parser.add_argument(
        "--syscalls", action="store_true", help="a third pass of the small GETs, its system calls counted by perf"
    )
    args = parser.parse_args()
    if args.pin:
        os.sched_setaffinity(0, {1})  # the client, and the origin started below
    bulk = args.bulk_mib * 1024 * 1024
    names = [n for n in args.proxies.split(",") if shutil.which(EXECUTABLES[n])]
    if args.baseline:
        names.insert(1, BASELINE)
    skipped = [n for n in args.proxies.split(",") if n not in names]
    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, "-c", ORIGIN, str(origin_port), str(bulk)])
    rounds: list[dict[str, dict]] = []
    try:
        time.sleep(0.5)
        for _ in range(args.repeat):
            rounds.append({name: measure(name, origin_port, args, bulk) for name in names})
    finally:
        origin.terminate()
    summary = summarise(rounds)
    print(f"{args.requests} small GETs over {args.connections} keep-alive connections", end="")
    print(f"; one {args.bulk_mib} MiB GET" if bulk else "", end="")
    print(f"; medians of {args.repeat} rounds{', pinned' if args.pin else ''}\n")
    print(table(summary, bool(bulk)))
    if skipped:
        print(f"\nnot installed: {', '.join(skipped)}")
    if args.json:
        conditions = {k: v for k, v in vars(args).items() if k != "json"}
        report = {"conditions": conditions, "rounds": rounds, "medians": summary}
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
