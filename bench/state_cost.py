"""What the shared state costs a handshake, in instructions: ``python -m bench.state_cost``.

``bench.instructions`` counts one tunnel with the default options, where no
per-address limit is set and nothing is counted per address. This runs the
same count (callgrind, the difference of two runs) for this tree and a
baseline with ``--max-clients-per-ip`` set (the per-address gauge counted in
the shared table, against the dict the baseline kept), and for this tree with
``--state-dir`` too (the keeper's thread exists). One process: a worker of
``--workers N`` pays one more row read per check (timeit figures in
docs/performance.rst).

Writes ``shared-state-handshake-cost.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.harness.trees import extract

from .instructions import count
from .pools import REPO, echo_server

LIMIT = ("--max-clients-per-ip", "1000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit before the shared state")
    parser.add_argument("--tunnels", type=int, default=200)
    parser.add_argument("--extra", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    options = parser.parse_args()
    target = f"127.0.0.1:{echo_server()}"
    before = extract(options.baseline)
    work = Path(tempfile.mkdtemp(prefix="gconnect-state-cost-"))
    state_dir = work / "state"
    rows = (
        (f"at {options.baseline}, per-address limit", before, LIMIT),
        ("this tree, per-address limit", REPO, LIMIT),
        ("this tree, per-address limit, --state-dir", REPO, (*LIMIT, "--state-dir", str(state_dir))),
        (f"at {options.baseline}, defaults", before, ()),
        ("this tree, defaults", REPO, ()),
    )
    figures = {}
    try:
        for n, (name, root, extra) in enumerate(rows):
            small = count(root, target, options.tunnels, work / f"{n}-small.out", extra)
            large = count(root, target, options.tunnels + options.extra, work / f"{n}-large.out", extra)
            figures[name] = {"small": small, "large": large, "per_tunnel": round((large - small) / options.extra)}
    finally:
        shutil.rmtree(before, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "baseline": options.baseline,
        "tunnels": options.tunnels,
        "extra": options.extra,
        "figures": figures,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "shared-state-handshake-cost.json").write_text(json.dumps(result, indent=2) + "\n")
    first = figures[rows[0][0]]["per_tunnel"]
    lines = [
        "# What the shared state costs a tunnel (callgrind, user space, one process)",
        "",
        f"{result['when']}; ({options.tunnels} + {options.extra}) - {options.tunnels} sequential tunnels"
        f" (`python -m bench.state_cost --baseline {options.baseline}`).",
        "",
        "| tree and options | instructions per tunnel | against the first row |",
        "|---|---:|---:|",
        *(f"| {name} | {f['per_tunnel']:,} | {f['per_tunnel'] / first:.3f} |" for name, f in figures.items()),
    ]
    (options.out / "shared-state-handshake-cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
