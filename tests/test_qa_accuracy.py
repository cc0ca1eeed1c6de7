"""benchmarks/qa_accuracy.py without a model: what the ``evidence`` reference reads for two-passage and
absent questions, the --split filter, and the summary per kind and split."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
_spec = importlib.util.spec_from_file_location("qa_accuracy", ROOT / "benchmarks" / "qa_accuracy.py")
qa = importlib.util.module_from_spec(_spec)
sys.modules["qa_accuracy"] = qa
_spec.loader.exec_module(qa)

# one token per 10 characters: token i covers characters [10 i, 10 i + 10)
OFFSETS = [(10 * i, 10 * i + 10) for i in range(100)]


def _covers(span: tuple[int, int], chars: tuple[int, int]) -> bool:
    return OFFSETS[span[0]][0] <= chars[0] and chars[1] <= OFFSETS[span[1] - 1][1]


def test_evidence_reading_of_an_absent_question_is_the_opening_of_the_document():
    assert qa.evidence_spans(OFFSETS, [], 30) == [(0, 30)]
    assert qa.evidence_spans(OFFSETS[:12], [], 30) == [(0, 12)]


def test_evidence_reading_splits_the_budget_across_two_quotes():
    first, second = (105, 125), (805, 815)  # tokens 10-12 and 80-81
    spans = qa.evidence_spans(OFFSETS, [first, second], 40, gap_len=4)
    assert len(spans) == 2 and spans == sorted(spans)
    assert _covers(spans[0], first) and _covers(spans[1], second)
    assert sum(e - s for s, e in spans) + 4 <= 40  # both halves and the gap marker fit the budget
    assert qa.evidence_spans(OFFSETS, [second, first], 40, gap_len=4) == spans  # order of the quotes
    # one quote: the whole budget centred on it, as before
    (only,) = qa.evidence_spans(OFFSETS, [first], 40)
    assert only[1] - only[0] == 40 and _covers(only, first)


def test_evidence_reading_merges_two_quotes_that_are_close():
    first, second = (305, 315), (345, 355)
    (span,) = qa.evidence_spans(OFFSETS, [first, second], 40, gap_len=4)
    assert _covers(span, first) and _covers(span, second) and span[1] - span[0] <= 40


ITEMS = [
    {
        "id": "a",
        "doc": "x.pdf",
        "type": "paper",
        "kind": "about",
        "split": "dev",
        "question": "Q?",
        "answers": ["Rcpp"],
    },
    {
        "id": "b",
        "doc": "x.pdf",
        "type": "paper",
        "kind": "about",
        "split": "holdout",
        "question": "Q?",
        "answers": ["Rcpp"],
    },
    {
        "id": "c",
        "doc": "x.pdf",
        "type": "paper",
        "kind": "absent",
        "split": "holdout",
        "question": "Under which license?",
        "answers": [],
        "absent": True,
        "absent_terms": ["GPL"],
    },
]


def test_split_filter_keeps_one_split_and_refuses_others():
    assert [i["id"] for i in qa.select_items(ITEMS, "dev")] == ["a"]
    assert [i["id"] for i in qa.select_items(ITEMS, "holdout")] == ["b", "c"]
    assert [i["id"] for i in qa.select_items(ITEMS, "all", limit=2)] == ["a", "b"]
    with pytest.raises(SystemExit, match="--split 'test': use dev, holdout or all"):
        qa.select_items(ITEMS, "test")


def _row(mode: str, item_id: str, answer: str) -> dict:
    return {"id": item_id, "mode": mode, "answer": answer, "degenerate": False, "prompt_tokens": 100}


def test_summary_counts_per_kind_and_split_and_ratio_on_the_holdout():
    runs = [qa.parse_run("pipeline=retrieve:256:64"), qa.parse_run("evidence=retrieve:256:64")]
    pipeline, evidence = (qa.run_name(m, c.name) for m, c in runs)
    rows = {
        pipeline: [
            _row("pipeline", "a", "It describes Rcpp."),
            _row("pipeline", "b", "It describes RInside."),
            _row("pipeline", "c", "The paper does not mention a license."),
        ],
        evidence: [
            _row("evidence", "a", "Rcpp."),
            _row("evidence", "b", "Rcpp."),
            _row("evidence", "c", "It is the GPL."),
        ],
    }
    table = qa.print_table(ITEMS, runs, rows)
    lines = table.splitlines()
    head = next(line for line in lines if line.startswith("| mode"))
    assert "vs evidence (holdout)" in head
    first = next(line for line in lines if line.startswith("| pipeline"))
    # pipeline: a and c right (2/3); holdout 1/2; evidence: a and b right; holdout ratio 1 / 1 = 100%
    assert "| 2/3 (67%) | 1/1 | 1/2 |" in first and "| 100% | 100% |" in first
    kind_head = next(line for line in lines if line.startswith("| kind"))
    assert kind_head.count("dev") == 2 and kind_head.count("holdout") == 2
    assert "| about | 1/1 | 0/1 | 1/1 | 1/1 |" in lines
    assert "| absent | 0/0 | 1/1 | 0/0 | 0/1 |" in lines


def test_a_config_names_its_readings_and_parses_back():
    config = qa.Config.parse("retrieve:256:128:1.0:4:64@brief+64/0+128/0")
    assert (config.passage_tokens, config.lead_tokens, config.prompt_style) == (128, 64, "brief")
    assert config.alternate_readings == ((64, 0), (128, 0))
    assert config.name == "retrieve:256:128:1:4:64@brief+64/0+128/0"
    assert qa.Config.parse(config.name) == config
    assert qa.Config.parse("retrieve:256:64:1:4@brief").alternate_readings == ()
    with pytest.raises(SystemExit, match="bad config"):
        qa.Config.parse("retrieve:256:64@brief+64")
