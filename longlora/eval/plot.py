"""Plots of evaluation result files: perplexity vs context length, passkey heatmaps.

Perplexity files (``python -m longlora.eval.perplexity --output``) become one line per file on a
shared log2 context-length axis. Passkey files (``python -m longlora.eval.passkey --output``)
become one accuracy heatmap (depth x length) per file next to an accuracy-vs-length line with
every file on it, like Figure 4 of the LongLoRA paper. The kind of each file is read from it.

Usage::

    python -m longlora.eval.plot results/ppl-a.json results/ppl-b.json -o docs/ppl.png
    python -m longlora.eval.plot results/passkey.json -o docs/passkey.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(payload: dict, index: int) -> str:
    return payload.get("config", {}).get("label") or f"run {index + 1}"


def _length_label(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _length_axis(ax, lengths: set[int]) -> None:
    """Log2 x axis with a tick at every measured length, labelled 1k, 2k, ..."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(lengths))
    ax.set_xticklabels([_length_label(n) for n in sorted(lengths)])
    ax.minorticks_off()


def _save(fig, path: str | os.PathLike) -> Path:
    """Save atomically: a reader never sees a half-written PNG."""
    from data_tools.files import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return Path(path)


def _annotate_cells(ax, grid: list[list[float]], fontsize: int) -> None:
    """Write each heatmap cell's value in it (NaN cells, lengths a run did not measure, stay blank)."""
    for r, row in enumerate(grid):
        for c, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=fontsize)


def plot_perplexity(payloads: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """One line of perplexity against context length per result payload."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ticks: set[int] = set()
    for i, payload in enumerate(payloads):
        rows = sorted(payload["results"], key=lambda r: r["seq_len"])
        xs = [r["seq_len"] for r in rows]
        ax.plot(xs, [r["ppl"] for r in rows], marker="o", label=_label(payload, i))
        ticks.update(xs)
    _length_axis(ax, ticks)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    protocol = payloads[0].get("config", {}).get("protocol") if payloads else None
    ax.set_title(title or f"Perplexity vs context length{f' ({protocol} protocol)' if protocol else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_passkey(payloads: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Heatmap of accuracy (depth x length) per payload, plus accuracy vs length for all payloads."""
    plt = _pyplot()
    n = len(payloads)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.8 * (n + 1), 3.8), squeeze=False, layout="constrained")
    for i, payload in enumerate(payloads):
        cells = payload["by_length_depth"]
        lengths = sorted({c["length"] for c in cells})
        depths = sorted({c["depth"] for c in cells})
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for c in cells:
            grid[depths.index(c["depth"])][lengths.index(c["length"])] = c["accuracy"]
        ax = axes[0][i]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels([_length_label(x) for x in lengths])
        ax.set_yticks(range(len(depths)))
        ax.set_yticklabels([f"{d:.0%}" for d in depths])
        ax.set_xlabel("length (tokens, prompt + answer)")
        ax.set_ylabel("key depth")
        ax.set_title(_label(payload, i))
        _annotate_cells(ax, grid, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax = axes[0][n]
    ticks: set[int] = set()
    for i, payload in enumerate(payloads):
        rows = sorted(payload["by_length"], key=lambda r: r["length"])
        ticks.update(r["length"] for r in rows)
        ax.plot(
            [r["length"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=_label(payload, i)
        )
    _length_axis(ax, ticks)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("length (tokens, prompt + answer)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Passkey retrieval accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_ruler(payloads: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Task x length accuracy heatmap per ruler result, plus the average vs length for all of them."""
    plt = _pyplot()
    n = len(payloads)
    tasks_max = max(len(p["scores"]) for p in payloads)
    fig, axes = plt.subplots(
        1, n + 1, figsize=(5.2 * (n + 1), 0.32 * tasks_max + 2.2), squeeze=False, layout="constrained"
    )
    for i, p in enumerate(payloads):
        tasks = list(p["scores"])
        lengths = sorted({int(k) for row in p["scores"].values() for k in row})
        grid = [[p["scores"][t].get(str(x), float("nan")) for x in lengths] for t in tasks]
        ax = axes[0][i]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [_length_label(x) for x in lengths])
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_xlabel("length (tokens, prompt + answer)")
        ax.set_title(p["config"]["label"])
        _annotate_cells(ax, grid, fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    ax = axes[0][n]
    ticks: set[int] = set()
    for p in payloads:
        rows = sorted(p["by_length"], key=lambda r: r["length"])
        xs = [r["length"] for r in rows]
        ticks.update(xs)
        eff = (p.get("effective_context") or {}).get("length")
        label = p["config"]["label"] + f" (effective {_length_label(eff) if eff else 'none'})"
        ax.plot(xs, [r["average"] for r in rows], marker="o", label=label)
    if ticks:
        _length_axis(ax, ticks)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("length (tokens, prompt + answer)")
    ax.set_ylabel("average accuracy over tasks")
    ax.set_title(title or "RULER average vs length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


PLOTTERS = {"perplexity": plot_perplexity, "passkey": plot_passkey, "ruler": plot_ruler}
"""The plotter of each result ``kind``; a kind without one is an error, never another kind's plot."""


def plot_results(payloads: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot result payloads of one kind with that kind's plotter; raise ValueError naming the problem."""
    kinds = sorted({str(p.get("kind")) for p in payloads})
    if len(kinds) != 1:
        raise ValueError(f"cannot mix {' and '.join(kinds)} results on one plot; make one plot per kind")
    plotter = PLOTTERS.get(kinds[0])
    if plotter is None:
        raise ValueError(
            f"no plot for results of kind {kinds[0]!r}; this command plots {', '.join(PLOTTERS)} results "
            "(for other kinds use python -m longlora.eval.report)"
        )
    return plotter(payloads, path, title=title)


def read_result_json(path: str | os.PathLike):
    """The parsed JSON of a result file; ValueError naming the file and the fix when it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such result file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a JSON result file ({err}); pass files written with --output"
        ) from None


def load_result(path: str | os.PathLike) -> dict:
    path = Path(path)
    payload = read_result_json(path)
    if not isinstance(payload, dict) or "kind" not in payload:
        raise ValueError(
            f"{path} is not a longlora.eval result (no 'kind'); pass files written by "
            "longlora.eval.perplexity / passkey / ruler --output"
        )
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.eval.plot",
        description="Plot perplexity, passkey or ruler result files (several runs on one figure).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage::", 1)[1],
    )
    parser.add_argument("results", nargs="+", help="JSON files written with --output")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--labels", nargs="+", default=None, help="legend names, one per result file")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.results):
        parser.error(
            f"--labels got {len(args.labels)} names for {len(args.results)} result files; give one each"
        )
    try:
        payloads = [load_result(p) for p in args.results]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for payload, label in zip(payloads, args.labels or []):
        payload.setdefault("config", {})["label"] = label
    try:
        plot_results(payloads, args.output, title=args.title)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
