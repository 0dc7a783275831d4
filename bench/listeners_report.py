"""The Markdown page of ``python -m bench.listeners`` (``listeners.md``)."""

from __future__ import annotations

MODES = {
    "inherited": "supervisor-owned sockets, inherited by every worker (this tree)",
    "reuseport": "a SO_REUSEPORT socket per worker, tcp_migrate_req=0 (the kernel's default)",
    "reuseport+migrate": "a SO_REUSEPORT socket per worker, tcp_migrate_req=1",
}


def _failures(entry: dict) -> str:
    failed = sum(entry["failures"].values())
    kinds = ", ".join(f"{name} {count}" for name, count in sorted(entry["failures"].items()))
    return f"{failed} of {entry['ok'] + failed:,}" + (f" ({kinds})" if kinds else "")


def _split(entry: dict) -> str:
    """Never accepted by the killed worker (queue losses) / accepted by it (its own tunnels)."""
    return f"**{entry['failed_never_accepted']}** / {entry['failed_held_by_victim']} of {entry['ok']:,} ok"


def _spread_rows(results: dict) -> list[str]:
    rows = ["| listeners | clients at once | tunnels per worker | largest share | tunnels/s |", "|---|---|---|---|---|"]
    for mode, entry in results["modes"].items():
        for run in entry.get("spread", []):
            shares = " / ".join(f"{n:,}" for n in run["per_worker"])
            rows.append(
                f"| {mode} | {run['clients']} | {shares} | {run['largest_share']:.1%} | {run['tunnels_per_s']:,} |"
            )
    return rows


def _failure_rows(results: dict) -> list[str]:
    rows = [
        "| listeners | SIGKILL | stall 250 ms, then SIGKILL | replacement accepting after (s) |",
        "|---|---|---|---|",
    ]
    for mode, entry in results["modes"].items():
        replaced = entry["kill"]["replaced_after_s"] + entry["stall_then_kill"]["replaced_after_s"]
        span = f"{min(replaced):.2f}-{max(replaced):.2f}" if replaced else "-"
        rows.append(f"| {mode} | {_split(entry['kill'])} | {_split(entry['stall_then_kill'])} | {span} |")
    return rows


def markdown(results: dict) -> str:
    c = results["conditions"]
    lines = [
        "# Listener ownership (issue 11)",
        "",
        f"`{c['command']}` on {c['date']}, git `{c['git']}` against `{c['baseline']}`, Linux {c['kernel']}, "
        f"{c['cpus']} CPUs, load average at start {' '.join(c['loadavg_at_start'])}; 2 workers, in a network "
        "namespace of its own.",
        "",
        *(f"- **{mode}**: {text}" for mode, text in MODES.items()),
        "",
        "## Accept spread",
        "",
        *_spread_rows(results),
        "",
        "## Failed new tunnels while a worker is killed",
        "",
        "8 clients open tunnels throughout; each cell: failed tunnels the killed worker had **never accepted**"
        " (lost from an accept queue: what the design decides) / failed tunnels it had accepted (its own,"
        " lost with it in any design), over all kills.",
        "",
        *_failure_rows(results),
        "",
    ]
    upgrade = results["modes"].get("inherited", {}).get("upgrade")
    if upgrade:
        took = upgrade["took_s"]
        lines += [
            "## Through SIGUSR2 upgrades (`gconnect upgrade PID`, inherited sockets)",
            "",
            f"{upgrade['upgrades']} upgrades (exit codes {upgrade['exit_codes']}), each "
            f"{min(took):.2f}-{max(took):.2f} s from running the command to its answer (the new workers accept); "
            f"failed new tunnels: {_failures(upgrade)}.",
            "",
        ]
    return "\n".join(lines)
