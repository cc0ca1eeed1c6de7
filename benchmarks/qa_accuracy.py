"""QA accuracy of the engine: through the pipeline, with better retrieval, and given the evidence.

Runs the questions of the development set ``benchmarks/qa_dev_set.jsonl`` (facts stated once in
real PDFs, fixtures and books, each with its evidence quote; see ``retrieval_recall.py``) through
``longlora.qa.QAEngine`` and counts an answer correct when it contains one of the gold answers
under the strict rule of ``qa_scoring.py`` (whole tokens; an answer naming several candidates is wrong;
the lenient rule is kept beside it in every row). Each question runs in up to three
modes with the same model, prompt and token budget:

- ``pipeline``: the engine on the whole document (its own fit strategy and retrieval: for
  ``retrieve``, ``longlora.retrieval.PassageIndex`` with the profile's window size);
- ``windows``: ``PassageIndex`` with the config's window size picks the passages outside the engine,
  and the engine reads only them (to compare window sizes without changing the engine);
- ``evidence``: the engine reads the budget's worth of tokens centred on the evidence quote: a
  reference for what retrieval could give this model, not a bound (one sampled answer per question, and
  the pipeline's passages sometimes serve the model better). A two-passage question gets half the
  budget centred on each of its two quotes (``evidence2``), joined by the gap marker (one span when they
  overlap). An absent question (the document does not answer it) has no evidence: its reference reading
  is the document's first budget of tokens, the title page and opening where a reader would look to
  learn what a document covers (``evidence_spans``).

Answers are graded by ``qa_scoring.grade``: the strict rule, with the rules of the kinds users ask
first (``about``, ``author``, ``two-passage``, ``absent``). Every row carries its question's split and
kind; the summary gives the counts per split and document type, and a second table per kind and split,
so a tuning run is read on the dev split without looking at held-out answers one by one (``--split dev``
runs only the dev split; the progress lines on stderr show a held-out answer's mark, never its text).

It also counts degenerate answers (echoing the prompt's "Now the material ends." / "Below is", or
repeating a phrase). With ``--qa-set benchmarks/qa_set.jsonl`` (no evidence quotes) only
``pipeline`` runs; that grid picked the bundled model's profile (``data_tools.profiles``).

Usage (CPU; results are appended to --out and reused on rerun, so an interrupted run resumes;
pipeline answers are reused only when they were given with the engine's current retrieval)::

    python benchmarks/qa_accuracy.py                                   # dev set, bundled model profile
    python benchmarks/qa_accuracy.py --limit 6 --modes pipeline evidence
    python benchmarks/qa_accuracy.py --split dev                       # tuning: the dev split only
    python benchmarks/qa_accuracy.py --qa-set benchmarks/qa_set.jsonl --configs retrieve:1024:256 truncate-end:4096
    python benchmarks/qa_accuracy.py --model ./merged-32k --configs retrieve:full --modes pipeline

A config is ``strategy[:budget[:passage_tokens[:repetition_penalty[:no_repeat_ngram[:lead_tokens]]]]][@prompt_style][+P/L...]``;
budget ``full`` means the whole context window; prompt styles are ``data_tools.prompts.PROMPT_STYLES``;
each ``+P/L`` adds a retrieval reading (P-token passages, the first L tokens kept) whose answer is compared
with the others' (``longlora.qa.readings``; the profile's ``alternate_readings``).
Strategy ``whole[/STYLE]`` is ``retrieve`` with the profile's whole-document mode: a document that fits
the window goes in whole, in STYLE (default the paper's template); ``--fitting-only`` keeps the
questions on such documents (to compare whole-document answers with retrieval on the same questions)::

    python benchmarks/qa_accuracy.py --model out/smollm2-16k/merged --fitting-only --modes pipeline \
        --configs whole:256:64:1.0:4@brief whole/brief:256:64:1.0:4@brief retrieve:256:64:1.0:4@brief
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

from qa_scoring import grade, grade_lenient  # noqa: E402
from retrieval_recall import KINDS, TYPES, evidence_key, quotes, shared_root  # noqa: E402

DEFAULT_SET = HERE / "qa_dev_set.jsonl"
# Real documents live in shared/fixtures beside the repository; LONGLORA_FIXTURES overrides.
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or HERE.parents[1] / "shared" / "fixtures")
MODES = ("pipeline", "windows", "evidence")
# The bundled model's profile (data_tools.profiles: 128-token PassageIndex windows after the document's
# first 64 tokens, with 64-token and plain 128-token readings compared) through the engine,
# and the ceiling, both at its 256-token budget. ``windows`` runs (the engine reading only what
# PassageIndex picks, e.g. "windows=retrieve:256:128:1.0:4@brief") compare window sizes.
DEV_RUNS = [
    "pipeline=retrieve:256:128:1.0:4:64@brief+64/0+128/0",
    "evidence=retrieve:256:64:1.0:4@brief",
]
# The engine's retrieval, recorded with each pipeline answer: answers of an older engine are not reused.
RETRIEVAL = "passage-index"
SLACK = 16  # tokens kept free when a selection is re-read as a document (re-tokenizing may differ)
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
    whole_style: str | None = None  # "whole[/STYLE]": a document that fits the window goes in whole
    lead_tokens: int = 0  # the document's opening kept in every retrieval prompt
    # "+P/L" suffixes: further retrieval readings (passage tokens P, lead L) compared per question
    alternate_readings: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Config:
        text, *alternates = text.split("+")
        text, _, style = text.partition("@")
        parts = text.split(":")
        strategy, whole_style = parts[0], None
        if strategy.split("/")[0] == "whole":
            whole_style = strategy.partition("/")[2] or "paper"
            strategy = "retrieve"
        try:
            budget = None if len(parts) < 2 or parts[1] == "full" else int(parts[1])
            return cls(
                prompt_style=style or "paper",
                whole_style=whole_style,
                strategy=strategy,
                budget=budget,
                passage_tokens=int(parts[2]) if len(parts) > 2 else 256,
                repetition_penalty=float(parts[3]) if len(parts) > 3 else 1.0,
                no_repeat_ngram_size=int(parts[4]) if len(parts) > 4 else 0,
                lead_tokens=int(parts[5]) if len(parts) > 5 else 0,
                alternate_readings=tuple(_reading(a) for a in alternates),
            )
        except (ValueError, TypeError):
            raise SystemExit(
                f"bad config {text!r}; use strategy[:budget[:passage[:rep_penalty[:ngram[:lead]]]]]"
                "[@style][+passage/lead...]"
            ) from None

    @property
    def name(self) -> str:
        budget = "full" if self.budget is None else str(self.budget)
        strategy = self.strategy
        if self.whole_style is not None:
            strategy = "whole" + ("" if self.whole_style == "paper" else f"/{self.whole_style}")
        name = f"{strategy}:{budget}"
        if self.strategy == "retrieve":
            name += f":{self.passage_tokens}"
        if self.repetition_penalty != 1.0 or self.no_repeat_ngram_size or self.lead_tokens:
            name += f":{self.repetition_penalty:g}:{self.no_repeat_ngram_size}"
        if self.lead_tokens:
            name += f":{self.lead_tokens}"
        if self.prompt_style != "paper":
            name += f"@{self.prompt_style}"
        return name + "".join(f"+{p}/{lead}" for p, lead in self.alternate_readings)


def _reading(text: str) -> tuple[int, int]:
    """'P/L' -> (passage tokens, lead tokens)."""
    passage, sep, lead = text.partition("/")
    if not sep:
        raise ValueError(text)
    return int(passage), int(lead)


def is_correct(answer: str, item: dict) -> bool:
    """The strict rule of ``qa_scoring`` for the item's kind (whole tokens, one candidate; absent: says so)."""
    return grade(answer, item)[0]


