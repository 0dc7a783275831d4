"""bench.burst's report: the Markdown tables of one run's JSON (``python -m bench.burst``)."""

from __future__ import annotations

import statistics

from bench.burst import BULK_S, BURST_S, DISTURBED_PERCENT, FIRST_S, PROBE_TUNNELS, PUSHERS


def quiet(reps: list[dict], quiet_only: bool = True) -> list[dict]:
    """The undisturbed repetitions, or all of them when every one was disturbed
    (or when *quiet_only* is false)."""
    return ([r for r in reps if not r.get("disturbed")] or reps) if quiet_only else reps


def summary(reps: list[dict], key: str, quiet_only: bool = True) -> float:
    return statistics.median(r[key] for r in quiet(reps, quiet_only))


def every_target_has_a_quiet_rep(results: dict) -> bool:
    """Whether each target has an undisturbed repetition of everything it measured. Only then do
    the tables keep undisturbed repetitions alone: otherwise one target's single quiet repetition
    would be set against another's loaded ones, and every target's medians are over all."""
    lists = [reps for entry in results["targets"].values() if "skipped" not in entry for reps in entry.values()]
    return all(any(not r.get("disturbed") for r in reps) for reps in lists if isinstance(reps, list) and reps)


def render(results: dict) -> str:
    from_start = results.get("from_start")
    q = every_target_has_a_quiet_rep(results)
    lines = [
        f"# Echo latency through other tunnels during a burst ({results['started']})",
        "",
        f"`{results['command']}`" if "command" in results else "",
        "",
        f"{PROBE_TUNNELS} probe tunnels (their own process), {PUSHERS} pushers into "
        + ("targets that never read" if results["sink"] == "blackhole" else "a sink reading at full speed")
        + ", "
        f"{BURST_S:g} s bursts; proxy on CPU 0, the rest on CPU 1; medians of the repetitions (µs).",
        "",
        "Medians are over the repetitions no other process disturbed (other processes' CPU under "
        f"{DISTURBED_PERCENT:g}% of a core while the probe measured) when every target has one; the last column "
        "counts the disturbed ones. "
        + (
            "Here every target has one, and the disturbed are left out."
            if q
            else "Here some target has none, so "
            "every median is over all repetitions (comparable between targets, not with a quiet run's)."
        ),
        "",
    ]
    if from_start:
        lines += [
            f"The probe starts as the pushers do and runs for the whole burst; *first* is its round trips "
            f"started in the first {FIRST_S:g} s, *overall* all of them. *p99 per rep* lists each repetition's "
            "first-second p99 (ms).",
            "",
            "| target | idle p99 | first p50 | first p99 | first max | overall p50 | overall p99 | overall max "
            "| first p99 per rep (ms) | disturbed reps |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| target | idle p50 | idle p99 | burst p50 | burst p99 | burst max | disturbed reps |",
            "|---|---|---|---|---|---|---|",
        ]
    for name, entry in results["targets"].items():
        if "skipped" in entry:
            lines.append(f"| {name} | skipped: {entry['skipped']} |")
            continue
        idle, burst = entry["idle"], entry["burst"]
        disturbed = sum(bool(r.get("disturbed")) for r in idle + burst)
        counted = f"{disturbed} of {len(idle + burst)}"
        if from_start:
            cells = [summary(idle, "rtt_p99_us", q)]
            cells += [summary(burst, f"first_{k}_us", q) for k in ("p50", "p99", "max")]
            cells += [summary(burst, f"rtt_{k}_us", q) for k in ("p50", "p99", "max")]
            per_rep = ", ".join(f"{r['first_p99_us'] / 1000:.1f}" for r in burst)
            row = " | ".join(f"{c:,.0f}" for c in cells) + f" | {per_rep}"
        else:
            cells = [summary(idle, "rtt_p50_us", q), summary(idle, "rtt_p99_us", q)]
            cells += [summary(burst, k, q) for k in ("rtt_p50_us", "rtt_p99_us", "rtt_max_us")]
            row = " | ".join(f"{c:,.0f}" for c in cells)
        lines.append(f"| {name} | {row} | {counted} |")
    if any("open_burst" in e for e in results["targets"].values()):
        lines += render_probes(results, q)
    lines += render_burst_work(results, q)
    if any("bulk" in e for e in results["targets"].values()):
        lines += render_bulk(results, q)
    return "\n".join(lines) + "\n"


