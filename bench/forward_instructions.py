"""Instructions and system calls per forwarded request: ``python -m bench.forward_instructions``.

Small GETs (100-byte bodies) on one keep-alive client connection, one at a
time, through gconnect under ``valgrind --tool=callgrind`` (user-space
instructions, counting switched on after a warm-up as in
:mod:`bench.instructions`), and under ``strace -c -f`` (system calls by
name). Two runs per tree, of ``--requests`` and ``--requests`` +
``--extra``: the difference divided by ``--extra`` is one request's, the
fixed costs cancelled. ``--baseline DIR`` counts another tree the same way.
``--access-log text`` (or ``json``) counts with the access log written to a
file (the default: none, ``--access-log ''``). ``--syscalls`` adds the
strace run; ``--peer squid`` counts Squid's system calls too (no
callgrind for peers but the floors: ``--peer floor`` and ``--peer
floor-cb``, bench/floor_forward.py, are counted like gconnect).
With the instructions come where they go (bench/callgrind_split.py: by
library, by C function, Python frames run); ``--python-calls`` counts the
calls of each Python function per request under cProfile (bench/profiled.py).

strace stops the proxy at every call, so the origin and the client have
always answered before it reads: a proxy that reads before it waits makes no
wait at all here. ``python -m bench.forward --syscalls`` counts with perf
under load instead.

Not a test: figures to stdout (and JSON to ``--json``).
"""

from __future__ import annotations

import argparse
import functools
import json
import pstats
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import callgrind_split
from bench.forward import FLOORS, ORIGIN, SMALL_BODY, _get, start_proxy
from bench.harness.targets import free_port
from gconnect.testing.process import ProxyProcess

REPO = Path(__file__).resolve().parents[1]
TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
START_UNDER_VALGRIND_S = 180.0
ARGS = ("--allow-dest", "127.0.0.0/8", "--forward-port", "1-65535", "--access-log", "", "--log-level", "warning")
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", re.MULTILINE)


def gets(port: int, origin_port: int, n: int) -> None:
    """*n* GETs, one at a time, on one keep-alive connection."""
    request = _get(origin_port, "/small")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for _ in range(n):
            sock.sendall(request)
            buf = b""
            while True:
                _, sep, rest = buf.partition(b"\r\n\r\n")
                if sep and len(rest) >= len(SMALL_BODY):
                    break
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("proxy closed the connection")
                buf += data


def floor_instructions(name: str, _root: Path, origin_port: int, n: int, out: Path) -> int:
    """Instructions bench/floor_forward.py (as *name* in bench.forward's FLOORS) executed on *n* GETs."""
    valgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    proc, port = start_proxy(name, out.parent, origin_port, prefix=valgrind, start_timeout=START_UNDER_VALGRIND_S)
    try:
        gets(port, origin_port, 50)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        gets(port, origin_port, n)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        # The floor has no shutdown of its own: SIGTERM ends it, and callgrind writes its file then.
        proc.terminate()
        proc.wait(timeout=START_UNDER_VALGRIND_S)
    return totals(out)


