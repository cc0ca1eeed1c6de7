"""Retrieval recall on the development QA set: is the evidence inside the prompt given to the model?

Every record of ``benchmarks/qa_dev_set.jsonl`` names a document (relative to the shared folder beside
the repository; ``LONGLORA_SHARED`` or ``LONGLORA_FIXTURES``/.. override it), a question and a
verbatim evidence quote. A question counts as recalled when its evidence quote lies inside one
contiguous piece of what a retrieval method keeps within the token budget (compared after
``evidence_key`` normalisation: case, accents, spacing, hyphenation and punctuation ignored).

Record fields: ``id``, ``doc``, ``type`` (``TYPES``), ``kind`` (the kind of question: ``KINDS``),
``split``, ``question``, ``answers``, ``evidence``, optional ``match``; and for the kinds users ask
first: ``others`` (names the document gives that are not the answer, for the scorer), ``evidence2``
(``two-passage``: the second quote; recalled only when both quotes are in the prompt), ``working``
(how a computed answer follows from the two quotes), ``absent: true`` with empty ``answers`` and no
evidence (the document does not answer; recall does not apply, so these are left out of it and
counted apart) and ``absent_terms`` (words no word of the document begins with).

The ``engine`` method is what users get: ``QAEngine.build_prompt`` with the bundled model and its
profile (``data_tools.profiles``: budget, passage size), and the prompt it would send decoded back to
text and cut at the gap markers, so the number reported is the number of the app and of
``python -m longlora.qa``. ``--budgets`` and ``--passage`` override the profile's budget and passage
size (to choose them). The other methods need only the tokenizer and compare retrievals: ``fixed``
is the engine's retrieval before the dev set existed (sentence-aligned passages, BM25 with a plural
strip); ``fixed-stem`` the same with the Snowball stemmer; ``windows`` half-overlapping windows
(``longlora.retrieval.PassageIndex`` without front matter); ``windows-front`` adds the document's
opening for bibliographic questions (``PassageIndex`` as it is). A run takes a minute or two on one
CPU core.

A third of the questions (``"split": "holdout"``, picked by a hash of the id) were not looked at
while choosing the method or the passage size: the table reports both halves. The first 94 questions
hold out the 31 ids with the smallest SHA-1; the kinds added later (``NEW_KINDS``) hold out, kind by
kind, the third of the ids (rounded) with the smallest SHA-1 (``holdout_ids``), fixed before any answer
was seen.

Usage (CPU)::

    python benchmarks/retrieval_recall.py                          # the engine as shipped (bundled profile)
    python benchmarks/retrieval_recall.py --passage 64 96 128      # the engine with other passage sizes
    python benchmarks/retrieval_recall.py --methods fixed windows-front --budgets 256 512 --misses
    python benchmarks/retrieval_recall.py --check                  # only validate the dev set
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEV_SET = HERE / "qa_dev_set.jsonl"
METHODS = ("engine", "fixed", "fixed-stem", "windows", "windows-front")
TYPES = ("paper", "manual", "slides", "table", "book")
KINDS = (
    "front-matter",
    "name",
    "number",
    "fact",
    "deep",
    "reference",
    "table-cell",
    "about",
    "author",
    "main-result",
    "two-passage",
    "absent",
)
NEW_KINDS = ("about", "author", "main-result", "two-passage", "absent")  # the questions users ask first


def shared_root() -> Path:
    """The shared folder holding corpus/ and fixtures/ (LONGLORA_SHARED, else LONGLORA_FIXTURES/..)."""
    if os.environ.get("LONGLORA_SHARED"):
        return Path(os.environ["LONGLORA_SHARED"])
    if os.environ.get("LONGLORA_FIXTURES"):
        return Path(os.environ["LONGLORA_FIXTURES"]).parent
    return HERE.parents[1] / "shared"


def load_dev_set(path: Path = DEV_SET) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def holdout_ids(records: list[dict]) -> set[str]:
    """The held-out ids of the kinds in ``NEW_KINDS``: per kind, the third (rounded) with the smallest SHA-1."""
    held: set[str] = set()
    for kind in NEW_KINDS:
        ids = sorted(
            (r["id"] for r in records if r["kind"] == kind),
            key=lambda i: hashlib.sha1(i.encode()).hexdigest(),
        )
        held.update(ids[: round(len(ids) / 3)])
    return held


def quotes(record: dict) -> list[str]:
    """The record's evidence quotes: none for an absent question, two for a two-passage one."""
    return [record[f] for f in ("evidence", "evidence2") if record.get(f)]


