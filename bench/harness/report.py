"""Writing a run's results: JSON (everything), Markdown (the table), PNG plots (matplotlib)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# direct should beat every proxy by at least this much, or the load generator may be what limits them.
DIRECT_MARGIN = 1.5


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def _ok_targets(results: dict) -> list[str]:
    return [name for name, entry in results["targets"].items() if entry.get("status") == "ok"]


def _case(entry: dict, workload: str, match: Callable[[dict], bool]) -> dict | None:
    cases = entry.get(workload)
    if not isinstance(cases, list):
        return None
    return next((c for c in cases if isinstance(c, dict) and match(c)), None)


def _stat(summary: dict | None, key: str) -> dict | None:
    return summary.get(key) if summary else None


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _interleaved(conditions: dict) -> str:
    return " interleaved" if conditions.get("interleaved") else ""


def _marks(summary: dict | None) -> str:
    """† a repetition saturated the load CPU; ‡ other processes took CPU during a repetition."""
    if not summary:
        return ""
    return ("†" if summary.get("load_bound") else "") + ("‡" if summary.get("disturbed") else "")


def _cell(stat: dict | None, digits: int = 0, marks: str = "") -> str:
    """median (min–max), followed by the marks of the summary it came from."""
    if not stat:
        return "—"
    text = _fmt(stat["median"], digits)
    if stat["min"] != stat["max"]:
        text += f" ({_fmt(stat['min'], digits)}–{_fmt(stat['max'], digits)})"
    return f"{text} {marks}" if marks else text


def _bulk_cell(entry: dict, direction: str, conns: int, key: str, digits: int) -> str:
    case = _case(entry, "bulk", lambda c: c["dir"] == direction and c["conns"] == conns)
    if case is None:
        return "—"
    return _cell(_stat(case["summary"], key), digits, _marks(case["summary"]))


def _rate_cell(entry: dict, conns: int, key: str, digits: int = 0) -> str:
    case = _case(entry, "rate", lambda c: c["conns"] == conns)
    if case is None:
        return "—"
    return _cell(_stat(case["summary"], key), digits, _marks(case["summary"]))


def _hold_entry(entry: dict, count: int) -> dict | None:
    return next((h for h in entry.get("hold", []) if h.get("requested") == count), None)


def _hold_cell(entry: dict, count: int, key: str) -> str:
    held = _hold_entry(entry, count)
    if held is None or "error" in held:
        return "error" if held else "—"
    if key == "held":
        alive = held.get("alive_after")
        text = f"{held['held']:,}/{count:,}"
        if held["held"] + held.get("failed", 0) < count:
            text += " (opening timed out)"
        return text if alive in (None, held["held"]) else f"{text} ({alive:,} still open)"
    if key == "rss_per_tunnel_kib":
        value = held.get(key)
        return "—" if value is None else _fmt(value, 1)
    rtt = held.get("rtt") or {}
    return _cell(_stat(rtt, key), 0, "‡" if rtt.get("disturbed") else "")


def _integrity_cell(entry: dict) -> str:
    check = entry.get("integrity")
    if check is None:
        return "—"
    if not isinstance(check, dict) or "error" in check:
        return "error"
    return f"ok ({check['seconds']:.1f} s)" if check.get("match") else "**MISMATCH**"


def table_rows(results: dict, names: list[str]) -> list[tuple[str, list[str]]]:
    """The Markdown table's rows: a label and one cell per target."""
    targets = results["targets"]
    rows: list[tuple[str, Callable[..., str]]] = []
    for conns in (1, 8):
        for direction in ("up", "down"):
            label = f"bulk MB/s, {conns} tunnel{'s' if conns > 1 else ''}, {direction}load"
            rows.append((label, lambda e, d=direction, c=conns: _bulk_cell(e, d, c, "mb_per_s", 0)))
    for direction in ("up", "down"):
        label = f"proxy CPU s per GiB, 1 tunnel, {direction}load"
        rows.append((label, lambda e, d=direction: _bulk_cell(e, d, 1, "proxy_cpu_s_per_gib", 2)))
    for direction in ("up", "down"):
        label = f"… with softirq on its core, {direction}load"
        rows.append((label, lambda e, d=direction: _bulk_cell(e, d, 1, "proxy_cpu_softirq_s_per_gib", 2)))
    for conns in (1, 64):
        rows.append((f"new tunnels/s, {conns} concurrent", lambda e, c=conns: _rate_cell(e, c, "tunnels_per_s")))
        rows.append((f"set-up p50 µs, {conns} concurrent", lambda e, c=conns: _rate_cell(e, c, "setup_p50_us")))
        rows.append((f"set-up p99 µs, {conns} concurrent", lambda e, c=conns: _rate_cell(e, c, "setup_p99_us")))
    for conns in (1, 64):
        for key, what in (("cpu", "CPU"), ("user", "… user"), ("sys", "… kernel")):
            label = f"proxy {what} ms per tunnel, {conns} concurrent"
            rows.append((label, lambda e, c=conns, k=key: _rate_cell(e, c, f"proxy_{k}_ms_per_tunnel", 3)))
    for count in results["conditions"]["hold_sizes"]:
        rows.append((f"tunnels held of {count:,}", lambda e, n=count: _hold_cell(e, n, "held")))
        rows.append(
            (f"proxy RSS KiB per tunnel, {count:,} held", lambda e, n=count: _hold_cell(e, n, "rss_per_tunnel_kib"))
        )
        rows.append((f"echo RTT p50 µs, {count:,} held", lambda e, n=count: _hold_cell(e, n, "rtt_p50_us")))
        rows.append((f"echo RTT p99 µs, {count:,} held", lambda e, n=count: _hold_cell(e, n, "rtt_p99_us")))
    size_mib = results["conditions"]["integrity_bytes"] >> 20
    rows.append((f"{size_mib} MiB both ways, sha256", _integrity_cell))
    return [(label, [cell(targets[name]) for name in names]) for label, cell in rows]