def totals(out: Path) -> int:
    match = TOTALS.search(out.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def instructions(root: Path, origin_port: int, n: int, out: Path, access_log: str = "off") -> int:
    """Instructions gconnect from *root* executed on *n* GETs; *access_log*
    "text" or "json" writes the access log (to a file beside *out*), "off" none."""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    logging = () if access_log == "off" else ("--access-log", str(out.with_suffix(".log")), "--log-format", access_log)
    proxy = ProxyProcess(
        ["--listen", "127.0.0.1:0", *ARGS, *logging],
        prefix=valgrind,
        cwd=root,
        env={"PYTHONPATH": str(root)},
        start_timeout=START_UNDER_VALGRIND_S,
    )
    try:
        gets(proxy.port, origin_port, 50)
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        gets(proxy.port, origin_port, n)
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
    finally:
        proxy.stop(timeout=START_UNDER_VALGRIND_S)
    return totals(out)


def syscalls(name: str, root: Path, origin_port: int, n: int, rundir: Path) -> dict[str, int]:
    """System calls by name while serving *n* GETs (after a warm-up)."""
    proc, port = start_proxy(name, rundir, origin_port, tree=str(root))
    try:
        gets(port, origin_port, 50)
        out = rundir / f"strace-{name}-{n}.txt"
        tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(proc.pid)], stderr=subprocess.PIPE)
        time.sleep(1.0)  # strace attaches asynchronously; requests before it would not count
        gets(port, origin_port, n)
        tracer.terminate()
        tracer.wait(timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {call: int(count) for count, call in _STRACE_ROW.findall(out.read_text())}


def python_calls(name: str, root: Path, origin_port: int, n: int, out: Path) -> dict[str, int]:
    """Calls of each Python function while proxy *name* (gconnect from *root*, or a floor) serves
    *n* GETs after a warm-up, under cProfile (bench/profiled.py), as ``file:line(function)``."""
    prefix = (sys.executable, "-m", "bench.profiled", str(out))
    proc, port = start_proxy(name, out.parent, origin_port, tree=str(root), prefix=prefix)
    try:
        gets(port, origin_port, 50 + n)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    calls: dict[str, int] = {}
    for (path, line, function), (_, total, *_rest) in pstats.Stats(str(out)).stats.items():  # type: ignore[attr-defined]
        # A built-in's name carries its type's address, which differs from one process to the next.
        where = f"{Path(path).name}:{line}({function})" if line else _ADDRESS.sub("", function)
        calls[where] = calls.get(where, 0) + total
    return calls


def calls_per_request(name: str, root: Path, origin_port: int, options: argparse.Namespace, work: Path) -> dict:
    """Python function calls per request, in all and by function (the most called first)."""
    small = python_calls(name, root, origin_port, options.requests, work / f"{name}-s.prof")
    large = python_calls(name, root, origin_port, options.requests + options.extra, work / f"{name}-l.prof")
    per = {k: round((large.get(k, 0) - small.get(k, 0)) / options.extra, 2) for k in set(small) | set(large)}
    ranked = dict(sorted(((k, v) for k, v in per.items() if v >= 0.05), key=lambda kv: -kv[1]))
    return {"total": round(sum(ranked.values()), 1), "by_function": ranked}


def per_request(small: dict[str, int], large: dict[str, int], extra: int) -> dict[str, float]:
    calls = {k: round((large.get(k, 0) - small.get(k, 0)) / extra, 2) for k in set(small) | set(large)}
    return {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def count(tag: str, name: str, root: Path, origin_port: int, options: argparse.Namespace, work: Path) -> dict:
    """What proxy *name* (gconnect from *root*, a floor, or a peer) does per request, as asked;
    *tag* names it in what is printed."""
    figures: dict = {}
    python = name == "gconnect" or name in FLOORS
    if python and not options.no_instructions:
        if name == "gconnect":
            counter = functools.partial(instructions, access_log=options.access_log)
        else:
            counter = functools.partial(floor_instructions, name)
        outs = (work / f"{tag}-s.out", work / f"{tag}-l.out")
        small = counter(root, origin_port, options.requests, outs[0])
        large = counter(root, origin_port, options.requests + options.extra, outs[1])
        figures["instructions_per_request"] = round((large - small) / options.extra)
        figures |= callgrind_split.split(*outs, options.extra)
        print(f"{tag}: {figures['instructions_per_request']:,} instructions per request", flush=True)
        print(f"{tag}: by library {figures['by_library']}", flush=True)
    if options.syscalls or not python:
        small_c = syscalls(name, root, origin_port, options.requests, work)
        large_c = syscalls(name, root, origin_port, options.requests + options.extra, work)
        figures["syscalls_per_request"] = per_request(small_c, large_c, options.extra)
        print(f"{tag}: system calls per request {figures['syscalls_per_request']}", flush=True)
    if python and options.python_calls:
        figures["python_calls_per_request"] = calls_per_request(name, root, origin_port, options, work)
        print(f"{tag}: {figures['python_calls_per_request']['total']} Python calls per request", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--extra", type=int, default=1000)
    parser.add_argument("--baseline", help="another gconnect tree (a directory) to count too")
    parser.add_argument("--syscalls", action="store_true", help="also count system calls with strace -c")
    parser.add_argument("--no-instructions", action="store_true")
    parser.add_argument("--python-calls", action="store_true", help="also count Python calls under cProfile")
    parser.add_argument("--peer", action="append", default=[], help="a peer (squid, ats; floor, floor-cb)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--access-log",
        choices=("off", "text", "json"),
        default="off",
        help="gconnect's access log while counting instructions (default off, as --access-log '')",
    )
    options = parser.parse_args()
    origin_port = free_port()
    origin = subprocess.Popen([sys.executable, "-c", ORIGIN, str(origin_port), "0"])
    work = Path(tempfile.mkdtemp(prefix="gconnect-fwd-instr-"))
    targets = [("this tree", "gconnect", REPO)]
    targets += [("baseline", "gconnect", Path(options.baseline))] if options.baseline else []
    targets += [(peer, peer, REPO) for peer in options.peer]
    result: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "requests": options.requests}
    result["extra"] = options.extra
    try:
        time.sleep(0.5)
        for label, name, root in targets:
            (work / label).mkdir()
            result[label] = count(label, name, root, origin_port, options, work / label)
    finally:
        origin.terminate()
        origin.wait(timeout=10)
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
