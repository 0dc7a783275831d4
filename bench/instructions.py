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

Writes ``instructions.json`` and ``instructions.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness.trees import extract
from gconnect.testing.process import ProxyProcess

from .pools import REPO, echo_server, tunnels

TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
#: Starting the interpreter under callgrind takes a while, even uninstrumented.
START_UNDER_VALGRIND_S = 180.0


def count(root: Path, target: str, n: int, out: Path) -> int:
    """Instructions the proxy from *root* executed serving *n* tunnels."""
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    args = ["--listen", "127.0.0.1:0", "--allow-port", "1-65535", "--allow-dest", "127.0.0.0/8"]
    args += ["--access-log", "", "--log-level", "warning"]
    proxy = ProxyProcess(
        args, prefix=valgrind, cwd=root, env={"PYTHONPATH": str(root)}, start_timeout=START_UNDER_VALGRIND_S
    )
    try:
        tunnels(proxy.port, target, 20)  # warm: first-use imports and caches, not counted
        subprocess.run(["callgrind_control", "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        tunnels(proxy.port, target, n)
        subprocess.run(["callgrind_control", "-i", "off", str(proxy.pid)], check=True, capture_output=True)
    finally:
        proxy.stop(timeout=START_UNDER_VALGRIND_S)  # callgrind writes its file on the way out
    match = TOTALS.search(out.read_text(errors="replace"))
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare with")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--extra", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args()
    target = f"127.0.0.1:{echo_server()}"
    before = extract(options.baseline)
    work = Path(tempfile.mkdtemp(prefix="gconnect-callgrind-"))
    figures = {}
    try:
        for name, root in (("this tree", REPO), (f"at {options.baseline}", before)):
            small = count(root, target, options.tunnels, work / f"{len(figures)}-small.out")
            large = count(root, target, options.tunnels + options.extra, work / f"{len(figures)}-large.out")
            figures[name] = {"small": small, "large": large, "per_tunnel": round((large - small) / options.extra)}
    finally:
        shutil.rmtree(before, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    names = list(figures)
    ratio = figures[names[0]]["per_tunnel"] / figures[names[1]]["per_tunnel"]
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "baseline": options.baseline,
        "tunnels": options.tunnels,
        "extra": options.extra,
        "figures": figures,
        "ratio": round(ratio, 4),
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "instructions.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Instructions per tunnel (callgrind, user space)",
        "",
        f"{result['when']}; ({options.tunnels} + {options.extra}) - {options.tunnels} sequential tunnels"
        f" (`python -m bench.instructions --baseline {options.baseline}`).",
        "",
        "| tree | instructions per tunnel |",
        "|---|---:|",
        *(f"| {name} | {f['per_tunnel']:,} |" for name, f in figures.items()),
        "",
        f"Ratio: {ratio:.3f}.",
    ]
    (options.out / "instructions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