def _median(entry: dict, workload: str, match: Callable[[dict], bool], key: str) -> float:
    """The median of one figure of one target, or 0 when it was not measured."""
    stat = _stat((_case(entry, workload, match) or {}).get("summary"), key)
    return stat["median"] if stat else 0.0


def direct_margins(results: dict) -> list[str]:
    """Lines saying how far direct is ahead of the fastest proxy (the load generator's headroom)."""
    targets = results["targets"]
    direct = targets.get("direct")
    if not direct or direct.get("status") != "ok":
        return ["direct was not measured: the load generator's headroom is unknown."]
    proxies = [n for n in _ok_targets(results) if n != "direct"]
    checks: list[tuple[str, str, Callable[[dict], bool], str]] = [
        ("bulk, 1 tunnel, upload", "bulk", lambda c: c["dir"] == "up" and c["conns"] == 1, "mb_per_s"),
        ("bulk, 1 tunnel, download", "bulk", lambda c: c["dir"] == "down" and c["conns"] == 1, "mb_per_s"),
        ("new tunnels/s, 64 concurrent", "rate", lambda c: c["conns"] == 64, "tunnels_per_s"),
    ]
    lines = []
    for label, workload, match, key in checks:
        base = _median(direct, workload, match, key)
        ranked = sorted(((_median(targets[n], workload, match, key), n) for n in proxies), reverse=True)
        if not base or not ranked or not ranked[0][0]:
            continue
        best, best_name = ranked[0]
        ratio = base / best
        warn = "" if ratio >= DIRECT_MARGIN else " — **less than 1.5×: the fastest proxy may be load-bound**"
        lines.append(f"- {label}: direct {base:,.0f} is {ratio:.1f}× the fastest proxy ({best_name}){warn}")
    return lines or ["no proxy figure to compare with direct."]


@dataclass(frozen=True)
class Limit:
    """One figure of a gconnect target against the same figure of a reference in the same run."""

    label: str
    ours: str
    reference: str
    workload: str
    case: dict  # the case's fields to match: {"conns": 64}, {"dir": "up", "conns": 1}
    key: str
    wanted: float  # the ratio ours / reference that meets the limit
    at_most: bool  # True: ours should be at most wanted × the reference's (costs, latencies)