def render_probes(results: dict, q: bool) -> list[str]:
    """The closed-loop and open-loop probes side by side, in ms (p99.9 is absent from older runs)."""
    rate = results.get("open_loop_rate", 0)
    windows = ("first", "rtt") if results.get("from_start") else ("rtt",)
    heads = [f"{'first' if w == 'first' else 'overall'} {k}" for w in windows for k in ("p50", "p99", "p99.9", "max")]
    lines = [
        "",
        f"Closed loop (one echo at a time) against open loop ({rate:g} echoes a second on a fixed schedule over "
        f"the {PROBE_TUNNELS} probe tunnels, each timed from its scheduled send), medians in ms; *lost*: echoes "
        "not back 5 s after the last send (open loop), summed:",
        "",
        "| target | probe | idle p99 | " + " | ".join(heads) + " | lost | disturbed reps |",
        "|---|---|---|" + "---|" * len(heads) + "---|---|",
    ]
    for name, entry in results["targets"].items():
        for probe, idle, burst in (("closed", "idle", "burst"), ("open", "open_idle", "open_burst")):
            idle_reps, reps = entry.get(idle), entry.get(burst)
            if not reps:
                continue
            cells = [_ms(idle_reps, "rtt_p99_us", q)]
            cells += [_ms(reps, f"{w}_{k}_us", q) for w in windows for k in ("p50", "p99", "p999", "max")]
            lost = sum(r.get("lost", 0) for r in reps)
            disturbed = sum(bool(r.get("disturbed")) for r in idle_reps + reps)
            row = f"| {name} | {probe} | " + " | ".join(cells) + f" | {lost} | {disturbed} of {len(idle_reps + reps)} |"
            lines.append(row)
    return lines


def _ms(reps: list[dict], key: str, q: bool) -> str:
    if not all(key in r for r in reps):
        return ""
    return f"{summary(reps, key, q) / 1000:.2f}"


def render_burst_work(results: dict, q: bool) -> list[str]:
    rows = []
    for name, entry in results["targets"].items():
        reps = [r for r in entry.get("burst", ()) if "delivered_mb" in r]
        if not reps:
            continue
        moved = summary(reps, "delivered_mb", q)
        cells = [f"{moved:,.0f}", "", "", ""]
        if "proxy_user_s" in reps[0]:
            user, system = summary(reps, "proxy_user_s", q), summary(reps, "proxy_sys_s", q)
            per_gb = f"{(user + system) / (moved / 1e3):.2f}" if moved else ""
            cells[1:] = [f"{user:.2f}", f"{system:.2f}", per_gb]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "The burst's own work (medians): MB the targets received from all pushers, and the proxy's CPU "
        "seconds meanwhile:",
        "",
        "| target | MB delivered | user s | sys s | CPU s per GB delivered |",
        "|---|---|---|---|---|",
        *rows,
    ]


def render_bulk(results: dict, q: bool) -> list[str]:
    lines = [
        "",
        f"Bulk uploads into a sink reading at full speed, {BULK_S:g} s each, medians (proxy CPU from /proc):",
        "",
        "| target | tunnels | MB/s | user s/GB | sys s/GB | disturbed reps |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results["targets"].items():
        by_conns: dict[int, list[dict]] = {}
        for rep in entry.get("bulk", ()):
            by_conns.setdefault(rep.get("conns", 1), []).append(rep)
        for conns, reps in sorted(by_conns.items()):
            cells = [str(conns), f"{summary(reps, 'mb_per_s', q):,.0f}"]
            for key in ("user_s_per_gb", "sys_s_per_gb"):
                cells.append(f"{summary(reps, key, q):.3f}" if key in reps[0] else "")
            disturbed = sum(bool(r.get("disturbed")) for r in reps)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {disturbed} of {len(reps)} |")
    return lines