def select_items(items: list[dict], split: str = "all", limit: int | None = None) -> list[dict]:
    """The questions of one split (``dev``, ``holdout``; ``all`` keeps every one), then the first ``limit``."""
    if split not in ("all", "dev", "holdout"):
        raise SystemExit(f"--split {split!r}: use dev, holdout or all")
    return [i for i in items if split == "all" or i.get("split") == split][:limit]


def is_degenerate(answer: str) -> bool:
    if ECHO.search(answer):
        return True
    words = answer.lower().split()
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    return len(grams) >= 4 and len(set(grams)) < 0.7 * len(grams)


def load_set(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def doc_type(item: dict) -> str:
    """The record's document type; the older QA set has none (its PDFs are papers, the rest books)."""
    return item.get("type") or ("paper" if item["doc"].endswith(".pdf") else "book")


def resolve(doc: str, fixtures: Path) -> Path:
    """A record's document: relative to the fixtures folder (older set) or to the shared folder."""
    path = fixtures / doc
    return path if path.exists() else shared_root() / doc


def evidence_char_span(text: str, quote: str) -> tuple[int, int] | None:
    """Character span in ``text`` of the evidence quote, matched as ``evidence_key`` matches."""
    kept = [i for i, c in enumerate(text) if evidence_key(c)]
    key_chars = [evidence_key(text[i]) for i in kept]
    # NFKD can turn one character into several ("ﬁ" -> "fi"): index the key by character
    owner = [k for k, piece in enumerate(key_chars) for _ in piece]
    at = "".join(key_chars).find(evidence_key(quote))
    if at < 0:
        return None
    end = at + len(evidence_key(quote)) - 1
    return kept[owner[at]], kept[owner[end]] + 1


def evidence_pages(document, item: dict) -> list[int]:
    """The pages holding the item's evidence quotes (empty when it has none, or the document no pages)."""
    pages: set[int] = set()
    for quote in quotes(item):
        span = evidence_char_span(document.text, quote)
        if span is not None:
            pages.update(document.pages_for_span(*span))
    return sorted(pages)


def cited_evidence(session, item: dict, sources) -> dict:
    """The answer's sources (pages) and their precision: the share of cited sources whose pages
    include a page of the evidence (None when the evidence has no page or nothing was cited)."""
    want = set(evidence_pages(session.document, item))
    cited = [list(s.pages) for s in sources]
    hits = [bool(want & set(pages)) for pages in cited]
    return {
        "evidence_pages": sorted(want),
        "cited_pages": cited,
        "source_precision": (sum(hits) / len(hits)) if want and hits else None,
    }


def centred_tokens(offsets, span: tuple[int, int], budget: int) -> tuple[int, int]:
    """Token span of ``budget`` tokens centred on a character span (clipped to the document)."""
    first = next(i for i, (a, b) in enumerate(offsets) if b > span[0])
    last = max(first, max(i for i, (a, b) in enumerate(offsets) if a < span[1]))
    extra = max(0, budget - (last + 1 - first))
    start = max(0, first - extra // 2)
    end = min(len(offsets), start + max(budget, last + 1 - first))
    start = max(0, end - max(budget, last + 1 - first))
    return start, end


def evidence_spans(
    offsets, spans: list[tuple[int, int]], budget: int, gap_len: int = 0
) -> list[tuple[int, int]]:
    """Token spans the ``evidence`` mode reads for an item whose quotes lie at character ``spans``.

    No quote (an absent question): the document's first ``budget`` tokens. One quote: ``budget`` tokens
    centred on it. Two quotes: half of what is left after one gap marker (``gap_len`` tokens) centred on
    each, merged into one span when they overlap or touch.
    """
    if not spans:
        return [(0, min(budget, len(offsets)))]
    if len(spans) == 1:
        return [centred_tokens(offsets, spans[0], budget)]
    half = (budget - gap_len) // 2
    (a0, a1), (b0, b1) = sorted(centred_tokens(offsets, s, half) for s in spans)
    if b0 <= a1:
        return [(a0, max(a1, b1))]
    return [(a0, a1), (b0, b1)]


def reading(engine, session, item: dict, mode: str, passage_tokens: int):
    """The session the engine answers from in this mode (a short document holding the selection)."""
    from data_tools import load_text
    from longlora.retrieval import GAP_MARKER

    if mode == "pipeline":
        return session
    budget = engine.document_budget(session, item["question"]) - SLACK
    text, offsets = session.document.text, session.offsets
    gap_len = len(engine.tokenizer(GAP_MARKER, add_special_tokens=False)["input_ids"])
    if mode == "windows":
        index = session.passage_index(passage_tokens)
        spans = index.select(item["question"], budget, separator_len=gap_len)
    else:
        chars = [evidence_char_span(text, q) for q in quotes(item)]
        if None in chars:
            raise SystemExit(
                f"{item['id']}: evidence not found in {item['doc']}; run retrieval_recall.py --check"
            )
        spans = evidence_spans(offsets, chars, budget, gap_len)
    pieces = [text[offsets[s][0] : offsets[e - 1][1]] for s, e in spans]
    document = load_text(GAP_MARKER.join(pieces), name=f"{item['id']}-{mode}")
    return engine.open_document(document, material_type=session.material_type)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model spec for longlora.models.load_model")
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    parser.add_argument(
        "--qa-set",
        type=Path,
        default=DEFAULT_SET,
        help="JSONL of {id, doc, question, answers[, evidence, type]}",
    )
    parser.add_argument(
        "--fixtures", type=Path, default=FIXTURES, help="folder holding the older set's documents"
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="configs to run (see the docstring; default depends on the set)",
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="modes to run")
    parser.add_argument(
        "--runs", nargs="+", default=None, help="explicit mode=config runs (default on the dev set: DEV_RUNS)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument(
        "--split",
        default="all",
        choices=("dev", "holdout", "all"),
        help="run only the dev split (tuning) or the held-out one (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/qa_accuracy.jsonl"), help="per-answer results"
    )
    parser.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    parser.add_argument(
        "--fitting-only",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="WINDOW",
        help="only questions whose document fits whole (with the paper's template) in the model's window, "
        "or in a WINDOW-token window (to ask a shorter-window model the same questions)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from longlora.qa import QAEngine

    items = select_items(load_set(args.qa_set), args.split, args.limit)
    # absent questions have no evidence by design; the evidence mode reads the document's opening for them
    has_evidence = all("evidence" in i or i.get("absent") for i in items)
    modes = args.modes if has_evidence else ["pipeline"]
    if args.runs or (has_evidence and args.configs is None):
        runs = [parse_run(r) for r in args.runs or DEV_RUNS]
        if not has_evidence and any(m != "pipeline" for m, _ in runs):
            raise SystemExit("windows/evidence runs need a QA set with evidence quotes (qa_dev_set.jsonl)")
    else:
        runs = [(mode, Config.parse(c)) for c in (args.configs or DEFAULT_GRID) for mode in modes]
    done: dict[tuple[str, str], dict] = {}
    if args.out.exists() and not args.fresh:
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            if row.get("model") == args.model:
                mode = row.get("mode", "pipeline")
                done[(resume_key(mode, Config.parse(row["config"]), row.get("retrieval")), row["id"])] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)

    engine = QAEngine(args.model, dtype=args.dtype, max_new_tokens=args.max_new_tokens)
    base_profile = engine.profile
    sessions = {}
    for item in items:
        if item["doc"] not in sessions:
            sessions[item["doc"]] = engine.open_document(resolve(item["doc"], args.fixtures))
    if args.fitting_only is not None:
        engine.profile = dataclasses.replace(base_profile, whole_document=True, whole_document_style="paper")
        extra = args.fitting_only - engine.context_length if args.fitting_only else 0
        fitting = {d for d, s in sessions.items() if s.num_tokens <= engine.document_budget(s, "") + extra}
        items = [i for i in items if i["doc"] in fitting]
        sessions = {d: s for d, s in sessions.items() if d in fitting}
        print(f"--fitting-only: {len(items)} questions on {len(sessions)} documents", file=sys.stderr)
    print(
        f"model {args.model}: window {engine.context_length}; documents: "
        + ", ".join(f"{d} {s.num_tokens:,} tok" for d, s in sessions.items()),
        file=sys.stderr,
    )

    rows_by_run: dict[str, list[dict]] = defaultdict(list)
    with args.out.open("a") as out:
        for mode, config in runs:
            name = run_name(mode, config.name)
            engine.profile = dataclasses.replace(
                base_profile,
                document_budget=config.budget,
                passage_tokens=config.passage_tokens,
                repetition_penalty=config.repetition_penalty,
                no_repeat_ngram_size=config.no_repeat_ngram_size,
                prompt_style=config.prompt_style,
                whole_document=config.whole_style is not None,
                whole_document_style=config.whole_style or "paper",
                lead_tokens=config.lead_tokens,
                alternate_readings=config.alternate_readings,
            )
            if mode == "windows" and config.strategy != "retrieve":
                continue
            for item in items:
                key = (resume_key(mode, config, RETRIEVAL), item["id"])
                if key in done:
                    rows_by_run[name].append(done[key])
                    continue
                start = time.perf_counter()
                session = reading(engine, sessions[item["doc"]], item, mode, config.passage_tokens)
                final = None
                for update in engine.ask(session, item["question"], strategy=config.strategy):
                    final = update
                if session is not sessions[item["doc"]]:
                    engine.close_session(session)
                row = {
                    "model": args.model,
                    "mode": mode,
                    "config": config.name,
                    "retrieval": RETRIEVAL,
                    "id": item["id"],
                    "split": item.get("split"),
                    "kind": item.get("kind"),
                    "answer": final.text,
                    "correct": is_correct(final.text, item),
                    "correct_lenient": grade_lenient(final.text, item),
                    "degenerate": is_degenerate(final.text),
                    "kept_tokens": final.fit.kept_tokens,
                    "prompt_tokens": final.fit.prompt_tokens,
                    "fits_whole": final.fit.fits_whole,
                    "readings": final.fit.readings,
                    "revised": final.revised,
                    "seconds": round(time.perf_counter() - start, 2),
                    **cited_evidence(session, item, final.sources),
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
                rows_by_run[name].append(row)
                mark = "+" if row["correct"] else ("~" if row["degenerate"] else "-")
                shown = "(held out)" if item.get("split") == "holdout" else repr(final.text[:80])
                print(f"{name:40s} {mark} {item['id']:22s} {shown}", file=sys.stderr)

    table = print_table(items, runs, rows_by_run)
    # provenance beside the per-answer rows: the command, commit, machine and date of this run, and its table
    from data_tools.files import atomic_write_text
    from longlora.provenance import run_record

    meta = {"kind": "qa-accuracy", "provenance": run_record(), "rows": str(args.out), "table": table}
    atomic_write_text(Path(f"{args.out}.meta.json"), json.dumps(meta, indent=2) + "\n")
    return 0


def _precision(rows: list[dict]) -> str:
    """Mean source precision over the answers with a paged evidence and some source, and how many."""
    values = [r["source_precision"] for r in rows if r.get("source_precision") is not None]
    return f"{sum(values) / len(values):.2f} ({len(values)})" if values else "-"


def run_name(mode: str, config: str) -> str:
    return f"{mode} {config}"


def resume_key(mode: str, config: Config, retrieval: str | None) -> str:
    """What makes a stored answer reusable: mode, config, and for the pipeline the engine's retrieval."""
    if mode == "evidence":
        # the evidence reading fits whole in the budget: the passage size plays no part
        config = dataclasses.replace(config, passage_tokens=0)
    return f"{run_name(mode, config.name)} {retrieval if mode == 'pipeline' else ''}"


def parse_run(text: str) -> tuple[str, Config]:
    mode, sep, config = text.partition("=")
    if not sep or mode not in MODES:
        raise SystemExit(f"bad run {text!r}; use MODE=CONFIG with MODE one of {', '.join(MODES)}")
    return mode, Config.parse(config)


def _ratio(rows: list[dict], ceiling: list[dict]) -> str:
    """Correct answers of ``rows`` as a share of those of the ``evidence`` reference on the same questions."""
    ids = {r["id"] for r in rows}
    reference = sum(r["correct"] for r in ceiling if r["id"] in ids)
    return f"{100 * sum(r['correct'] for r in rows) / reference:.0f}%" if reference else "-"


def print_table(items: list[dict], runs, rows_by_run: dict[str, list[dict]]) -> str:
    """Markdown tables: accuracy per run, per split and per document type, and the ratio to the
    ``evidence`` run (a noisy reference, not a bound: the pipeline can beat it), overall and on the
    held-out split; then correct answers per kind of question and split, run by run."""
    by_id = {i["id"]: i for i in items}
    types = [t for t in TYPES if any(doc_type(i) == t for i in items)]
    splits = [s for s in ("dev", "holdout") if any(i.get("split") == s for i in items)]
    lines = []
    out = lines.append
    out(
        "\n| mode | config | accuracy | "
        + " | ".join(splits + types)
        + " | vs evidence | vs evidence (holdout) | degenerate | prompt tokens | source precision |"
    )
    out("| --- " * (8 + len(splits) + len(types)) + "|")
    for rows in rows_by_run.values():  # rows kept from before the strict rule are scored again
        for r in rows:
            if r["id"] in by_id and "answer" in r:
                r["correct"] = is_correct(r["answer"], by_id[r["id"]])
    table: list[tuple[str, list[dict]]] = []
    for mode, config in runs:
        rows = [r for r in rows_by_run.get(run_name(mode, config.name), []) if r["id"] in by_id]
        if not rows:
            continue
        table.append((f"{mode} `{config.name}`", rows))
        acc = sum(r["correct"] for r in rows)
        cells = []
        for group in splits + types:
            sub = [r for r in rows if group in (by_id[r["id"]].get("split"), doc_type(by_id[r["id"]]))]
            cells.append(f"{sum(r['correct'] for r in sub)}/{len(sub)}")
        ceiling = [
            r
            for m, c in runs
            if m == "evidence" and c.budget == config.budget
            for r in rows_by_run.get(run_name(m, c.name), [])
            if r["id"] in by_id
        ]
        held = [r for r in rows if by_id[r["id"]].get("split") == "holdout"]
        degenerate = sum(r["degenerate"] for r in rows)
        prompt = sum(r["prompt_tokens"] for r in rows) / len(rows)
        out(
            f"| {mode} | `{config.name}` | {acc}/{len(rows)} ({100 * acc / len(rows):.0f}%) | "
            + " | ".join(cells)
            + f" | {_ratio(rows, ceiling)} | {_ratio(held, ceiling)} | {degenerate} | {prompt:,.0f} "
            + f"| {_precision(rows)} |"
        )
    kinds = [k for k in KINDS if any(i.get("kind") == k for i in items)]
    if kinds and table:
        out("\n| kind | " + " | ".join(f"{name} {split}" for name, _ in table for split in splits) + " |")
        out("| --- " * (1 + len(table) * len(splits)) + "|")
        for kind in kinds:
            cells = []
            for _, rows in table:
                for split in splits:
                    sub = [
                        r
                        for r in rows
                        if (by_id[r["id"]].get("kind"), by_id[r["id"]].get("split")) == (kind, split)
                    ]
                    cells.append(f"{sum(r['correct'] for r in sub)}/{len(sub)}")
            out(f"| {kind} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