_RATE64, _RATE1 = {"conns": 64}, {"conns": 1}
#: The limits the harness reports: the floor proxy's user time, the best peers' handshake and bulk.
LIMITS = (
    Limit(
        "user ms per tunnel, 64 concurrent", "gconnect", "floor", "rate", _RATE64, "proxy_user_ms_per_tunnel", 2, True
    ),
    Limit("new tunnels/s, 64 concurrent", "gconnect", "ats", "rate", _RATE64, "tunnels_per_s", 1, False),
    Limit(
        "proxy CPU ms per tunnel, 64 concurrent", "gconnect", "ats", "rate", _RATE64, "proxy_cpu_ms_per_tunnel", 1, True
    ),
    Limit("user ms per tunnel, 64 concurrent", "gconnect", "ats", "rate", _RATE64, "proxy_user_ms_per_tunnel", 1, True),
    Limit("set-up p50 µs, 1 concurrent", "gconnect", "ats", "rate", _RATE1, "setup_p50_us", 1, True),
    Limit("set-up p50 µs, 1 concurrent", "gconnect", "tinyproxy", "rate", _RATE1, "setup_p50_us", 1, True),
    Limit("bulk MB/s, 1 tunnel, upload", "gconnect", "ats", "bulk", {"dir": "up", "conns": 1}, "mb_per_s", 1.5, False),
    Limit(
        "bulk MB/s, 1 tunnel, download", "gconnect", "ats", "bulk", {"dir": "down", "conns": 1}, "mb_per_s", 1.5, False
    ),
    Limit(
        "new tunnels/s, 64 concurrent, unpinned", "gconnect-2w", "ats-2t", "rate", _RATE64, "tunnels_per_s", 1, False
    ),
)


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}"


def limit_lines(results: dict) -> list[str]:
    """gconnect against the floor proxy and the best peers, as ratios of medians of this run."""
    targets = results["targets"]
    ok = set(_ok_targets(results))
    lines = []
    for limit in LIMITS:
        if limit.ours not in ok or limit.reference not in ok:
            continue

        def match(case: dict, want: dict = limit.case) -> bool:
            return all(case.get(k) == v for k, v in want.items())

        mine = _median(targets[limit.ours], limit.workload, match, limit.key)
        theirs = _median(targets[limit.reference], limit.workload, match, limit.key)
        if not mine or not theirs:
            continue
        ratio = mine / theirs
        met = ratio <= limit.wanted if limit.at_most else ratio >= limit.wanted
        goal = f"{'≤' if limit.at_most else '≥'} {limit.wanted:g}×"
        summaries = [
            (_case(targets[n], limit.workload, match) or {}).get("summary") for n in (limit.ours, limit.reference)
        ]
        marks = "".join(sorted(set(_marks(s) for s in summaries)))
        lines.append(
            f"- {limit.label}: {limit.ours} {_figure(mine)} against {limit.reference} {_figure(theirs)}: "
            f"**{ratio:.2f}×** (wanted {goal}: {'met' if met else 'behind'}){' ' + marks if marks else ''}"
        )
    return lines


def render_markdown(results: dict) -> str:
    """The results as a Markdown document: conditions, the table, skipped targets, notes."""
    names = _ok_targets(results)
    machine, conditions, git = results["machine"], results["conditions"], results["git"]
    out = [f"# gconnect CONNECT benchmark ({conditions['mode']} run)", ""]
    out.append(
        f"{results['started']}, git {git['revision'][:12]}{' (dirty)' if git['dirty'] else ''}; "
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, Linux {machine['kernel']}; "
        f"proxy on CPU {conditions['proxy_cpus']}, load generator and echo/sink/source server on CPU "
        f"{conditions['load_cpus']}; medians of {conditions['repetitions']}{_interleaved(conditions)} repetitions of "
        f"{conditions['seconds_per_measurement']} s, (min–max); load average "
        f"{' '.join(machine['loadavg_at_start'])} at start."
    )
    out.append("")
    versions = ", ".join(f"{n}: {results['targets'][n]['version']}" for n in names)
    out += [f"Versions: {versions}.", ""]
    out.append("| | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for label, cells in table_rows(results, names):
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"† the load generator (its processes and their softirq work) kept its CPU ≥ "
        f"{conditions['load_bound_percent']:.0f}% busy in a repetition: the figure may be "
        "the load generator's limit, not the proxy's (expected for direct, which has no proxy).  ",
        f"‡ processes outside the benchmark used ≥ {conditions['disturbed_percent']:.0f}% of a core during a "
        "repetition: the machine was shared, and the figure is likely low.",
        "",
        *interference_lines(results),
    ]
    out += ["## Load generator headroom", "", *direct_margins(results), ""]
    limits = limit_lines(results)
    if limits:
        out += ["## gconnect against the floor and the peers (medians of this run)", "", *limits, ""]
    skipped = [(n, e) for n, e in results["targets"].items() if e.get("status") != "ok"]
    if skipped:
        out += ["## Skipped", ""]
        out += [f"- **{n}**: {e.get('reason', 'unknown')}" for n, e in skipped]
        out.append("")
    notes = [(n, note) for n in names for note in results["targets"][n].get("notes", [])]
    errors = [(n, w, e) for n in names for w, e in _workload_errors(results["targets"][n])]
    if notes or errors:
        out += ["## Notes", ""]
        out += [f"- {n}: {note}" for n, note in notes]
        out += [f"- {n}: {w} failed: {e}" for n, w, e in errors]
        out.append("")
    return "\n".join(out)


