"""Side-by-side report of evaluation result files: one Markdown table, one plot per metric.

Reads files written with ``--output`` by ``longlora.eval.perplexity``, ``passkey`` and ``ruler``
(the kind is read from each file), groups them by model label, and writes the "before / after
context extension" view: the base model, the model with Position Interpolation and no fine-tuning,
a fine-tuned model, each metric against context length in one table. Plots: perplexity vs length,
passkey accuracy vs length, RULER average vs length (one line per run), written beside each
other as ``PREFIX-perplexity.png``, ``PREFIX-passkey.png``, ``PREFIX-ruler.png``, plus the RULER
task x length heatmaps of every run in ``PREFIX-ruler-tasks.png``.

Usage::

    python -m longlora.eval.report results/ppl-smollm2-emma.json results/ppl-smollm2-pi16k-emma.json \\
        results/passkey-smollm2.json results/ruler-smollm2.json results/ruler-smollm2-pi16k.json \\
        --output docs/report-smollm2.md --plot-prefix docs/report-smollm2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_tools.errors import DataError
from data_tools.files import atomic_write_text
from longlora.eval.plot import _length_axis, _length_label, _pyplot, _save, plot_ruler, read_result_json

KINDS = ("perplexity", "passkey", "ruler")
# metric of each kind: (row name, better when, plot y label)
METRICS = {
    "perplexity": ("perplexity", "lower", "perplexity"),
    "passkey": ("passkey accuracy", "higher", "passkey accuracy"),
    "ruler": ("RULER average", "higher", "RULER average accuracy"),
}


def load_result(path: str | os.PathLike) -> dict:
    """A perplexity, passkey or ruler result file; DataError naming the file and the fix otherwise."""
    path = Path(path)
    try:
        payload = read_result_json(path)
    except ValueError as err:
        raise DataError(str(err)) from None
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS:
        raise DataError(
            f"{path} is not a perplexity, passkey or ruler result (its 'kind' is "
            f"{payload.get('kind') if isinstance(payload, dict) else None!r}); pass files written by "
            "python -m longlora.eval.perplexity / passkey / ruler --output"
        )
    payload.setdefault("config", {})
    payload["config"].setdefault("label", path.stem)
    return payload


def series(payload: dict) -> dict[int, float]:
    """The metric of one result against context length."""
    kind = payload["kind"]
    if kind == "perplexity":
        return {r["seq_len"]: r["ppl"] for r in payload["results"]}
    if kind == "passkey":
        return {r["length"]: r["accuracy"] for r in payload["by_length"]}
    return {int(n): v for n, v in payload["average"].items()}


def _summary(payload: dict, values: dict[int, float]) -> str:
    if not values:
        return ""
    if payload["kind"] == "perplexity":
        n = min(values, key=values.get)
        return f"best {values[n]:.2f} at {_length_label(n)}"
    if payload["kind"] == "ruler":
        eff = payload.get("effective_context") or {}
        n = eff.get("length")
        return f"effective context {_length_label(n) if n else 'none'}" + (
            "" if payload.get("complete", True) else " (partial run)"
        )
    return f"mean {sum(values.values()) / len(values):.2f}"


def _data_name(payload: dict) -> str:
    files = [Path(d.get("path", "")).stem for d in payload["config"].get("data", []) if isinstance(d, dict)]
    return f" ({', '.join(files)})" if files else ""


def markdown_table(payloads: list[dict]) -> str:
    """One table: a row per (run, metric), a column per context length, plus a summary column."""
    lengths = sorted({n for p in payloads for n in series(p)})
    header = ["model", "metric", *(_length_label(n) for n in lengths), "summary"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    order = sorted(
        range(len(payloads)), key=lambda i: (_first_seen(payloads, i), KINDS.index(payloads[i]["kind"]))
    )
    for i in order:
        p = payloads[i]
        values = series(p)
        name, better, _ = METRICS[p["kind"]]
        fmt = "{:.2f}" if p["kind"] == "perplexity" else "{:.3f}"
        cells = [fmt.format(values[n]) if n in values else "" for n in lengths]
        metric = f"{name}{_data_name(p)} ({better} is better)"
        lines.append("| " + " | ".join([p["config"]["label"], metric, *cells, _summary(p, values)]) + " |")
    return "\n".join(lines)


def _first_seen(payloads: list[dict], i: int) -> int:
    """Rows of one model stay together, in the order the model first appears on the command line."""
    label = payloads[i]["config"]["label"]
    return next(j for j, p in enumerate(payloads) if p["config"]["label"] == label)


def plot_metric(payloads: list[dict], path: str | os.PathLike, kind: str) -> Path:
    """One line per result of ``kind`` against context length."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ticks: set[int] = set()
    for p in payloads:
        values = series(p)
        xs = sorted(values)
        ax.plot(xs, [values[n] for n in xs], marker="o", label=p["config"]["label"] + _data_name(p))
        ticks.update(xs)
    _length_axis(ax, ticks)
    name, better, ylabel = METRICS[kind]
    if kind != "perplexity":
        ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name} vs context length ({better} is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.eval.report",
        description="Combine perplexity / passkey / ruler result files into one Markdown table and one plot per metric.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage::", 1)[1],
    )
    parser.add_argument("results", nargs="+", help="JSON files written with --output")
    parser.add_argument("--labels", nargs="+", default=None, help="model names, one per result file")
    parser.add_argument("--output", default=None, help="write the Markdown table to this file (also printed)")
    parser.add_argument(
        "--plot-prefix",
        default=None,
        help="write PREFIX-perplexity.png, PREFIX-passkey.png, PREFIX-ruler.png and "
        "PREFIX-ruler-tasks.png (for the kinds given)",
    )
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.results):
        parser.error(
            f"--labels got {len(args.labels)} names for {len(args.results)} result files; give one each"
        )
    try:
        payloads = [load_result(p) for p in args.results]
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for payload, label in zip(payloads, args.labels or []):
        payload["config"]["label"] = label
    table = markdown_table(payloads)
    print(table)
    if args.output:
        atomic_write_text(args.output, table + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    if args.plot_prefix:
        for kind in KINDS:
            mine = [p for p in payloads if p["kind"] == kind]
            if mine:
                out = plot_metric(mine, f"{args.plot_prefix}-{kind}.png", kind)
                print(f"wrote {out}", file=sys.stderr)
            if mine and kind == "ruler":
                out = plot_ruler(mine, f"{args.plot_prefix}-ruler-tasks.png")
                print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
