"""HTTP/2 bulk CPU: one CONNECT stream against one HTTP/1.1 TLS tunnel, before and after.

``python -m bench.h2_bulk [--rounds 5] [--mib 256] [--baseline COMMIT]`` starts this tree's
gconnect (and, with ``--baseline``, the gconnect package of COMMIT beside it) with a TLS
listener pinned to CPU 0, runs the clients and targets on CPU 1 in this process (bench/h2.py's),
and measures each proxy's CPU seconds per GB, user and kernel apart, from /proc/PID/stat: one
tunnel downloading ``--mib`` MiB and one uploading as much, over an HTTP/2 stream and over an
HTTP/1.1 TLS tunnel through the same listener. Medians of ``--rounds`` rounds, the proxies and
kinds alternating within each round. Writes ``h2-bulk-cpu.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from bench.h2 import RESULTS, Target, bulk_round, start_proxy
from bench.harness.trees import extract
from bench.tlsproxy import tls_files, tree_commit, tree_options, write_results

KINDS = ("bulk_h2", "bulk_h1", "up_h2", "up_h1")


def run(rounds: int, mib: int, baseline: str | None) -> dict:
    os.sched_setaffinity(0, {1})
    pem, context = tls_files()
    size = mib * 1024 * 1024
    targets = (Target("source", size), Target("sink", size))
    proxies = {"this tree": start_proxy(*pem)}
    tree = extract(baseline) if baseline else None
    try:
        if tree is not None:
            proxies[f"gconnect-base {baseline}"] = start_proxy(*pem, **tree_options(tree))
        samples: dict[str, dict[str, list[dict]]] = {name: {kind: [] for kind in KINDS} for name in proxies}
        for _ in range(rounds):
            for name, proxy in proxies.items():
                for kind, sample in bulk_round(proxy.pid, proxy.port, context, targets, size).items():
                    samples[name][kind].append(sample)
                time.sleep(0.5)  # the proxy closes the tunnels of this round
    finally:
        for proxy in proxies.values():
            proxy.stop()
        if tree is not None:
            shutil.rmtree(tree, ignore_errors=True)
    result = summarise(samples, mib, rounds)
    result["tree"] = tree_commit()
    return result


def summarise(samples: dict[str, dict[str, list[dict]]], mib: int, rounds: int) -> dict:
    gb = mib * 1024 * 1024 / 1e9
    result: dict = {"rounds": rounds, "mib": mib, "proxies": {}, "samples": samples}
    for name, kinds in samples.items():
        figures = result["proxies"][name] = {}
        for kind, runs in kinds.items():
            user = statistics.median(s["user"] for s in runs) / gb
            system = statistics.median(s["sys"] for s in runs) / gb
            figures[kind] = {"user_s_per_gb": round(user, 3), "sys_s_per_gb": round(system, 3)}
        for way in ("bulk", "up"):
            h2, h1 = figures[f"{way}_h2"], figures[f"{way}_h1"]
            figures[f"{way}_ratio"] = {
                "user": round(h2["user_s_per_gb"] / h1["user_s_per_gb"], 2),
                "user_and_sys": round(
                    (h2["user_s_per_gb"] + h2["sys_s_per_gb"]) / (h1["user_s_per_gb"] + h1["sys_s_per_gb"]), 2
                ),
            }
    return result


def markdown(result: dict) -> str:
    lines = [
        f"# HTTP/2 stream against HTTP/1.1 TLS tunnel: proxy CPU per GB (medians of {result['rounds']} rounds)",
        "",
        f"This tree: {result.get('tree', 'unknown')}. One tunnel moving {result['mib']} MiB each way;",
        "proxy pinned to CPU 0, clients and targets on CPU 1;",
        "proxy CPU seconds per GB from /proc/PID/stat (user / kernel); ratio: HTTP/2 over HTTP/1.1.",
        "",
        "| proxy | way | HTTP/2 user / kernel | HTTP/1.1 TLS user / kernel | ratio user | ratio user+kernel |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in result["proxies"].items():
        for way, label in (("bulk", "download"), ("up", "upload")):
            h2, h1, ratio = figures[f"{way}_h2"], figures[f"{way}_h1"], figures[f"{way}_ratio"]
            lines.append(
                f"| {name} | {label} | {h2['user_s_per_gb']} / {h2['sys_s_per_gb']} "
                f"| {h1['user_s_per_gb']} / {h1['sys_s_per_gb']} | {ratio['user']} | {ratio['user_and_sys']} |"
            )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--baseline", help="commit whose gconnect runs beside this tree's (before and after)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.rounds, args.mib, args.baseline)
    write_results(args.out, "h2-bulk-cpu", result, markdown(result))


if __name__ == "__main__":
    main()
