"""Instructions per tunnel, this tree against another commit: ``python -m bench.instructions``.

CPU time on a shared 2-core machine moves by tens of percent between runs;
the number of instructions a process executes for the same work does not.
Each proxy runs under ``valgrind --tool=callgrind`` with instrumentation off
until it listens; then it is switched on (``callgrind_control -i on``), the
proxy serves ``--tunnels`` sequential tunnels (CONNECT, the 200, 16 bytes
echoed, close) and stops. Two runs per tree, of ``--tunnels`` and of
``--tunnels`` + ``--extra``: their difference divided by ``--extra`` is the
instruction count of one tunnel, the fixed costs (start of counting,
shutdown) cancelled. Everything the process executes counts, the
interpreter, gevent's C loop and libc included, but not the kernel.

``--floor`` compares this tree with ``bench/floor.py`` (the least a gevent
CONNECT proxy does) instead of another commit: what the proxy's own Python
costs above what gevent itself costs a tunnel.

Writes ``NAME.json`` and ``NAME.md`` to ``--out`` (``--name``, by default
``instructions``, or ``instructions-vs-floor`` with ``--floor``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.targets import FLOOR_TARGETS
from bench.harness.trees import extract
from gconnect.testing.process import ProxyProcess, free_port

from .pools import PAYLOAD, REPO, echo_server, tunnels

TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
#: Starting the interpreter under callgrind takes a while, even uninstrumented.
START_UNDER_VALGRIND_S = 180.0


def count(root: Path, target: str, n: int, out: Path, extra: tuple[str, ...] = (), payload: bytes = PAYLOAD) -> int:
    """Instructions the proxy from *root* (with *extra* serve options) executed
    serving *n* tunnels that each echo *payload*."""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    args = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
    args += ["--access-log", "", "--log-level", "warning", *extra]
    proxy = ProxyProcess(
        args, prefix=valgrind, cwd=root, env={"PYTHONPATH": str(root)}, start_timeout=START_UNDER_VALGRIND_S
    )
    try:
        tunnels(proxy.port, target, 20, payload)  # warm: first-use imports and caches, not counted
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        tunnels(proxy.port, target, n, payload)
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
    finally:
        proxy.stop(timeout=START_UNDER_VALGRIND_S)  # callgrind writes its file on the way out
    match = TOTALS.search(out.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def count_floor(target: str, n: int, out: Path, payload: bytes = PAYLOAD, variant: str = "floor") -> int:
    """Instructions bench/floor.py (as the harness's *variant* runs it) executed serving *n*
    tunnels that each echo *payload*."""
    port = free_port()
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proxy = subprocess.Popen(
        [*argv, sys.executable, "-m", "bench.floor", *FLOOR_TARGETS[variant], str(port)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_UNDER_VALGRIND_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise RuntimeError("bench/floor.py did not start under callgrind") from None
                time.sleep(0.5)
        tunnels(port, target, 20, payload)
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        tunnels(port, target, n, payload)
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
    finally:
        # The floor has no shutdown of its own: SIGTERM ends it, and callgrind writes its file then.
        proxy.terminate()
        proxy.wait(timeout=START_UNDER_VALGRIND_S)
    match = TOTALS.search(out.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def markdown(options: argparse.Namespace, result: dict) -> str:
    """The result file's Markdown: the command, one row per tree, the ratio."""
    how = f"--floor --floor-variant {options.floor_variant}" if options.floor else f"--baseline {options.baseline}"
    lines = [
        "# Instructions per tunnel (callgrind, user space)",
        "",
        f"{result['when']}; ({options.tunnels} + {options.extra}) - {options.tunnels} sequential tunnels"
        f" (`python -m bench.instructions {how}`).",
        "",
        "| tree | instructions per tunnel |",
        "|---|---:|",
        *(f"| {tree} | {f['per_tunnel']:,} |" for tree, f in result["figures"].items()),
        "",
        f"Ratio: {result['ratio']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", help="the commit to compare with")
    parser.add_argument("--floor", action="store_true", help="compare with bench/floor.py instead of a commit")
    parser.add_argument(
        "--floor-variant", choices=sorted(FLOOR_TARGETS), default="floor", help="which floor (the harness's name)"
    )
    parser.add_argument("--name", help="stem of the result files (default instructions[-vs-floor])")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--extra", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args()
    if bool(options.baseline) == options.floor:
        parser.error("give --baseline COMMIT or --floor")
    name = options.name or ("instructions-vs-floor" if options.floor else "instructions")
    target = f"127.0.0.1:{echo_server()}"
    before = None if options.floor else extract(options.baseline)
    work = Path(tempfile.mkdtemp(prefix="gconnect-callgrind-"))
    figures = {}

    def this_tree(n: int, out: Path) -> int:
        return count(REPO, target, n, out)

    def other(n: int, out: Path) -> int:
        if before is None:
            return count_floor(target, n, out, variant=options.floor_variant)
        return count(before, target, n, out)

    floor_name = " ".join(["bench/floor.py", *FLOOR_TARGETS[options.floor_variant]])
    other_name = floor_name if options.floor else f"at {options.baseline}"
    try:
        for label, counter in (("this tree", this_tree), (other_name, other)):
            small = counter(options.tunnels, work / f"{len(figures)}-small.out")
            large = counter(options.tunnels + options.extra, work / f"{len(figures)}-large.out")
            figures[label] = {"small": small, "large": large, "per_tunnel": round((large - small) / options.extra)}
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    names = list(figures)
    ratio = figures[names[0]]["per_tunnel"] / figures[names[1]]["per_tunnel"]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "baseline": floor_name if options.floor else options.baseline,
        "tunnels": options.tunnels,
        "extra": options.extra,
        "figures": figures,
        "ratio": round(ratio, 4),
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(options, result)
    (options.out / f"{name}.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
