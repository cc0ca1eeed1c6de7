"""The dataset builder's report: length percentiles, the stats summary table and the length histogram."""

from __future__ import annotations

import math
import os

from .files import atomic_write


def percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> int:
        return v[min(len(v) - 1, int(math.floor(p * (len(v) - 1) + 0.5)))]

    return {"min": v[0], "median": q(0.5), "p90": q(0.9), "max": v[-1], "mean": round(sum(v) / len(v), 1)}


def plot_lengths(stats: dict, path: str) -> None:
    """Histogram of record lengths (long and short stacked) as a PNG, written atomically."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths = stats["_lengths"]
    fig = Figure(figsize=(7, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    data = [lengths["long"], lengths["short"]]
    all_values = lengths["long"] + lengths["short"]
    if all_values:
        lo, hi = max(1, min(all_values)), max(all_values)
        log_bins = hi / lo > 50
        if log_bins:
            import numpy as np

            bins = np.geomspace(lo, hi * 1.001, 40)
            ax.set_xscale("log")
        else:
            bins = 40
        ax.hist(data, bins=bins, stacked=True, label=["long QA", "short"], color=["#3b6ea5", "#e3a33b"])
    if stats.get("max_tokens"):
        ax.axvline(
            stats["max_tokens"], color="#b33", linestyle="--", label=f"--max-tokens {stats['max_tokens']}"
        )
    ax.set_xlabel(f"record length, {stats['length_unit']}")
    ax.set_ylabel("records")
    ax.set_title(f"{os.path.basename(stats['output'])}: {stats['records']:,} records")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def summary_markdown(stats: dict) -> str:
    lines = [
        f"**{stats['output']}**: {stats['records']:,} records ({stats['long']:,} long, {stats['short']:,} short = "
        f"{100 * stats['short_fraction']:.1f}% short, target {100 * stats['short_fraction_target']:.1f}%), seed {stats['seed']}",
        "",
        f"| source | read | kept | median {stats['length_unit']} | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for source, s in stats["sources"].items():
        lines.append(
            f"| {source} | {s['read']:,} | {s['kept']:,} | {s['lengths'].get('median', '-')} | {s['lengths'].get('max', '-')} |"
        )
    if stats["dropped"]:
        lines += ["", "dropped: " + "; ".join(f"{n:,} {why}" for why, n in stats["dropped"].items())]
    if stats["documents"]["failed"]:
        lines += ["", "documents that failed to load: " + ", ".join(stats["documents"]["failed"])]
    return "\n".join(lines)


def stats_paths(output: str) -> tuple[str, str]:
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else os.path.splitext(output)[0]
    return stem + ".stats.json", stem + ".lengths.png"
