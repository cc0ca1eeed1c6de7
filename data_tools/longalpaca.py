"""Build LongAlpaca-style datasets: long-document QA records, mixed with short instructions.

Usage:
    # documents + a QA file (JSONL: {"doc", "question" or "template", "answer", "material_type"?})
    python -m data_tools build-longalpaca --docs papers/ --qa qa.jsonl -o longalpaca.json

    # mix with short instruction data like LongAlpaca-12k (9k long : 3k short = 25% short) and keep
    # records under 16k tokens like LongAlpaca-16k-length
    python -m data_tools build-longalpaca --docs papers/ books/ --qa qa.jsonl \\
        --short ../shared/fixtures/short-qa-bigbench-sample.jsonl --short-fraction 0.25 \\
        --tokenizer default --max-tokens 16384 --seed 0 -o data/longalpaca-16k.jsonl

    # filter / convert an existing LongAlpaca file (JSON list <-> JSONL)
    python -m data_tools build-longalpaca --longalpaca LongAlpaca-12k.json --tokenizer MODEL_DIR \\
        --max-tokens 16384 -o LongAlpaca-16k-length.jsonl

Each long record is ``{"instruction": <the paper's B.6 prompt with the document and question>,
"output": <answer>}``; short records keep their ``instruction`` / ``input`` / ``output``. A QA line
may name one of the paper's question templates instead of a question (``"template": "summary"``;
``--list-templates`` shows them). ``doc`` matches a loaded document by path, file name or stem.

``--docs`` is read by ``data_tools.reader``, like every command's inputs (folders recursively with hidden
files skipped, globs, files that must be documents).

Steps, in order: load documents (a failing file is reported, its QA lines are dropped) -> read QA,
LongAlpaca and short files (a malformed line stops the run with file:line) -> drop empty
questions/answers -> de-duplicate (whitespace- and case-insensitive) -> length filter (tokens with
``--tokenizer``, else words) -> sample short records to ``--short-fraction`` of the result -> shuffle.
A fixed ``--seed`` gives the same file byte for byte.

Next to the output it writes ``NAME.stats.json`` (counts, per-source numbers, dropped records and
why, length percentiles) and ``NAME.lengths.png`` (length histogram), and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field

from .dataset_stats import percentiles, plot_lengths, stats_paths, summary_markdown
from .document import Document
from .errors import DocumentError
from .files import atomic_write_text
from .prompts import (
    MATERIAL_TYPES,
    QUESTION_TEMPLATES,
    build_instruction,
    guess_material_type,
    template_question,
)
from .reader import find_sources, read_document
from .records import RecordError, iter_records, write_records


@dataclass
class Candidate:
    """A record on its way into the dataset."""

    record: dict
    source: str  # "qa:FILE", "longalpaca:FILE", "short:FILE"
    kind: str  # "long" | "short"
    where: str  # FILE:LINE, for reports
    length: int = 0


@dataclass
class BuildConfig:
    output: str
    docs: list[str] = field(default_factory=list)
    qa: list[str] = field(default_factory=list)
    longalpaca: list[str] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    short_fraction: float = 0.25
    tokenizer: str | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    material_type: str | None = None
    drop_references: bool = False
    seed: int = 0
    format: str | None = None
    stats: bool = True

    def __post_init__(self):
        if not (self.qa or self.longalpaca or self.short):
            raise ValueError("nothing to build from: pass --qa (with --docs), --longalpaca or --short")
        if self.qa and not self.docs:
            raise ValueError("--qa needs --docs: the documents its 'doc' fields refer to")
        if not 0.0 <= self.short_fraction < 1.0:
            raise ValueError(f"--short-fraction must be in [0, 1), got {self.short_fraction}")
        for flag, value in (("--max-tokens", self.max_tokens), ("--min-tokens", self.min_tokens)):
            if value is not None and value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if self.max_tokens and self.min_tokens and self.min_tokens > self.max_tokens:
            raise ValueError(f"--min-tokens {self.min_tokens} is above --max-tokens {self.max_tokens}")
        if (self.max_tokens or self.min_tokens) and not self.tokenizer:
            raise ValueError(
                "--max-tokens/--min-tokens count tokens: pass --tokenizer (a model dir, 'default', ...)"
            )
        if self.material_type is not None and self.material_type not in MATERIAL_TYPES:
            raise ValueError(
                f"--material-type must be one of {sorted(MATERIAL_TYPES)}, got {self.material_type!r}"
            )
        if self.format is None:
            self.format = "jsonl" if self.output.endswith(".jsonl") else "json"
        if self.format not in ("json", "jsonl"):
            raise ValueError(f"--format must be json or jsonl, got {self.format!r}")


# --------------------------------------------------------------------------------------------- pure steps


def default_material_type(doc: Document) -> str:
    """The material type the QA engine also guesses (``data_tools.prompts.guess_material_type``)."""
    return guess_material_type(doc)


def document_index(docs: list[Document]) -> dict[str, Document]:
    """Keys a QA line's ``doc`` may use: absolute path, file name, file stem."""
    index: dict[str, Document] = {}
    for doc in docs:
        for key in (doc.path, doc.name, os.path.splitext(doc.name)[0]):
            if key:
                index.setdefault(key, doc)
    return index


