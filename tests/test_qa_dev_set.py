"""benchmarks/qa_dev_set.jsonl is valid: every evidence quote occurs exactly once in the project's
extracted text of its document (and in pdftotext's, so the set does not depend on one extractor),
and holds one of the accepted answers. Documents that are missing are skipped."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import EMMA, PRIDE_AND_PREJUDICE, absent_reason

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "retrieval_recall", ROOT / "benchmarks" / "retrieval_recall.py"
)
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)

RECORDS = rr.load_dev_set()
DOCS = sorted({r["doc"] for r in RECORDS})


def test_dev_set_shape():
    assert len(RECORDS) >= 60 and len(DOCS) >= 10
    ids = [r["id"] for r in RECORDS]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    for r in RECORDS:
        assert r["type"] in rr.TYPES and r["split"] in ("dev", "holdout"), r["id"]
        assert r["question"].strip().endswith("?") and r["answers"] and r["evidence"].strip(), r["id"]
        assert r.get("match", "substring") in ("substring", "word"), r["id"]
    holdout = sum(r["split"] == "holdout" for r in RECORDS)
    assert len(RECORDS) // 3 - 1 <= holdout <= len(RECORDS) // 3 + 1  # a third held out
    assert {r["type"] for r in RECORDS} == set(rr.TYPES)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r["id"])
def test_evidence_holds_an_accepted_answer(record):
    key = rr.evidence_key(record["evidence"])
    assert any(rr.evidence_key(a) in key for a in record["answers"]), record["evidence"]


def test_evidence_key_ignores_what_extractors_disagree_on():
    quote = "the ﬁrst release to ship with systemd"
    assert rr.count_evidence("The \ufb01rst re-\nlease\u00adto ship  with systemd.", quote) == 1
    assert rr.count_evidence("Thefirstreleasetoshipwithsystemd", quote) == 1  # pypdf's missing spaces
    assert rr.count_evidence("Pégourié-Gonnard", "Pegourie Gonnard") == 1
    assert rr.count_evidence("the first release", quote) == 0
    assert rr.contains_evidence(["xx", "The first release to ship with systemd!"], quote)
    assert not rr.contains_evidence(["first release to", "ship with systemd"], quote)  # split: a miss


def _records_of(doc: str) -> list[dict]:
    return [r for r in RECORDS if r["doc"] == doc]


# The two books have byte-identical copies in the repository (data/books/README.md).
IN_REPO = {"fixtures/austen-emma.txt": EMMA, "fixtures/austen-prideprejudice.txt": PRIDE_AND_PREJUDICE}


def _path(doc: str) -> Path:
    path = IN_REPO.get(doc) or rr.shared_root() / doc
    if not path.exists():
        pytest.skip(absent_reason(path))
    return path


@pytest.mark.parametrize("doc", DOCS)
def test_evidence_occurs_once_in_the_extracted_text(doc):
    from data_tools import load_document

    text = load_document(_path(doc)).text
    counts = {r["id"]: rr.count_evidence(text, r["evidence"]) for r in _records_of(doc)}
    assert counts == {i: 1 for i in counts}


@pytest.mark.parametrize("doc", [d for d in DOCS if d.endswith(".pdf")])
def test_evidence_occurs_once_in_pdftotext_output(doc):
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    run = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(_path(doc)), "-"], capture_output=True, check=True
    )
    text = run.stdout.decode("utf-8", "replace")
    counts = {r["id"]: rr.count_evidence(text, r["evidence"]) for r in _records_of(doc)}
    assert counts == {i: 1 for i in counts}


# The earlier retrieval (fixed passages), kept in the benchmark as the baseline of PassageIndex.


def test_fixed_method_terms_drop_stopwords_and_plural_s():
    assert rr.terms("What are the limitations of the Rcpp packages?") == ["limitation", "rcpp", "package"]
    assert rr.terms("version 1.0.8 and R-Forge") == ["version", "1.0.8", "r", "forge"]


def test_fixed_method_select_passages_respects_budget_and_document_order():
    scores = [0.1, 3.0, 0.0, 2.0, 5.0]
    lengths = [10, 10, 10, 10, 30]
    assert rr.select_passages(scores, lengths, 40) == [1, 4]  # 4 (30) + 1 (10)
    assert rr.select_passages(scores, lengths, 29) == [1, 3]  # 4 does not fit; 1 + 3 = 20, a third is 30
    chosen = rr.select_passages(scores, lengths, 29, separator_len=5)
    total = sum(lengths[i] for i in chosen) + 5 * sum(1 for a, b in zip(chosen, chosen[1:]) if b != a + 1)
    assert total <= 29 and chosen == sorted(chosen)
    assert rr.select_passages(scores, lengths, 5) == []
