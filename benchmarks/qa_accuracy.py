"""QA accuracy of the engine per fit strategy, document budget, passage size and repetition control.

Runs the questions of ``benchmarks/qa_set.jsonl`` (short facts stated once in the fixture documents,
at varied depths) through ``longlora.qa.QAEngine`` and counts an answer correct when it contains one
of the gold answers (case-insensitive; ``"match": "word"`` entries need whole words). It also counts
degenerate answers (echoing the prompt's "Now the material ends." / "Below is", or repeating a
phrase). This is what picked ``PROFILES`` in ``longlora/qa.py`` for the bundled model.

Usage (CPU; every config runs all questions; results are appended to --out and reused on rerun)::

    python benchmarks/qa_accuracy.py                                   # the default grid
    python benchmarks/qa_accuracy.py --configs retrieve:1024:256 truncate-end:4096 --limit 10
    python benchmarks/qa_accuracy.py --model ./merged-32k --configs retrieve:full

A config is ``strategy[:budget[:passage_tokens[:repetition_penalty[:no_repeat_ngram]]]][@prompt_style]``;
budget ``full`` means the whole context window; prompt styles are ``longlora.qa.PROMPT_STYLES``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEFAULT_SET = HERE / "qa_set.jsonl"
# Real documents live in shared/fixtures beside the repository; LONGLORA_FIXTURES overrides.
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or HERE.parents[1] / "shared" / "fixtures")
DEFAULT_GRID = [
    "retrieve:256:128",
    "retrieve:512:256",
    "retrieve:1024:256",
    "retrieve:2048:256",
    "retrieve:4096:256",
    "retrieve:1024:128",
    "retrieve:1024:512",
    "retrieve:1024:256:1.2",
    "retrieve:1024:256:1.0:4",
    "truncate-end:1024",
    "truncate-end:4096",
    "truncate-middle:4096",
]
ECHO = re.compile(r"material ends|below is (a|some)|memorize the content", re.I)


@dataclasses.dataclass
class Config:
    strategy: str
    budget: int | None  # None: the whole window
    passage_tokens: int = 256
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    prompt_style: str = "paper"

    @classmethod
    def parse(cls, text: str) -> Config:
        text, _, style = text.partition("@")
        parts = text.split(":")
        try:
            budget = None if len(parts) < 2 or parts[1] == "full" else int(parts[1])
            return cls(
                prompt_style=style or "paper",
                strategy=parts[0],
                budget=budget,
                passage_tokens=int(parts[2]) if len(parts) > 2 else 256,
                repetition_penalty=float(parts[3]) if len(parts) > 3 else 1.0,
                no_repeat_ngram_size=int(parts[4]) if len(parts) > 4 else 0,
            )
        except ValueError:
            raise SystemExit(
                f"bad config {text!r}; use strategy[:budget[:passage[:rep_penalty[:ngram]]]]"
            ) from None

    @property
    def name(self) -> str:
        budget = "full" if self.budget is None else str(self.budget)
        name = f"{self.strategy}:{budget}"
        if self.strategy == "retrieve":
            name += f":{self.passage_tokens}"
        if self.repetition_penalty != 1.0 or self.no_repeat_ngram_size:
            name += f":{self.repetition_penalty:g}:{self.no_repeat_ngram_size}"
        if self.prompt_style != "paper":
            name += f"@{self.prompt_style}"
        return name


def is_correct(answer: str, gold: list[str], match: str = "substring") -> bool:
    text = answer.lower()
    for g in gold:
        g = g.lower()
        if match == "word":
            if re.search(rf"(?<![\w]){re.escape(g)}(?![\w])", text):
                return True
        elif g in text:
            return True
    return False


def is_degenerate(answer: str) -> bool:
    if ECHO.search(answer):
        return True
    words = answer.lower().split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(grams) >= 4 and len(set(grams)) < 0.7 * len(grams)


def load_set(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model spec for longlora.models.load_model")
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    parser.add_argument(
        "--qa-set", type=Path, default=DEFAULT_SET, help="JSONL of {id, doc, question, answers}"
    )
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="folder holding the documents")
    parser.add_argument(
        "--configs", nargs="+", default=DEFAULT_GRID, help="configs to run (see the docstring)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/qa_accuracy.jsonl"), help="per-answer results"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from longlora.qa import QAEngine

    configs = [Config.parse(c) for c in args.configs]
    items = load_set(args.qa_set)[: args.limit]
    done: dict[tuple[str, str], dict] = {}
    if args.out.exists() and not args.fresh:
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            if row.get("model") == args.model:
                done[(row["config"], row["id"])] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)

    engine = QAEngine(args.model, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    base_profile = engine.profile
    sessions = {}
    for item in items:
        if item["doc"] not in sessions:
            sessions[item["doc"]] = engine.open_document(args.fixtures / item["doc"])
    print(
        f"model {args.model}: window {engine.context_length}; documents: "
        + ", ".join(f"{d} {s.num_tokens:,} tok" for d, s in sessions.items()),
        file=sys.stderr,
    )

    rows_by_config: dict[str, list[dict]] = defaultdict(list)
    with args.out.open("a") as out:
        for config in configs:
            engine.profile = dataclasses.replace(
                base_profile,
                document_budget=config.budget,
                passage_tokens=config.passage_tokens,
                repetition_penalty=config.repetition_penalty,
                no_repeat_ngram_size=config.no_repeat_ngram_size,
                prompt_style=config.prompt_style,
            )
            for item in items:
                key = (config.name, item["id"])
                if key in done:
                    rows_by_config[config.name].append(done[key])
                    continue
                start = time.perf_counter()
                final = None
                for update in engine.ask(sessions[item["doc"]], item["question"], strategy=config.strategy):
                    final = update
                row = {
                    "model": args.model,
                    "config": config.name,
                    "id": item["id"],
                    "answer": final.text,
                    "correct": is_correct(final.text, item["answers"], item.get("match", "substring")),
                    "degenerate": is_degenerate(final.text),
                    "kept_tokens": final.fit.kept_tokens,
                    "prompt_tokens": final.fit.prompt_tokens,
                    "reused_tokens": final.fit.reused_tokens,
                    "seconds": round(time.perf_counter() - start, 2),
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
                rows_by_config[config.name].append(row)
                mark = "+" if row["correct"] else ("~" if row["degenerate"] else "-")
                print(f"{config.name:28s} {mark} {item['id']:22s} {final.text[:90]!r}", file=sys.stderr)

    groups = {
        "papers": lambda i: i["doc"].endswith(".pdf"),
        "novels": lambda i: not i["doc"].endswith(".pdf"),
    }
    by_id = {i["id"]: i for i in items}
    print("\n| config | accuracy | papers | novels | degenerate | mean prompt tokens |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config in configs:
        rows = [r for r in rows_by_config[config.name] if r["id"] in by_id]
        if not rows:
            continue
        acc = sum(r["correct"] for r in rows)
        parts = []
        for test in groups.values():
            sub = [r for r in rows if test(by_id[r["id"]])]
            parts.append(f"{sum(r['correct'] for r in sub)}/{len(sub)}")
        degenerate = sum(r["degenerate"] for r in rows)
        prompt = sum(r["prompt_tokens"] for r in rows) / len(rows)
        print(
            f"| `{config.name}` | {acc}/{len(rows)} ({100 * acc / len(rows):.0f}%) | {parts[0]} | {parts[1]} "
            f"| {degenerate} | {prompt:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