def _lookup(index: dict[str, Document], ref: str, qa_dir: str) -> Document | None:
    for key in (
        ref,
        os.path.abspath(os.path.join(qa_dir, ref)),
        os.path.basename(ref),
        os.path.splitext(os.path.basename(ref))[0],
    ):
        if key in index:
            return index[key]
    return None


def qa_candidates(
    path: str,
    index: dict[str, Document],
    failed: set[str],
    material_type: str | None,
    dropped: Counter,
) -> list[Candidate]:
    """Long QA records from a QA file; raises ``RecordError`` (file:line) for malformed lines."""
    out = []
    source = f"qa:{os.path.basename(path)}"
    qa_dir = os.path.dirname(os.path.abspath(path))
    for lineno, rec in iter_records(path, required=("doc", "answer")):
        where = f"{path}:{lineno}"
        question, template = rec.get("question"), rec.get("template")
        if (question is None) == (template is None):
            raise RecordError(
                f"{where}: give exactly one of 'question' or 'template' (templates: {sorted(QUESTION_TEMPLATES)})"
            )
        if template is not None and template not in QUESTION_TEMPLATES:
            raise RecordError(
                f"{where}: unknown template {template!r}; choose one of {sorted(QUESTION_TEMPLATES)}"
            )
        if question is not None and not isinstance(question, str):
            raise RecordError(f"{where}: 'question' must be a string")
        mtype = rec.get("material_type", material_type)
        if mtype is not None and mtype not in MATERIAL_TYPES:
            raise RecordError(f"{where}: material_type {mtype!r} is not one of {sorted(MATERIAL_TYPES)}")
        doc = _lookup(index, rec["doc"], qa_dir)
        if doc is None:
            ref = os.path.basename(rec["doc"])
            if ref in failed or os.path.splitext(ref)[0] in failed:
                dropped["document failed to load"] += 1
                continue
            known = sorted({d.name for d in index.values()})
            raise RecordError(
                f"{where}: doc {rec['doc']!r} is not one of the --docs documents "
                f"({', '.join(known[:8])}{', ...' if len(known) > 8 else ''}); fix the name or add the file"
            )
        mtype = mtype or default_material_type(doc)
        if template is not None:
            question = template_question(template, mtype)
        if not question.strip():
            dropped["empty question"] += 1
            continue
        if not rec["answer"].strip():
            dropped["empty answer"] += 1
            continue
        record = {
            "instruction": build_instruction(doc.text, question, mtype),
            "output": rec["answer"].strip(),
        }
        out.append(Candidate(record, source, "long", where))
    return out


def record_candidates(path: str, kind: str, dropped: Counter) -> list[Candidate]:
    """Records from a LongAlpaca (``kind`` "long") or short instruction (``kind`` "short") file."""
    out = []
    source = f"{'longalpaca' if kind == 'long' else 'short'}:{os.path.basename(path)}"
    for lineno, rec in iter_records(path, required=("instruction", "output")):
        extra = rec.get("input", "")
        if extra is not None and not isinstance(extra, str):
            raise RecordError(f"{path}:{lineno}: 'input' must be a string")
        if not rec["instruction"].strip():
            dropped["empty instruction"] += 1
            continue
        if not rec["output"].strip():
            dropped["empty answer"] += 1
            continue
        record = {"instruction": rec["instruction"], "output": rec["output"]}
        if extra and extra.strip():
            record["input"] = extra
        out.append(Candidate(record, source, kind, f"{path}:{lineno}"))
    return out


def record_text(record: dict) -> str:
    """The text whose length is filtered: instruction, input (if any) and output."""
    parts = [record["instruction"], record.get("input", ""), record["output"]]
    return "\n\n".join(p for p in parts if p)