def evidence_key(text: str) -> str:
    """Letters and digits only, case-folded, accents dropped: what any extractor agrees on.

    Extractors differ in spacing (pypdf drops spaces on some PDFs), line-end hyphens (kept, joined or
    marked U+0002), ligatures, quotes and soft hyphens; none of that changes this key.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed.casefold() if c.isalnum())


def count_evidence(text: str, quote: str) -> int:
    """How many times the evidence quote occurs in the text (after ``evidence_key``)."""
    key = evidence_key(quote)
    return evidence_key(text).count(key) if key else 0


def contains_evidence(pieces: list[str], quote: str) -> bool:
    """Whether the quote lies whole inside one of the pieces (a piece: one contiguous kept span)."""
    key = evidence_key(quote)
    return any(key in evidence_key(p) for p in pieces)


def load_documents(records: list[dict], root: Path) -> dict[str, object | None]:
    """Document path -> ``data_tools.Document`` read with the project's extraction (None when missing)."""
    from data_tools import load_document

    docs: dict[str, object | None] = {}
    for rec in records:
        if rec["doc"] not in docs:
            path = root / rec["doc"]
            docs[rec["doc"]] = load_document(path) if path.exists() else None
    return docs


def load_texts(records: list[dict], root: Path) -> dict[str, str | None]:
    """Document path -> extracted text with the project's extraction (None when the file is missing)."""
    return {d: None if doc is None else doc.text for d, doc in load_documents(records, root).items()}


