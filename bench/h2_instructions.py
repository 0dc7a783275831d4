"""HTTP/2 bulk instructions: one CONNECT stream against one HTTP/1.1 TLS tunnel, per MiB.

``python -m bench.h2_instructions [--mib 32] [--baseline COMMIT]``: CPU seconds per GB
(``bench/h2_bulk.py``) move with the load of this shared machine; the instructions a
process executes for the same work do not. Each tree's gconnect runs under
``valgrind --tool=callgrind``, instrumentation off until it listens and has moved a
MiB of each kind (bench/instructions.py's way); then for each transfer, ``--mib`` MiB
down and up over an HTTP/2 stream and over an HTTP/1.1 TLS tunnel (bench/h2.py's
clients), the counts are zeroed, counted around the transfer and dumped.
Everything the process executes counts (interpreter, gevent's loop, OpenSSL's
encryption, libc), the kernel not. Writes ``h2-bulk-instructions.json`` and ``.md``
to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.h2 import RESULTS, Target, bulk_round, start_proxy
from bench.harness.trees import extract
from bench.tlsproxy import tls_files, tree_commit, tree_options, write_results

from .instructions import START_UNDER_VALGRIND_S

TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)
KINDS = ("bulk_h2", "bulk_h1", "up_h2", "up_h1")


def callgrind(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True, timeout=300)


def counted(work_dir: Path) -> Callable[[int, Callable[[], None]], dict]:
    """A bulk_round measure: the instructions the proxy executed while *work* ran."""

    def measure(pid: int, work: Callable[[], None]) -> dict:
        callgrind(pid, "-z")
        callgrind(pid, "-i", "on")
        work()
        callgrind(pid, "-i", "off")
        callgrind(pid, "-d")
        newest = max(work_dir.glob("callgrind.out*"), key=os.path.getmtime)
        match = TOTALS.search(newest.read_text(errors="replace"))
        if match is None:
            raise RuntimeError(f"no totals in {newest}")
        return {"instructions": int(match.group(1))}

    return measure


def one_tree(root: Path | None, pem: tuple[str, str], context: ssl.SSLContext, mib: int) -> dict:
    """Instructions per MiB of each kind through the gconnect of *root* (None: this tree)."""
    work_dir = Path(tempfile.mkdtemp(prefix="gconnect-h2-callgrind-"))
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work_dir}/callgrind.out"]
    proxy = start_proxy(*pem, prefix=valgrind, start_timeout=START_UNDER_VALGRIND_S, **tree_options(root))
    try:
        warm = (Target("source", 1 << 20), Target("sink", 1 << 20))
        bulk_round(proxy.pid, proxy.port, context, warm, 1 << 20)  # first-use imports and caches: not counted
        size = mib << 20
        samples = bulk_round(
            proxy.pid, proxy.port, context, (Target("source", size), Target("sink", size)), size, counted(work_dir)
        )
    finally:
        proxy.stop(timeout=START_UNDER_VALGRIND_S)
        shutil.rmtree(work_dir, ignore_errors=True)
    figures = {kind: round(samples[kind]["instructions"] / mib) for kind in KINDS}
    for way in ("bulk", "up"):
        figures[f"{way}_ratio"] = round(figures[f"{way}_h2"] / figures[f"{way}_h1"], 3)
    return figures


def run(mib: int, baseline: str | None) -> dict:
    pem, context = tls_files()
    result: dict = {"mib": mib, "trees": {f"this tree {tree_commit()}": one_tree(None, pem, context, mib)}}
    if baseline:
        root = extract(baseline)
        try:
            result["trees"][f"gconnect-base {baseline}"] = one_tree(root, pem, context, mib)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# HTTP/2 stream against HTTP/1.1 TLS tunnel: proxy instructions per MiB ({result['mib']} MiB each way)",
        "",
        "callgrind, user space (interpreter, gevent, OpenSSL, libc); one transfer of each kind per tree.",
        "",
        "| tree | download h2 | download h1 TLS | ratio | upload h2 | upload h1 TLS | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in result["trees"].items():
        lines.append(
            f"| {name} | {f['bulk_h2']:,} | {f['bulk_h1']:,} | {f['bulk_ratio']} "
            f"| {f['up_h2']:,} | {f['up_h1']:,} | {f['up_ratio']} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--baseline", help="commit whose gconnect is counted too (before and after)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    result = run(args.mib, args.baseline)
    write_results(args.out, "h2-bulk-instructions", result, markdown(result))


if __name__ == "__main__":
    main()
