"""PNG plots of a run (matplotlib, headless): throughput, tunnels/s, and RSS against tunnels held."""

from __future__ import annotations

from pathlib import Path

from bench.harness.report import _case, _ok_targets


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a benchmark machine
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, names: list[str], series: list[tuple[str, list[dict | None]]], ylabel: str) -> None:
    """Grouped bars: one group per target, one bar per series, whiskers from min to max."""
    width = 0.8 / max(len(series), 1)
    for k, (label, stats) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        medians = [s["median"] if s else 0 for s in stats]
        low = [s["median"] - s["min"] if s else 0 for s in stats]
        high = [s["max"] - s["median"] if s else 0 for s in stats]
        bars = ax.bar(xs, medians, width, label=label, yerr=[low, high], capsize=2)
        # The numbers on the bars keep slow targets readable next to direct.
        ax.bar_label(bars, labels=[f"{m:,.0f}" if m else "" for m in medians], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    ax.legend(fontsize="small")


def _summary_stat(entry: dict, workload: str, match, key: str) -> dict | None:
    case = _case(entry, workload, match)
    return case["summary"].get(key) if case else None


def plot_throughput(results: dict, path: Path) -> None:
    plt = _pyplot()
    names = _ok_targets(results)
    targets = results["targets"]
    series = []
    for conns in (1, 8):
        for direction in ("up", "down"):
            stats = [
                _summary_stat(
                    targets[n], "bulk", lambda c, d=direction, k=conns: c["dir"] == d and c["conns"] == k, "mb_per_s"
                )
                for n in names
            ]
            series.append((f"{conns} tunnel{'s' if conns > 1 else ''}, {direction}load", stats))
    fig, ax = plt.subplots(figsize=(10, 5))
    _bars(ax, names, series, "MB/s (10^6 bytes/s)")
    ax.set_title("Bulk throughput through the proxy (median, whiskers min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tunnel_rate(results: dict, path: Path) -> None:
    plt = _pyplot()
    names = _ok_targets(results)
    targets = results["targets"]
    series = [
        (
            f"{conns} concurrent",
            [_summary_stat(targets[n], "rate", lambda c, k=conns: c["conns"] == k, "tunnels_per_s") for n in names],
        )
        for conns in (1, 64)
    ]
    fig, ax = plt.subplots(figsize=(10, 5))
    _bars(ax, names, series, "tunnels per second")
    ax.set_title("New tunnels per second: CONNECT, 64-byte echo, close")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rss(results: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in _ok_targets(results):
        points = [
            (h["held"], (h["rss_after_kib"] - h["rss_before_kib"]) / 1024)
            for h in results["targets"][name].get("hold", [])
            if "rss_after_kib" in h and h.get("held")
        ]
        if points:
            xs = [p[0] for p in sorted(points)]
            ys = [p[1] for p in sorted(points)]
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("idle tunnels held")
    ax.set_ylabel("proxy RSS growth, MiB")
    ax.set_title("Proxy memory against tunnels held")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict, out_dir: Path, prefix: str) -> list[Path]:
    """All three plots; returns the files written (none if matplotlib is missing)."""
    try:
        _pyplot()
    except ImportError:
        return []
    written = []
    for stem, draw in (("throughput", plot_throughput), ("tunnels-per-s", plot_tunnel_rate), ("rss", plot_rss)):
        path = out_dir / f"{prefix}-{stem}.png"
        draw(results, path)
        written.append(path)
    return written
