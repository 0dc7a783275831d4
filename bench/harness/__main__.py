"""python -m bench.harness [--quick] [--targets a,b,...] [--reps N] [--out DIR] ...

Runs the CONNECT benchmark of issue 4 and writes DIR/NAME.json, DIR/NAME.md and DIR/NAME-*.png
(NAME is latest unless --name says otherwise).
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness.report import render_markdown, update_readme, write_json
from bench.harness.run import Options
from bench.harness.targets import ALL_TARGETS, Environment
from bench.harness.trees import extract
from bench.harness.workloads import QuietGate, Settings
from gconnect.testing.process import cpu_list

WORKLOADS = ("bulk", "rate", "hold", "integrity")
RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


@dataclass(frozen=True)
class Preset:
    reps: int
    seconds: float
    hold_sizes: str
    rtt_rounds: int
    rtt_max_s: float


# Full run: about 25 minutes for all twelve targets; quick: about 10 (proxy.py's slow opening of held
# tunnels is a good part of both).
FULL = Preset(reps=3, seconds=3.0, hold_sizes="1000,5000,9000", rtt_rounds=2000, rtt_max_s=10.0)
QUICK = Preset(reps=2, seconds=1.5, hold_sizes="1000,5000", rtt_rounds=1000, rtt_max_s=3.0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.harness", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repetitions (a few minutes)")
    parser.add_argument(
        "--targets",
        default=",".join(
            t for t in ALL_TARGETS if t not in ("gconnect-base", "gconnect-namecheck", "floor-cb", "floor-cb1")
        ),
        help="comma-separated, from: " + ", ".join(ALL_TARGETS),
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated, from: " + ", ".join(WORKLOADS)
    )
    parser.add_argument("--reps", type=int, help="repetitions per measurement (full 3, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per timed measurement (full 3, quick 1.5)")
    parser.add_argument("--hold-sizes", help="idle tunnels to hold, comma-separated (full 1000,5000,9000)")
    parser.add_argument("--rtt-rounds", type=int, help="echo round trips per repetition while tunnels are held")
    parser.add_argument("--integrity-mib", type=int, default=256, help="MiB sent both ways for the sha256 check")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default bench/results)")
    parser.add_argument("--name", default="latest", help="stem of the result files (default latest)")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/gconnect-bench-build"))
    parser.add_argument(
        "--venv",
        type=Path,
        default=Path("/tmp/gconnect-bench-venv"),
        help="venv for proxy.py and pproxy, created if missing",
    )
    parser.add_argument("--proxy-cpus", type=cpu_list, default=frozenset({0}), help="CPUs for the proxy (default 0)")
    parser.add_argument(
        "--load-cpus",
        type=cpu_list,
        default=frozenset({1}),
        help="CPUs for the load generator and echo server (default 1)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="seconds to wait, at most, before each measurement for other processes to go quiet",
    )
    parser.add_argument(
        "--quiet-budget", type=float, default=120.0, help="seconds the whole run may spend waiting for a quiet machine"
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="bulk and rate one repetition at a time, round-robin over all targets started at once",
    )
    parser.add_argument("--no-pin", action="store_true", help="let the scheduler place everything")
    parser.add_argument("--baseline", help="commit that the gconnect-base target runs (before and after in one run)")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    defaults = QUICK if args.quick else FULL
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(unknown)} (known: {', '.join(ALL_TARGETS)})")
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    if set(workloads) - set(WORKLOADS):
        raise SystemExit(f"unknown workloads: {', '.join(sorted(set(workloads) - set(WORKLOADS)))}")
    hold_sizes = tuple(int(n) for n in (args.hold_sizes or defaults.hold_sizes).split(","))
    settings = Settings(
        seconds=args.seconds or defaults.seconds,
        reps=args.reps or defaults.reps,
        hold_sizes=hold_sizes,
        rtt_rounds=args.rtt_rounds or defaults.rtt_rounds,
        rtt_max_s=defaults.rtt_max_s,
        integrity_bytes=args.integrity_mib << 20,
        load_cpus=None if args.no_pin else args.load_cpus,
        quiet=QuietGate(args.quiet_wait, args.quiet_budget),
    )
    baseline = extract(args.baseline) if args.baseline else None
    env = Environment(venv=args.venv, proxy_cpus=None if args.no_pin else args.proxy_cpus, baseline=baseline)
    return Options(
        targets=targets,
        workloads=workloads,
        settings=settings,
        env=env,
        build_dir=args.build_dir,
        quick=args.quick,
        interleave=args.interleave,
    )


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SIGTERM (timeout, CI) would otherwise end Python without running the finally blocks that stop
    # the proxies and load generators this run started.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bench.harness.plots import write_plots
    from bench.harness.run import log, run_benchmark

    options = options_from(args)
    results = run_benchmark(options)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(results, args.out / f"{args.name}.json")
    markdown = render_markdown(results)
    written = write_plots(results, args.out, args.name)
    if not written:
        markdown += "\nPlots skipped: matplotlib is not installed (pip install matplotlib).\n"
    (args.out / f"{args.name}.md").write_text(markdown)
    if args.out.resolve() == RESULTS_DIR and args.name == "latest":
        # Only a run that publishes into bench/results also refreshes the table in bench/README.rst.
        update_readme(RESULTS_DIR.parent / "README.rst", results)
    print(markdown)
    log(f"wrote {args.out / args.name}.json, {args.name}.md and {len(written)} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
