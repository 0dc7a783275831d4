"""What each worker adds to a per-address check, in instructions: ``python -m bench.state_rows``.

A check reads the key in every other worker's row, so its cost grows with
``--workers``. Callgrind counts the instructions of ``ClientLimits.admit``
plus ``release`` with a per-address limit, in one process holding rows as N
workers would (the other rows hold the key, so each read finds it), against
the dict the limits used before. Each figure is the difference of two runs
(``--pairs`` + 1000 and 1000 pairs) divided by ``--pairs``, so start-up is
cancelled.

Writes ``shared-state-rows.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .pools import REPO

COLLECTED = re.compile(r"Collected : (\d+)")
CASES = ("dict", "1", "2", "4", "8")
NAMES = {"dict": "a dict (before)", "1": "shared, one process"}


def pairs(case: str, n: int) -> None:
    """Run *n* admit+release pairs with *case*'s tally ("dict" or a worker count)."""
    from gconnect.state.shared import SharedTally
    from gconnect.state.table import FIRST_WORKER_ROW, Region
    from gconnect.state.tally import LocalTally, Tally
    from gconnect.tunnel.limits import ClientLimits

    gauges: Tally = LocalTally()
    if case != "dict":
        workers = int(case)
        region = Region.create(FIRST_WORKER_ROW + workers, 8192, shared=True)
        region.hand_out(FIRST_WORKER_ROW + workers - 1)
        for row in range(FIRST_WORKER_ROW + 1, FIRST_WORKER_ROW + workers):
            SharedTally(region, "gauges", row).add("clients:127.0.0.1", 1)
        gauges = SharedTally(region, "gauges", FIRST_WORKER_ROW)
    limits = ClientLimits(100, 1000, gauges)
    for _ in range(n):
        limits.admit("127.0.0.1")
        limits.release("127.0.0.1")


def count(case: str, n: int, out: Path) -> int:
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    run = subprocess.run(
        [*valgrind, sys.executable, "-m", "bench.state_rows", "--run", case, str(n)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    match = COLLECTED.search(run.stderr)
    if match is None:
        raise RuntimeError(run.stderr[-2000:])
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--run", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.run:
        pairs(options.run[0], int(options.run[1]))
        return
    figures = {}
    with tempfile.TemporaryDirectory() as work:
        for case in CASES:
            small = count(case, 1000, Path(work) / "small.out")
            large = count(case, 1000 + options.pairs, Path(work) / "large.out")
            figures[case] = round((large - small) / options.pairs)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pairs": options.pairs, "figures": figures}
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "shared-state-rows.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Instructions per admit + release with a per-address limit (callgrind)",
        "",
        f"{result['when']}; `python -m bench.state_rows --pairs {options.pairs}`.",
        "",
        "| tally | instructions per pair |",
        "|---|---:|",
        *(f"| {NAMES.get(case, f'shared, {case} worker rows')} | {n:,} |" for case, n in figures.items()),
    ]
    (options.out / "shared-state-rows.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
