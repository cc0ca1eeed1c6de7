"""RULER evaluation: how much of its context window does a model really use?

RULER's synthetic tasks (Hsieh et al., 2024), generated offline from local text
(``longlora.eval.ruler_tasks``): needle-in-a-haystack variants, variable tracking and common-words
extraction (each with RULER's worked example first), frequent-words extraction, and QA with the
gold paragraph among distractor paragraphs. Every prompt is exactly ``length - max_new_tokens``
tokens under the model's tokenizer. Decoding is greedy and stops early once every expected string
is in the output (more text cannot change the score). Scores are RULER's string match:
``"scores"`` maps task -> length -> accuracy in [0, 1].

Each length's average over tasks comes with its sample count and a 95% Wilson interval. The
effective context is the longest length up to which the average stays at or above a threshold at
every measured length, against two thresholds, both reported (``"effective_contexts"``): RULER's
absolute one, 0.856 (Llama-2-7B's average at 4k in the paper; ``--threshold``), and one relative
to the model itself, 85% of its average at the shortest length (``--relative-threshold``). Each
is also computed from the intervals' lower and upper bounds, which says how sure it is.
``"effective_context"`` is the relative one, or the absolute one when ``--threshold`` is given.

Each scored sample is appended (and flushed) to a JSONL log beside ``--output``; a rerun with the
same settings skips the samples already in it, so a killed run resumes where it stopped. The
JSON result is rewritten (atomically) after every sample.

Usage (CPU example first)::

    python -m longlora.eval.ruler --model default --lengths 1k 2k 4k 8k --samples 2 \\
        --torch-dtype bfloat16 --chat-template off \\
        --output results/ruler-smollm2.json --plot docs/ruler-smollm2.png

    # Position Interpolation to 16k without fine-tuning
    python -m longlora.eval.ruler --model default --context-length 16k --lengths 1k 2k 4k 8k 16k \\
        --output results/ruler-smollm2-pi16k.json

    # a fine-tuned model on a GPU, 4k..128k, 25 samples per cell
    python -m longlora.eval.ruler --model out/merged-32k --lengths 4k 8k 16k 32k 64k 128k \\
        --samples 25 --attention flash --output results/ruler-merged.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from data_tools.errors import DataError, InputError
from longlora.eval.common import (
    add_chat_template_argument,
    add_model_arguments,
    add_output_arguments,
    check_addressable,
    emit_results,
    greedy_answer,
    load_eval_model,
    model_config_record,
    parse_lengths,
    use_chat_template,
    write_json,
)
from longlora.eval.ruler_haystack import Haystack
from longlora.eval.ruler_tasks import GENERATOR_VERSION, TASKS, Sample, make_sample, score_output

DATA = Path(__file__).resolve().parents[2] / "data"
# The two novels never trained on (data/books/README.md), and questions about their paragraphs.
DEFAULT_HAYSTACK = [
    DATA / "books" / "dev" / "austen-emma.txt",
    DATA / "books" / "heldout" / "austen-prideprejudice.txt",
]
DEFAULT_QA = DATA / "ruler" / "austen-qa.jsonl"

RULER_THRESHOLD = 0.856  # Llama-2-7B's average at 4k in the RULER paper, its bar for "effective"
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
DEFAULT_SAMPLES = 16  # per task and length: with 12 tasks, a 95% interval of about +-0.05 at 0.856


def generate(model, tokenizer, sample: Sample) -> str:
    """Greedy continuation of the sample's prompt; stops at EOS, after ``max_new_tokens``, or once
    every expected string is in the output."""
    return greedy_answer(
        model,
        tokenizer,
        sample.input_ids,
        sample.max_new_tokens,
        done=lambda text: score_output(text, sample.answers, "all") == 1.0,
    )


# --------------------------------------------------------------------------- scores


def wilson_interval(mean: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``mean`` observed over ``n`` trials (``z`` = 1.96:
    95%). For scores in [0, 1] that are not all 0 or 1, mean x (1 - mean) bounds their variance, so
    the interval is, if anything, wide. ``(0, 1)`` without samples."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    center = (mean + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def summarize(records: list[dict], tasks: list[str], lengths: list[int]) -> dict:
    """``scores`` (task -> length -> mean score), ``average`` (length -> mean over tasks, only for
    lengths where every task has a score), ``average_ci95`` (length -> 95% interval of that average)
    and ``by_length`` rows for plots and tables.

    The interval is Wilson's, over the effective number of samples of a mean of task means,
    T^2 / sum(1 / n_task) for T tasks (the total count when every task has the same count): the
    samples of one length are treated as trials of one proportion, the average."""
    cells: dict[tuple[str, int], list[float]] = {}
    for r in records:
        cells.setdefault((r["task"], r["length"]), []).append(r["score"])
    scores = {
        t: {str(n): sum(cells[t, n]) / len(cells[t, n]) for n in lengths if (t, n) in cells} for t in tasks
    }
    average, interval, by_length = {}, {}, []
    for n in lengths:
        if all((t, n) in cells for t in tasks):
            average[str(n)] = sum(scores[t][str(n)] for t in tasks) / len(tasks)
            effective_n = len(tasks) ** 2 / sum(1 / len(cells[t, n]) for t in tasks)
            interval[str(n)] = list(wilson_interval(average[str(n)], effective_n))
            by_length.append(
                {
                    "length": n,
                    "average": average[str(n)],
                    "ci95": interval[str(n)],
                    "samples": sum(len(cells[t, n]) for t in tasks),
                    "samples_per_task": min(len(cells[t, n]) for t in tasks),
                    "seconds": round(sum(r["seconds"] for r in records if r["length"] == n), 3),
                }
            )
    return {"scores": scores, "average": average, "average_ci95": interval, "by_length": by_length}


def _longest_above(values: dict[str, float], bar: float | None) -> int | None:
    """The longest length up to which every value is >= bar (None when the shortest is below it)."""
    best = None
    for n in sorted(int(k) for k in values) if bar is not None else []:
        if values[str(n)] + 1e-12 < bar:
            break
        best = n
    return best


def effective_context(
    average: dict[str, float],
    *,
    threshold: float | None = None,
    relative: float = 0.85,
    interval: dict[str, list[float]] | None = None,
) -> dict:
    """The longest length up to which the average stays >= the threshold at every measured length.

    ``threshold`` is absolute when given, else ``relative`` x the average at the shortest length.
    ``length`` is None when even the shortest length is below it, when nothing was measured, and
    when the relative threshold is 0 (a model that solves nothing at its shortest length uses none
    of its context, however flat its zero line). With ``interval`` (length -> [low, high]) the same
    rule is applied to the lower and to the upper bounds, against the same threshold:
    ``length_from_lower_bound`` is the effective context the model reaches with 95% confidence at
    each length, ``length_from_upper_bound`` the most the data allow.
    """
    lengths = sorted(int(n) for n in average)
    if threshold is None:
        value = relative * average[str(lengths[0])] if lengths else None
        kind = "relative"
    else:
        value, kind = threshold, "absolute"
    bar = value if (kind == "absolute" or value) else None
    out = {
        "length": _longest_above(average, bar),
        "threshold": value,
        "kind": kind,
        "relative": relative if kind == "relative" else None,
    }
    if interval is not None:
        common = [str(n) for n in lengths if str(n) in interval]
        out["length_from_lower_bound"] = _longest_above({k: interval[k][0] for k in common}, bar)
        out["length_from_upper_bound"] = _longest_above({k: interval[k][1] for k in common}, bar)
    return out


def effective_contexts(summary: dict, *, threshold: float | None = None, relative: float = 0.85) -> dict:
    """Both effective contexts of a summary: ``relative`` and ``absolute`` (``threshold``, RULER's
    0.856 unless given), each with the lengths from the intervals' bounds."""
    interval = summary.get("average_ci95")
    return {
        "relative": effective_context(summary["average"], relative=relative, interval=interval),
        "absolute": effective_context(
            summary["average"],
            threshold=RULER_THRESHOLD if threshold is None else threshold,
            interval=interval,
        ),
    }