def _dedupe_key(record: dict) -> str:
    return "\x00".join(
        " ".join(record.get(k, "").split()).casefold() for k in ("instruction", "input", "output")
    )


def dedupe(cands: list[Candidate]) -> tuple[list[Candidate], int]:
    """First occurrence of each record (whitespace- and case-insensitive); returns (kept, dropped)."""
    seen: set[str] = set()
    kept = []
    for c in cands:
        key = _dedupe_key(c.record)
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept, len(cands) - len(kept)


def mix(
    long: list[Candidate], short: list[Candidate], short_fraction: float, rng: random.Random
) -> list[Candidate]:
    """All long records plus a seeded sample of short ones making ``short_fraction`` of the result
    (fewer if the short pool runs out; all of them when there are no long records), shuffled."""
    if long and short_fraction > 0:
        want = round(short_fraction / (1 - short_fraction) * len(long))
        picked = rng.sample(short, min(want, len(short)))
    elif long:
        picked = []
    else:
        picked = list(short)
    out = list(long) + picked
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------------------------- build


def build(config: BuildConfig, log=print) -> tuple[list[dict], dict]:
    """Run every step; returns (records, stats). Raises ``RecordError``/``ValueError`` on bad input (a
    ``DataError`` when a ``--docs`` path is missing, holds no document or is not one)."""
    rng = random.Random(config.seed)
    dropped: Counter = Counter()
    docs, failed_docs = _read_docs(config, log)
    cands, read = _candidates(config, docs, failed_docs, dropped)
    cands, n_dup = dedupe(cands)
    if n_dup:
        dropped["duplicate"] += n_dup
    unit = _measure(cands, config.tokenizer)
    kept = []
    for c in cands:
        if config.max_tokens and c.length > config.max_tokens:
            dropped[f"longer than --max-tokens {config.max_tokens}"] += 1
        elif config.min_tokens and c.length < config.min_tokens:
            dropped[f"shorter than --min-tokens {config.min_tokens}"] += 1
        else:
            kept.append(c)

    long = [c for c in kept if c.kind == "long"]
    short = [c for c in kept if c.kind == "short"]
    final = mix(long, short, config.short_fraction, rng)
    n_unsampled = len(short) - sum(c.kind == "short" for c in final)
    if n_unsampled:
        dropped[f"short records beyond --short-fraction {config.short_fraction}"] += n_unsampled
    stats = _stats(config, final, read, dropped, unit)
    stats["documents"] = {"loaded": len(docs), "failed": failed_docs}
    return [c.record for c in final], stats


def _read_docs(config: BuildConfig, log) -> tuple[list, dict[str, str]]:
    """The ``--docs`` documents read, and the files that failed (name -> why)."""
    docs, failed = [], {}
    if config.docs:
        for source in find_sources(config.docs, ("document",), flag="--docs"):
            try:
                docs.append(read_document(source, drop_references=config.drop_references))
            except DocumentError as e:
                failed[source.path.name] = str(e)
                log(f"FAILED {source.path}: {e}")
    return docs, failed


def _candidates(config: BuildConfig, docs, failed_docs, dropped: Counter) -> tuple[list[Candidate], Counter]:
    """Every candidate record from the QA, LongAlpaca and short files, and how many each file gave."""
    read: Counter = Counter()
    failed_names = set(failed_docs) | {os.path.splitext(n)[0] for n in failed_docs}
    cands: list[Candidate] = []
    index = document_index(docs)
    for path in config.qa:
        before = sum(dropped.values())
        got = qa_candidates(path, index, failed_names, config.material_type, dropped)
        read[f"qa:{os.path.basename(path)}"] += len(got) + sum(dropped.values()) - before
        cands += got
    for kind, paths in (("long", config.longalpaca), ("short", config.short)):
        for path in paths:
            before = sum(dropped.values())
            got = record_candidates(path, kind, dropped)
            name = f"{'longalpaca' if kind == 'long' else 'short'}:{os.path.basename(path)}"
            read[name] += len(got) + sum(dropped.values()) - before
            cands += got
    return cands, read


def _measure(cands: list[Candidate], tokenizer: str | None) -> str:
    """Set each candidate's length (tokens with a tokenizer, else words); returns the unit."""
    if not tokenizer:
        for c in cands:
            c.length = len(record_text(c.record).split())
        return "words"
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    for start in range(0, len(cands), 64):
        chunk = cands[start : start + 64]
        for c, n in zip(chunk, tok.count([record_text(c.record) for c in chunk])):
            c.length = n
    return f"tokens ({tok.name})"


