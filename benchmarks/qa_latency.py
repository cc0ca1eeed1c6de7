"""QA latency with the bundled model: time to first token, first question vs follow-up (KV-cache reuse).

A real fixture document (the Rcpp JSS paper) is cut to 2k and 6k tokens and put whole into the
prompt (the document budget is lifted to the full 8k window). For each dtype and length it asks a
first question (prefills the whole prompt) and a follow-up (prefills only what differs, the new
question), and reports time to first token, prefill and decode tokens/s, and the follow-up/first
ratio (target: at most 0.1 at 6k). The CPU is shared, so compare ratios within one run.

Usage (CPU)::

    python benchmarks/qa_latency.py                         # fp32 and bf16, 2k and 6k tokens
    python benchmarks/qa_latency.py --dtypes bfloat16 --lengths 2048
    # an extended 16k model on a 16k-token document (time to first token of the whole-document prompt)
    python benchmarks/qa_latency.py --model out/smollm2-16k/merged --dtypes bfloat16 --lengths 15872 \
        --doc data/books/heldout/austen-prideprejudice.txt --output results/qa-latency-16k.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
# Real documents live in shared/fixtures beside the repository; LONGLORA_FIXTURES overrides.
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or HERE.parents[1] / "shared" / "fixtures")
QUESTIONS = ("Who wrote this paper?", "Which library inspired Rcpp modules?")


def run_question(engine, session, question, max_new_tokens):
    start = time.perf_counter()
    final = None
    for update in engine.ask(session, question, max_new_tokens=max_new_tokens):
        final = update
    total = time.perf_counter() - start
    ttft = final.first_token_s or total
    prefilled = final.fit.prompt_tokens - final.fit.reused_tokens
    decode_s = total - ttft
    return {
        "ttft": ttft,
        "prefilled": prefilled,
        "reused": final.fit.reused_tokens,
        "prefill_tps": prefilled / ttft,
        "decode_tps": (final.new_tokens - 1) / decode_s
        if final.new_tokens > 1 and decode_s > 0
        else float("nan"),
        "new_tokens": final.new_tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model spec")
    parser.add_argument("--doc", type=Path, default=FIXTURES / "rcpp-jss-2011.pdf", help="document to cut")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="dtypes to compare")
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 6144], help="document tokens")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit")
    parser.add_argument(
        "--output", type=Path, default=None, help="also write the rows as JSON (with provenance)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from data_tools import load_document, load_text
    from longlora.qa import QAEngine

    print(f"torch threads: {torch.get_num_threads()}; CPU load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    for dtype in args.dtypes:
        engine = QAEngine(args.model, dtype=dtype, max_new_tokens=args.max_new_tokens)
        engine.profile = dataclasses.replace(engine.profile, document_budget=None)  # whole document in
        ids = engine.open_document(load_document(args.doc)).ids
        # warm-up: the first forward pass of a process pays one-off kernel setup
        warm = engine.open_document(load_text(engine.tokenizer.decode(ids[:256])), material_type="paper")
        run_question(engine, warm, QUESTIONS[0], 4)
        for length in args.lengths:
            text = engine.tokenizer.decode(ids[:length])
            session = engine.open_document(
                load_text(text, name=f"{args.doc.name}[:{length}]"), material_type="paper"
            )
            first = run_question(engine, session, QUESTIONS[0], args.max_new_tokens)
            follow = run_question(engine, session, QUESTIONS[1], args.max_new_tokens)
            rows.append((dtype, length, first, follow))
            print(
                f"{dtype:9s} {length:5d} tok: first TTFT {first['ttft']:.2f} s ({first['prefilled']} prefilled), "
                f"follow-up TTFT {follow['ttft']:.2f} s ({follow['prefilled']} prefilled, {follow['reused']} reused)",
                flush=True,
            )
        del engine

    print(f"\nCPU load average after: {os.getloadavg()[0]:.1f}\n")
    print(
        "| dtype | document tokens | TTFT first | TTFT follow-up | follow-up / first | prefill tok/s | decode tok/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dtype, length, first, follow in rows:
        print(
            f"| {dtype} | {length:,} | {first['ttft']:.2f} s | {follow['ttft']:.2f} s | "
            f"{follow['ttft'] / first['ttft']:.3f} | {first['prefill_tps']:.0f} | "
            f"{(first['decode_tps'] + follow['decode_tps']) / 2:.1f} |"
        )
    if args.output:
        import json

        from data_tools.files import atomic_write_text
        from longlora.provenance import run_record

        payload = {
            "kind": "qa-latency",
            "provenance": run_record(),
            "model": args.model,
            "document": str(args.doc),
            "rows": [
                {"dtype": d, "document_tokens": n, "first": first, "follow_up": follow}
                for d, n, first, follow in rows
            ],
        }
        atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
    if len(args.dtypes) == 2:
        print()
        for length in args.lengths:
            a = next(r for r in rows if r[0] == args.dtypes[0] and r[1] == length)
            b = next(r for r in rows if r[0] == args.dtypes[1] and r[1] == length)
            print(
                f"{length:,} tokens: {args.dtypes[1]} prefill is {b[2]['prefill_tps'] / a[2]['prefill_tps']:.2f}x "
                f"and decode {b[2]['decode_tps'] / a[2]['decode_tps']:.2f}x the speed of {args.dtypes[0]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