def format_table(summary: dict, label: str | None = None) -> str:
    """Task x length accuracies, the average with its 95% interval and sample count per length, and
    (when the summary has them) both effective contexts."""
    lengths = [r["length"] for r in summary["by_length"]] or sorted(
        {int(n) for s in summary["scores"].values() for n in s}
    )
    rows = {r["length"]: r for r in summary["by_length"]}
    lines = [f"# {label}: RULER accuracy (rows: task, columns: length)"] if label else []
    lines.append(f"{'task':<16} " + " ".join(f"{n:>7}" for n in lengths))
    for task, row in summary["scores"].items():
        lines.append(f"{task:<16} " + " ".join(f"{row.get(str(n), float('nan')):>7.2f}" for n in lengths))
    lines.append(
        f"{'average':<16} "
        + " ".join(f"{summary['average'].get(str(n), float('nan')):>7.2f}" for n in lengths)
    )
    if rows:
        for name, i in (("95% low", 0), ("95% high", 1)):
            cells = (f"{rows[n]['ci95'][i]:>7.2f}" if n in rows else f"{'':>7}" for n in lengths)
            lines.append(f"{name:<16} " + " ".join(cells))
        lines.append(
            f"{'samples':<16} " + " ".join(f"{rows[n]['samples'] if n in rows else '':>7}" for n in lengths)
        )
    for eff in (summary.get("effective_contexts") or {}).values():
        lines.append(format_effective(eff))
    return "\n".join(lines)