def _workload_errors(entry: dict) -> list[tuple[str, str]]:
    found = []
    for workload in ("bulk", "rate", "integrity"):
        value = entry.get(workload)
        if isinstance(value, dict) and "error" in value:
            found.append((workload, value["error"]))
    for held in entry.get("hold", []):
        if "error" in held:
            found.append((f"hold {held.get('requested')}", held["error"]))
        elif held.get("first_error"):
            found.append((f"hold {held['requested']} (partly)", held["first_error"]))
    return found


def _all_reps(entry: dict) -> list[dict]:
    reps = []
    for workload in ("bulk", "rate"):
        cases = entry.get(workload)
        if isinstance(cases, list):
            reps += [r for case in cases for r in case["reps"]]
    for held in entry.get("hold", []):
        reps += held.get("rtt_reps", [])
    return reps


def interference_lines(results: dict) -> list[str]:
    """How much CPU the rest of the machine took while we measured, and who took it."""
    reps = [r for e in results["targets"].values() for r in _all_reps(e) if "other_cpu_percent" in r]
    if not reps:
        return []
    mean = sum(r["other_cpu_percent"] for r in reps) / len(reps)
    disturbed = sum(1 for r in reps if r.get("disturbed"))
    takers: dict[str, float] = {}
    for rep in reps:
        for name, seconds in rep.get("other_top", []):
            takers[name] = takers.get(name, 0.0) + seconds
    top = ", ".join(f"{n} {s:.1f} s" for n, s in sorted(takers.items(), key=lambda t: -t[1])[:4])
    return [
        f"Other processes took {mean:.0f}% of a core on average during measurements; {disturbed} of "
        f"{len(reps)} measurements were disturbed (‡)" + (f"; the largest takers: {top}." if top else "."),
        "",
    ]


README_START = ".. latest-results-start"
README_END = ".. latest-results-end"


def render_rst(results: dict, name: str = "latest", plots: bool = True) -> str:
    """The table and its conditions as reStructuredText, for bench/README.rst; name is the stem of
    the result files it points to, plots whether their PNGs exist."""
    names = _ok_targets(results)
    machine, conditions, git = results["machine"], results["conditions"], results["git"]
    lines = [
        f"{conditions['mode'].capitalize()} run of {results['started']}, git ``{git['revision'][:12]}``"
        f"{' (dirty)' if git['dirty'] else ''}: {machine['cpu_model']}, {machine['cpus']} CPUs, Linux "
        f"{machine['kernel']}; proxy on CPU {conditions['proxy_cpus']}, load on CPU {conditions['load_cpus']}; "
        f"medians of {conditions['repetitions']}{_interleaved(conditions)} repetitions of "
        f"{conditions['seconds_per_measurement']} s "
        f"(min–max). Full details: ``bench/results/{name}.md`` and ``{name}.json``.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * -",
    ]
    lines += [f"     - {target}" for target in names]
    for label, cells in table_rows(results, names):
        lines.append(f"   * - {label}")
        lines += [f"     - {cell.replace('**', '')}" for cell in cells]
    lines += ["", "† load CPU saturated; ‡ other processes used the machine during the measurement.", ""]
    lines += [line for line in interference_lines(results) if line]
    limits = limit_lines(results)
    if limits:
        lines += ["", "gconnect against the floor and the peers, medians of this run:", "", *limits]
    skipped = [(n, e) for n, e in results["targets"].items() if e.get("status") != "ok"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{n} ({e.get('reason', 'unknown')})" for n, e in skipped) + "."]
    lines.append("")
    if plots:
        lines += [f".. image:: results/{name}-{plot}.png\n" for plot in ("throughput", "tunnels-per-s", "rss")]
    return "\n".join(lines)


def update_readme(readme: Path, results: dict, name: str = "latest", plots: bool = True) -> bool:
    """Replace the block between the latest-results markers; False if the markers are missing."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _old, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n\n{render_rst(results, name, plots)}\n{README_END}{tail}")
    return True
