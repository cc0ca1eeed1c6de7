"""What comparing readings costs: seconds per answer with the profile's readings against its own alone.

For the first ``--limit`` dev-split questions of ``benchmarks/qa_dev_set.jsonl`` (documents longer
than the budget, so retrieval runs), each question is answered twice by one engine, with the
profile's ``alternate_readings`` and with its own reading alone, in alternating order (the CPU is
shared: per-question ratios measured back to back, median and range). Reports the seconds to the
final answer (with readings: after the other readings and the comparison, which may revise the streamed
answer) and the single reading's seconds to its first token (the first reading streams as fast).

Usage (CPU)::

    python benchmarks/qa_readings_cost.py --limit 20 --output results/qa-readings-cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from qa_accuracy import DEFAULT_SET, FIXTURES, load_set, resolve, select_items  # noqa: E402


def timed(engine, session, question: str) -> dict:
    """Seconds to the whole answer and to its first text, and the readings compared."""
    start = time.perf_counter()
    first = None
    final = None
    for update in engine.ask(session, question):
        if first is None and update.text:
            first = time.perf_counter() - start
        final = update
    total = time.perf_counter() - start
    return {"seconds": total, "first_text_s": first or total, "readings": final.fit.readings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model spec (its profile's readings are compared)")
    parser.add_argument("--limit", type=int, default=20, help="dev questions to time")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the rows as JSON (with provenance)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from longlora.qa import QAEngine

    engine = QAEngine(args.model, dtype=args.dtype)
    several = engine.profile
    if not several.alternate_readings:
        raise SystemExit(f"{args.model}: its profile reads once (no alternate_readings); nothing to compare")
    alone = dataclasses.replace(several, alternate_readings=())
    sessions, rows = {}, []
    print(f"CPU load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for k, item in enumerate(select_items(load_set(DEFAULT_SET), "dev", None)):
        if item["doc"] not in sessions:
            sessions[item["doc"]] = engine.open_document(resolve(item["doc"], FIXTURES))
        session = sessions[item["doc"]]
        if session.num_tokens <= engine.document_budget(session, item["question"]):
            continue  # read whole: one reading either way
        if not rows:  # warm-up: the first forward passes of a process pay one-off setup
            timed(engine, session, item["question"])
        order = [("several", several), ("alone", alone)]
        row = {"id": item["id"]}
        for name, profile in order if k % 2 == 0 else order[::-1]:
            engine.profile = profile
            row[name] = timed(engine, session, item["question"])
        row["ratio"] = row["several"]["seconds"] / row["alone"]["seconds"]
        rows.append(row)
        print(
            f"{item['id']:24s} {row['several']['readings']} readings {row['several']['seconds']:.2f} s, "
            f"one {row['alone']['seconds']:.2f} s (first token {row['alone']['first_text_s']:.2f} s): "
            f"{row['ratio']:.2f}x",
            flush=True,
        )
        if len(rows) == args.limit:
            break
    ratios = [r["ratio"] for r in rows]
    summary = {
        "questions": len(rows),
        "readings": several.readings(),
        "median_seconds_several": statistics.median(r["several"]["seconds"] for r in rows),
        "median_seconds_alone": statistics.median(r["alone"]["seconds"] for r in rows),
        "median_first_token_alone": statistics.median(r["alone"]["first_text_s"] for r in rows),
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "load_average_after": os.getloadavg()[0],
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        from data_tools.files import atomic_write_text
        from longlora.provenance import run_record

        payload = {
            "kind": "qa-readings-cost",
            "provenance": run_record(),
            "model": args.model,
            **summary,
            "rows": rows,
        }
        atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