def format_effective(eff: dict) -> str:
    """One line: the effective context, its threshold, and the lengths from the interval bounds."""

    def name(n):
        return "none" if n is None else str(n)

    if eff["threshold"] is None:
        return f"effective context ({eff['kind']}): none (nothing measured)"
    if eff["kind"] == "relative":
        base = eff["threshold"] / eff["relative"] if eff["relative"] else 0.0
        bar = f"average >= {eff['threshold']:.3f} = {eff['relative']:g} x {base:.3f}, the shortest length's"
    else:
        bar = f"average >= {eff['threshold']:.3f}" + (
            ", RULER's Llama-2-7B at 4k" if abs(eff["threshold"] - RULER_THRESHOLD) < 1e-9 else ""
        )
    line = f"effective context ({eff['kind']}, {bar}): {name(eff['length'])}"
    if "length_from_lower_bound" in eff:
        line += (
            f" (from the 95% bounds: {name(eff['length_from_lower_bound'])} to "
            f"{name(eff['length_from_upper_bound'])})"
        )
    return line


# --------------------------------------------------------------------------- resumable log


def read_log(path: Path, fingerprint: str) -> dict[tuple, dict]:
    """Scored samples already in the log, keyed by (task, length, index). A last line cut short by
    a kill is ignored; records written under other settings are an error (they would mix runs)."""
    done: dict[tuple, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: that sample is redone
        if rec.get("fingerprint") != fingerprint:
            raise InputError(
                f"{path} holds samples scored with other settings (model, seed, chat template, "
                "haystack or dtype differ); use another --output / --log, or delete that log to start over"
            )
        done[rec["task"], rec["length"], rec["index"]] = rec
    return done


def append_log(path: Path, record: dict) -> None:
    """Append one record and flush it to disk, so a kill loses at most the sample in progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():  # after a kill mid-line, start on a fresh line
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.eval.ruler",
        description="RULER-style synthetic tasks over a grid of lengths: accuracy per task and length, "
        "and the effective context length.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage (CPU example first)::", 1)[1],
    )
    add_model_arguments(parser)
    grid = parser.add_argument_group("grid")
    grid.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        choices=list(TASKS),
        metavar="TASK",
        help=f"tasks to run (default: all): {', '.join(TASKS)}",
    )
    grid.add_argument(
        "--lengths",
        nargs="+",
        default=["1k", "2k", "4k"],
        help="total tokens per sample (prompt + answer budget): 4096, 4k, or START:STOP:STEP",
    )
    grid.add_argument(
        "--samples",
        type=int,
        default=DEFAULT_SAMPLES,
        help=f"samples per task and length (default: {DEFAULT_SAMPLES}: with the 12 tasks, the 95%% interval "
        "of an average near 0.856 is about +-0.05; fewer give quick but wide intervals)",
    )
    grid.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="answer tokens for every task (default: each task's own, 30-64)",
    )
    grid.add_argument("--seed", type=int, default=0, help="fixes every sample (default: 0)")
    add_chat_template_argument(grid)
    grid.add_argument(
        "--haystack",
        nargs="+",
        default=None,
        help=".txt/.md/.pdf files or folders for the haystack text (default: data/books/dev/austen-emma.txt "
        "and data/books/heldout/austen-prideprejudice.txt)",
    )
    grid.add_argument(
        "--qa-data",
        default=None,
        help="JSONL of QA records for the qa task: {question, answers, paragraph} records, or BIG-bench "
        "short-QA Passage/Question records (default: data/ruler/austen-qa.jsonl)",
    )
    score = parser.add_argument_group("effective context")
    score.add_argument(
        "--threshold",
        type=float,
        default=None,
        help=f"absolute accuracy the average must keep (default: {RULER_THRESHOLD}, RULER's Llama-2-7B at 4k); "
        "giving it makes the absolute effective context the headline one",
    )
    score.add_argument(
        "--relative-threshold",
        type=float,
        default=0.85,
        help="the relative threshold: this fraction of the average at the shortest length (0.85); the "
        "headline effective context unless --threshold is given",
    )
    out = add_output_arguments(
        parser,
        output="JSON result file (rewritten after every sample)",
        plot="PNG: task x length heatmap + average vs length",
    )
    out.add_argument(
        "--log", default=None, help="per-sample JSONL log for resuming (default: OUTPUT.samples.jsonl)"
    )
    return parser


def _check_args(parser, args) -> list[int]:
    try:
        lengths = sorted(parse_lengths(args.lengths))
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error(f"--threshold is an accuracy in [0, 1], got {args.threshold}")
    if not 0 < args.relative_threshold <= 1:
        parser.error(f"--relative-threshold must be in (0, 1], got {args.relative_threshold}")
    return lengths


def load_haystack(args) -> Haystack:
    paths = args.haystack or [p for p in DEFAULT_HAYSTACK if p.exists()]
    if not paths:
        raise DataError(f"no default haystack text at {DATA / 'books'}; pass documents with --haystack")
    qa = args.qa_data or (DEFAULT_QA if DEFAULT_QA.exists() else None)
    if qa is None and "qa" in args.tasks:
        raise DataError(
            "the qa task needs --qa-data FILE.jsonl (no default file found); or leave qa out of --tasks"
        )
    if qa is not None and not Path(qa).is_file():
        raise DataError(f"--qa-data {qa}: no such file")
    return Haystack.from_paths(paths, qa if "qa" in args.tasks else None)


def main(argv: list[str] | None = None) -> int:
    from longlora.provenance import run_record

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    lengths = _check_args(parser, args)
    tasks = list(dict.fromkeys(args.tasks))
    try:
        run = _prepare(args, tasks, lengths)
    except ValueError as err:  # InputError and its subclasses are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    run["provenance"] = run_record(["-m", "longlora.eval.ruler", *argv])
    result = _run_grid(args, run, tasks, lengths)
    return emit_results(result, args, format_table(result, run["config"]["label"]))


def _prepare(args, tasks: list[str], lengths: list[int]) -> dict:
    """Load the haystack and the model, check every length and task before any generation, and read the
    samples a killed run with the same settings already scored."""
    haystack = load_haystack(args)
    model, tokenizer = load_eval_model(args)
    chat = use_chat_template(args.chat_template, tokenizer)
    for n in lengths:
        check_addressable(model.config, n, what="--lengths", context_length=args.context_length)
    for t in tasks:  # a length too short for a task fails before any generation
        make_sample(
            t,
            lengths[0],
            0,
            args.seed,
            haystack,
            tokenizer,
            chat_template=chat,
            max_new_tokens=args.max_new_tokens,
        )
    config = model_config_record(args, model)
    settings = {
        k: config[k] for k in ("model", "adapter", "context_length", "rope_type", "attention", "torch_dtype")
    }
    settings.update(
        generator=GENERATOR_VERSION,
        seed=args.seed,
        chat_template=chat,
        max_new_tokens=args.max_new_tokens,
        haystack=haystack.sources,
        qa_data=str(args.qa_data or DEFAULT_QA),
    )
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    log = Path(args.log) if args.log else (Path(args.output + ".samples.jsonl") if args.output else None)
    config.update(
        tasks=tasks,
        lengths=lengths,
        samples=args.samples,
        seed=args.seed,
        generator=GENERATOR_VERSION,
        threshold=RULER_THRESHOLD if args.threshold is None else args.threshold,
        relative_threshold=args.relative_threshold,
        chat_template=chat,
        haystack=haystack.sources,
        qa_data=str(args.qa_data or DEFAULT_QA) if "qa" in tasks else None,
        log=str(log) if log else None,
    )
    return dict(
        model=model,
        tokenizer=tokenizer,
        chat=chat,
        haystack=haystack,
        config=config,
        fingerprint=fingerprint,
        log=log,
        done=read_log(log, fingerprint) if log else {},
    )


def _run_grid(args, run: dict, tasks: list[str], lengths: list[int]) -> dict:
    """Generate and score every (task, length, sample) not scored yet, logging each one and rewriting
    ``--output`` after each; returns the result payload."""
    from tqdm.auto import tqdm

    grid = [(t, n, i) for n in lengths for i in range(args.samples) for t in tasks]
    done, log = run["done"], run["log"]
    records = [done[key] for key in grid if key in done]

    def payload() -> dict:
        summary = summarize(records, tasks, lengths)
        both = effective_contexts(summary, threshold=args.threshold, relative=args.relative_threshold)
        return {
            "kind": "ruler",
            "config": run["config"],
            "provenance": run.get("provenance"),
            **summary,
            "effective_context": both["relative" if args.threshold is None else "absolute"],
            "effective_contexts": both,
            "complete": len(records) == len(grid),
            "records": records,
        }

    todo = [key for key in grid if key not in done]
    bar = tqdm(
        total=len(grid),
        initial=len(grid) - len(todo),
        desc="ruler",
        unit="sample",
        disable=args.no_progress,
        file=sys.stderr,
    )
    with bar:
        for task, length, index in todo:
            bar.set_postfix(task=task, length=length)
            sample = make_sample(
                task,
                length,
                index,
                args.seed,
                run["haystack"],
                run["tokenizer"],
                chat_template=run["chat"],
                max_new_tokens=args.max_new_tokens,
            )
            t0 = time.perf_counter()
            output = generate(run["model"], run["tokenizer"], sample)
            record = {
                **sample.record(),
                "output": output,
                "score": score_output(output, sample.answers, sample.metric),
                "seconds": round(time.perf_counter() - t0, 3),
                "fingerprint": run["fingerprint"],
            }
            if log:
                append_log(log, record)
            records.append(record)
            if args.output:
                write_json(args.output, payload())
            bar.update(1)
    return payload()


if __name__ == "__main__":
    raise SystemExit(main())
