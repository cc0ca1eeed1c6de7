"""The development-QA scorers (benchmarks/qa_scoring.py): the strict rule a figure is quoted with cannot be
gamed by numbers hidden inside other numbers or by listing candidates; the lenient rule could."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("qa_scoring", ROOT / "benchmarks" / "qa_scoring.py")
qa_scoring = importlib.util.module_from_spec(spec)
sys.modules["qa_scoring"] = qa_scoring
spec.loader.exec_module(qa_scoring)
strict, lenient = qa_scoring.strict, qa_scoring.lenient


@pytest.mark.parametrize(
    "answer,gold",
    [
        ("The benchmark averaged over 5000 calls.", ["5000", "5,000"]),
        ("It was averaged over 5,000 calls of each function.", ["5000", "5,000"]),
        ("Version 1.1 of the format.", ["1.1"]),
        ("They used 17 participants", ["17"]),
        ("No.", ["no"]),
        ("The package was renamed to RcppTemplate in 2006.", ["RcppTemplate"]),
        ("Dominick Samperi wrote it.", ["Samperi"]),
        ("The single outlier, Alaska, heavily influences the quadratic model.", ["Alaska"]),
        ("It is as hard as colouring 3-uniform hypergraphs.", ["3-uniform hypergraph"]),
    ],
)
def test_strict_accepts_a_plain_right_answer(answer, gold):
    question = "In 2006, what happened?" if "2006" in answer else "What?"
    assert strict(answer, gold, question)[0], strict(answer, gold, question)


@pytest.mark.parametrize(
    "answer,gold,why",
    [
        ("The value was 11.1 percent.", ["1.1"], "no gold"),
        ("The value was 1.15.", ["1.1"], "no gold"),
        ("It appeared in 2017.", ["17"], "no gold"),
        ("Figure 2.3 shows it", ["2"], "no gold"),
        ("It is not known.", ["no"], "no gold"),
        ("Either 5000 or 10000 calls.", ["5000"], "other numbers"),
        ("Between 3, 5 and 17 participants", ["17"], "other numbers"),
        ("Yes and no: it depends.", ["no"], "both yes and no"),
        ("It could be Samperi or Eddelbuettel.", ["Samperi"], "several candidates"),
        ("Contributors: Eddelbuettel, Francois, Samperi, Allaire.", ["Samperi"], "several candidates"),
    ],
)
def test_strict_refuses_hidden_matches_and_candidate_lists(answer, gold, why):
    ok, reason = strict(answer, gold, "Who or how many?")
    assert not ok and why in reason, reason
    if why in ("other numbers", "several candidates") or answer.startswith(
        ("The value was 11", "It appeared")
    ):
        assert lenient(answer, gold)  # what the old rule counted as right


def test_numbers_from_the_question_and_lists_the_question_asks_for_are_fine():
    assert strict("Over 5000 calls in Section 3.", ["5000"], "In Section 3, over how many calls?")[0]
    q = "Which three packages are compared?"
    assert strict("Rcpp, inline and RInside.", ["RInside"], q)[0]


def test_rescore_counts_both_rules_and_lists_changed_verdicts(tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text(
        json.dumps({"id": "a", "question": "How many calls?", "answers": ["5000"]})
        + "\n"
        + json.dumps({"id": "b", "question": "Who?", "answers": ["Samperi"]})
        + "\n"
    )
    rows = tmp_path / "answers.jsonl"
    rows.write_text(
        json.dumps({"id": "a", "mode": "pipeline", "config": "c", "answer": "5000 or 15000"})
        + "\n"
        + json.dumps({"id": "b", "mode": "pipeline", "config": "c", "answer": "Samperi."})
        + "\n"
    )
    table = qa_scoring.rescore([rows], dev)
    cell = table["answers.jsonl pipeline c"]
    assert (cell["questions"], cell["lenient"], cell["strict"]) == (2, 2, 1)
    assert [c["id"] for c in cell["changed"]] == ["a"]