def _stats(config: BuildConfig, final: list[Candidate], read: Counter, dropped: Counter, unit: str) -> dict:
    sources = {}
    for source in sorted(read):
        mine = [c for c in final if c.source == source]
        sources[source] = {
            "read": read[source],
            "kept": len(mine),
            "lengths": percentiles([c.length for c in mine]),
        }
    n_short = sum(c.kind == "short" for c in final)
    return {
        "output": config.output,
        "records": len(final),
        "long": len(final) - n_short,
        "short": n_short,
        "short_fraction": round(n_short / len(final), 4) if final else 0.0,
        "short_fraction_target": config.short_fraction,
        "seed": config.seed,
        "length_unit": unit,
        "max_tokens": config.max_tokens,
        "min_tokens": config.min_tokens,
        "lengths": percentiles([c.length for c in final]),
        "sources": sources,
        "dropped": dict(sorted(dropped.items())),
        "_lengths": {
            "long": [c.length for c in final if c.kind == "long"],
            "short": [c.length for c in final if c.kind == "short"],
        },
    }


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_tools build-longalpaca",
        description="Build a LongAlpaca-style long-QA dataset, mixed with short instructions and length-filtered.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Usage examples:" + __doc__.split("Usage:")[1].split("Each long record")[0],
    )
    p.add_argument(
        "--docs",
        nargs="+",
        default=[],
        metavar="FILE_OR_DIR",
        help="documents (.pdf/.txt/.md files, folders searched recursively, globs) the QA file refers to",
    )
    p.add_argument(
        "--qa",
        nargs="+",
        default=[],
        metavar="FILE",
        help="QA JSONL/JSON: doc, question or template, answer, material_type?",
    )
    p.add_argument(
        "--longalpaca",
        nargs="+",
        default=[],
        metavar="FILE",
        help="existing LongAlpaca JSON/JSONL to filter/convert",
    )
    p.add_argument(
        "--short",
        nargs="+",
        default=[],
        metavar="FILE",
        help="short instruction records (instruction, input?, output)",
    )
    p.add_argument(
        "--short-fraction",
        type=float,
        default=0.25,
        help="share of short records in the result (LongAlpaca-12k: 3k/12k = 0.25)",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="model dir, tokenizer.json, 'default' or hub id; lengths are words without it",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="drop records longer than this (LongAlpaca-16k-length: 16384)",
    )
    p.add_argument("--min-tokens", type=int, default=None, help="drop records shorter than this")
    p.add_argument(
        "--material-type",
        choices=sorted(MATERIAL_TYPES),
        default=None,
        help="for QA lines without one (default: paper for PDFs, book for long texts)",
    )
    p.add_argument(
        "--drop-references", action="store_true", help="cut references sections from the documents"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for sampling and shuffling (same seed, same file)"
    )
    p.add_argument(
        "--format",
        choices=["json", "jsonl"],
        default=None,
        help="output format (default: from the -o suffix)",
    )
    p.add_argument("--no-stats", action="store_true", help="skip NAME.stats.json and NAME.lengths.png")
    p.add_argument(
        "--list-templates", action="store_true", help="print the paper's question templates and exit"
    )
    p.add_argument("-o", "--output", help="output .json (list) or .jsonl file")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_templates:
        for key in QUESTION_TEMPLATES:
            print(f"{key:<14} {template_question(key, 'paper')}  |  {template_question(key, 'book')}")
        return 0
    if not args.output:
        parser.error("-o/--output is required")
    try:
        config = BuildConfig(
            output=args.output,
            docs=args.docs,
            qa=args.qa,
            longalpaca=args.longalpaca,
            short=args.short,
            short_fraction=args.short_fraction,
            tokenizer=args.tokenizer,
            max_tokens=args.max_tokens,
            min_tokens=args.min_tokens,
            material_type=args.material_type,
            drop_references=args.drop_references,
            seed=args.seed,
            format=args.format,
            stats=not args.no_stats,
        )
        records, stats = build(config, log=lambda m: print(m, file=sys.stderr))
    except (RecordError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not records:
        print("error: no records left; see the dropped counts:\n" + summary_markdown(stats), file=sys.stderr)
        return 1
    write_records(config.output, records, config.format)
    if config.stats:
        json_path, png_path = stats_paths(config.output)
        public = {k: v for k, v in stats.items() if not k.startswith("_")}
        atomic_write_text(json_path, json.dumps(public, indent=1, ensure_ascii=False) + "\n")
        plot_lengths(stats, png_path)
    print(summary_markdown(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