def pdftotext_texts(records: list[dict], root: Path) -> dict[str, str]:
    """Document path -> ``pdftotext`` output for the PDFs (empty when poppler's pdftotext is missing).

    A second extractor keeps the dev set valid whichever engine the project reads PDFs with.
    """
    if shutil.which("pdftotext") is None:
        return {}
    out = {}
    for doc in dict.fromkeys(r["doc"] for r in records):
        path = root / doc
        if doc.endswith(".pdf") and path.exists():
            run = subprocess.run(
                ["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True
            )
            out[doc] = run.stdout.decode("utf-8", "replace")
    return out


def check(records: list[dict], texts: dict[str, str | None], label: str = "the extracted text") -> list[str]:
    """Problems with the dev set: quotes not found, or found more than once, in the given texts."""
    problems = []
    for rec in records:
        text = texts.get(rec["doc"])
        if text is None:
            continue
        for field in ("evidence", "evidence2"):
            if rec.get(field) and (n := count_evidence(text, rec[field])) != 1:
                problems.append(f"{rec['id']}: {field} found {n} times in {label} of {rec['doc']}")
        if rec.get("absent"):
            problems += [
                f"{rec['id']}: absent term {t!r} occurs in {label} of {rec['doc']}"
                for t in absent_terms_found(text, rec.get("absent_terms", []))
            ]
    return problems


def absent_terms_found(text: str, terms: list[str]) -> list[str]:
    """The terms some word of ``text`` begins with (case and accents folded): an absent question's
    ``absent_terms`` must find none."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return [
        t
        for t in terms
        if re.search(r"(?<![\w])" + re.escape(unicodedata.normalize("NFKD", t).casefold()), folded)
    ]


# ----------------------------------------------------------------------------- the earlier retrieval
# Fixed consecutive passages ranked by BM25, kept while they fit: the engine's retrieval before
# ``PassageIndex``, kept here as the baseline the windows were measured against.


def terms(text: str) -> list[str]:
    """Lower-cased word terms without stopwords, with a light suffix strip (plural 's'): the analyzer of
    the ``fixed`` method (``fixed-stem`` uses the engine's Snowball stems)."""
    from longlora.retrieval import _WORD, STOPWORDS

    out = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS:
            continue
        if len(word) > 4 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        out.append(word)
    return out


def select_passages(
    scores: list[float], lengths: list[int], budget: int, *, separator_len: int = 0
) -> list[int]:
    """Indices of the highest-scoring passages whose lengths fit ``budget``, in document order.

    Passages are taken best first (ties: earlier first); one that does not fit is skipped and smaller
    ones may still fill the rest. ``separator_len`` tokens are charged between passages that are not
    adjacent in the document.
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    for i in order:
        picked = sorted(chosen + [i])
        gaps = separator_len * sum(1 for a, b in zip(picked, picked[1:]) if b != a + 1)
        if sum(lengths[c] for c in picked) + gaps <= budget:
            chosen.append(i)
    return sorted(chosen)


def select(
    method: str, doc, question: str, budget: int, size: int, gap_len: int, front: int | None = None
) -> list[tuple[int, int]]:
    """Token spans a method keeps for a question (``doc``: a _Doc with ids, offsets and indexes)."""
    from longlora.retrieval import fit_document

    if method in ("fixed", "fixed-stem"):
        passages, index = doc.fixed(size, stem=method == "fixed-stem")
        scores = index.scores(question)
        lengths = [e - s for s, e in passages]

        def retrieve(room: int) -> list[tuple[int, int]]:
            return [passages[i] for i in select_passages(scores, lengths, room, separator_len=gap_len)]

        spans, _ = fit_document(doc.ids, budget, "retrieve", retrieve=retrieve, gap_ids=[0] * gap_len)
        return spans
    index = doc.windows(size, front=front if method == "windows-front" else 0)
    return index.select(question, budget, separator_len=gap_len)


class _Doc:
    """One tokenized document and its retrieval indexes (built once per passage size)."""

    def __init__(self, text: str, tokenizer):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        self.text, self.ids = text, list(enc["input_ids"])
        self.offsets = [tuple(o) for o in enc["offset_mapping"]]
        self._cache: dict = {}

    def piece(self, span: tuple[int, int]) -> str:
        s, e = span
        return self.text[self.offsets[s][0] : self.offsets[e - 1][1]] if e > s else ""

    def fixed(self, size: int, *, stem: bool):
        from longlora.retrieval import BM25Index, split_passages, stem_terms

        key = ("fixed", size, stem)
        if key not in self._cache:
            spans = split_passages(self.offsets, self.text, size)
            index = BM25Index([self.piece(s) for s in spans], analyzer=stem_terms if stem else terms)
            self._cache[key] = (spans, index)
        return self._cache[key]

    def windows(self, size: int, *, front: int | None):
        from longlora.retrieval import PassageIndex

        key = ("windows", size, front)
        if key not in self._cache:
            kwargs = {} if front is None else {"front_tokens": front}
            self._cache[key] = PassageIndex(self.offsets, self.text, size, **kwargs)
        return self._cache[key]


def engine_pieces(engine, session, question: str) -> list[str]:
    """The document pieces of the prompt the engine would send: its text cut at the gap markers.

    The prompt's head and tail stay on the first and last piece; they hold no evidence quote.
    """
    from longlora.retrieval import GAP_MARKER

    prompt, _ = engine.build_prompt(session, question)
    return engine.tokenizer.decode(prompt).split(GAP_MARKER)


def load_engine(model: str):
    """The QA engine on a model spec (``default``: the bundled model) with its profile, as the app loads it."""
    from longlora.qa import QAEngine

    return QAEngine(model, status=lambda message: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qa-set", type=Path, default=DEV_SET, help="JSONL dev set (see the docstring)")
    parser.add_argument("--shared", type=Path, default=None, help="folder holding corpus/ and fixtures/")
    parser.add_argument(
        "--tokenizer", default=None, help="model / tokenizer folder (default: the bundled model's)"
    )
    parser.add_argument("--methods", nargs="+", default=["engine"], choices=METHODS, help="methods to run")
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=int,
        default=None,
        help="token budgets (default: the profile's for engine, 256 512 1024 2048 for the others)",
    )
    parser.add_argument(
        "--passage",
        nargs="+",
        type=int,
        default=None,
        help="passage / window sizes in tokens (default: the bundled profile's)",
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="list the dev-split questions each run misses (never the holdout)",
    )
    parser.add_argument(
        "--front",
        type=int,
        default=None,
        help="front-matter tokens for windows-front (default: the library's)",
    )
    parser.add_argument("--check", action="store_true", help="only validate the evidence quotes")
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    root = args.shared or shared_root()
    records = load_dev_set(args.qa_set)
    documents = load_documents(records, root)
    texts = {d: None if doc is None else doc.text for d, doc in documents.items()}
    missing = sorted(d for d, t in texts.items() if t is None)
    if missing:
        print(
            f"skipping {len(missing)} missing document(s) under {root}: {', '.join(missing)}", file=sys.stderr
        )
    problems = check(records, texts) + check(records, pdftotext_texts(records, root), "pdftotext's text")
    docs_n = len(texts) - len(missing)
    print(f"dev set: {len(records)} questions over {len(texts)} documents ({docs_n} present)")
    for p in problems:
        print(f"  {p}")
    if args.check:
        return 1 if problems else 0

    from transformers import AutoTokenizer

    from data_tools.bundled import DEFAULT_MODEL_NAME, default_model_dir
    from data_tools.profiles import PROFILES
    from longlora.retrieval import GAP_MARKER

    tok_dir = args.tokenizer or str(default_model_dir())
    if not Path(tok_dir).exists():
        raise SystemExit(
            f"no tokenizer at {tok_dir}; run `python -m longlora.models` once, or pass --tokenizer"
        )
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    gap_len = len(tokenizer(GAP_MARKER, add_special_tokens=False)["input_ids"])
    docs = {d: _Doc(t, tokenizer) for d, t in texts.items() if t is not None}
    present = [r for r in records if r["doc"] in docs]
    items = [r for r in present if quotes(r)]
    if len(items) < len(present):
        print(f"left out: {len(present) - len(items)} absent questions (no evidence: recall does not apply)")
    findable = [r for r in items if all(count_evidence(docs[r["doc"]].text, q) for q in quotes(r))]
    print(
        f"evidence present in the extracted text: {len(findable)}/{len(items)} (the ceiling of any retrieval)"
    )
    engine = sessions = None
    if "engine" in args.methods:
        engine = load_engine(args.tokenizer or "default")
        sessions = {d: engine.open_document(documents[d]) for d in docs}
    bundled = PROFILES[DEFAULT_MODEL_NAME]
    sizes = args.passage or [engine.profile.passage_tokens if engine else bundled.passage_tokens]

    types = [t for t in TYPES if any(r["type"] == t for r in items)]
    kinds = [k for k in KINDS if any(r["kind"] == k for r in items)]
    print(f"\ngap marker {gap_len} tokens\n")
    header = "| method | budget | passage | recall | dev | holdout | " + " | ".join(types + kinds) + " |"
    print(header)
    print("| --- " * (6 + len(types) + len(kinds)) + "|")
    for method in args.methods:
        if args.budgets:
            budgets = args.budgets
        elif method == "engine":
            budgets = [engine.profile.document_budget]
        else:
            budgets = [256, 512, 1024, 2048]
        for size in sizes:
            for budget in budgets:
                if method == "engine":
                    engine.profile = dataclasses.replace(
                        engine.profile, passage_tokens=size, document_budget=budget
                    )
                hits: dict[str, bool] = {}
                for rec in items:
                    if method == "engine":
                        pieces = engine_pieces(engine, sessions[rec["doc"]], rec["question"])
                    else:
                        doc = docs[rec["doc"]]
                        spans = select(method, doc, rec["question"], budget, size, gap_len, args.front)
                        pieces = [doc.piece(s) for s in spans]
                    hits[rec["id"]] = all(contains_evidence(pieces, q) for q in quotes(rec))
                print_row(method, budget, size, items, hits, types + kinds)
                if args.misses:
                    for rec in items:
                        if not hits[rec["id"]] and rec["split"] == "dev":
                            print(f"    miss {rec['id']}: {rec['question']}", file=sys.stderr)
    return 0


def print_row(method: str, budget, size: int, items: list[dict], hits: dict[str, bool], types) -> None:
    """One table row: recall overall, per split, then per group of ``types`` (document types, kinds)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for rec in items:
        groups[rec["split"]].append(hits[rec["id"]])
        groups[rec["type"]].append(hits[rec["id"]])
        groups[rec["kind"]].append(hits[rec["id"]])
    total = sum(hits.values())
    cells = [_frac(groups[g]) for g in ("dev", "holdout", *types)]
    print(
        f"| {method} | {budget} | {size} | {total}/{len(items)} ({100 * total / len(items):.0f}%) | "
        + " | ".join(cells)
        + " |",
        flush=True,
    )


def _frac(values: list[bool]) -> str:
    if not values:
        return "-"
    return f"{sum(values)}/{len(values)} ({100 * sum(values) / len(values):.0f}%)"


if __name__ == "__main__":
    sys.exit(main())
