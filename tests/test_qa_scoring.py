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


# The kinds added for the questions users ask first: what is it about, who wrote it, two passages,
# and questions the document does not answer. Real-looking answers, both ways.
RCPP_ABOUT = {
    "kind": "about",
    "question": "What software does this paper describe?",
    "answers": ["Rcpp"],
    "others": ["RInside", "RQuantLib", "RcppArmadillo", "convolve4cpp"],
}
ZOO_ABOUT = {
    "kind": "about",
    "question": "What software is this FAQ about?",
    "answers": ["zoo"],
    "others": ["chron", "read.zoo", "aggregate.zoo"],
}


@pytest.mark.parametrize(
    "answer,item",
    [
        ("The paper describes the Rcpp package, which integrates R and C++.", RCPP_ABOUT),
        # the software described, then the packages it cites or compares with
        ("It describes Rcpp; it also compares it with RInside and RcppArmadillo.", RCPP_ABOUT),
        (
            "Rcpp: seamless R and C++ integration, with vectors, matrices, functions and environments.",
            RCPP_ABOUT,
        ),
        ("The zoo package for ordered observations, with read.zoo and aggregate.zoo.", ZOO_ABOUT),
    ],
)
def test_about_answers_naming_the_subject_first_are_right(answer, item):
    assert qa_scoring.grade(answer, item) == (True, "gold found")


@pytest.mark.parametrize(
    "answer,item,why",
    [
        # the regression: a package the paper only cites, a function from a code listing
        (
            "The paper describes the RInside package, which builds on Rcpp.",
            RCPP_ABOUT,
            "names rinside before",
        ),
        ("The read.zoo function of the zoo package.", ZOO_ABOUT, "names read.zoo before"),
        ("It is about read.zoo.", ZOO_ABOUT, "no gold"),  # "zoo" inside read.zoo is not the gold
        ("It describes convolve4cpp.", RCPP_ABOUT, "no gold"),
        ("Rcpp and RInside.", RCPP_ABOUT, "beside another candidate: rinside"),
        ("Either Rcpp or inline.", RCPP_ABOUT, "several candidates"),
    ],
)
def test_about_answers_naming_a_cited_package_or_listing_are_wrong(answer, item, why):
    ok, reason = qa_scoring.grade(answer, item)
    assert not ok and why in reason, reason
    if "convolve4cpp" not in answer:
        assert lenient(answer, item["answers"])  # the old rule gave them the credit


AUTHORS = {
    "kind": "author",
    "question": "Who wrote this paper?",
    "answers": ["Eddelbuettel", "François", "Francois"],
    "others": ["Samperi", "Chambers"],
}


def test_author_answers_may_list_every_author_but_not_someone_else():
    talk = {"kind": "author", "question": "Who gave this talk?", "answers": ["Gramm", "Sharan", "Tantau"]}
    five = "Jens Gramm, Tzvika Hartman, Till Nierhoff, Roded Sharan and Till Tantau."
    assert qa_scoring.grade(five, talk)[0]
    assert not strict(five, talk["answers"], talk["question"])[0]  # the plain list rule would refuse it
    assert qa_scoring.grade("Dirk Eddelbuettel and Romain François.", AUTHORS)[0]
    assert qa_scoring.grade("Eddelbuettel; Samperi wrote the first version.", AUTHORS)[0]
    for wrong, why in [
        ("Dominick Samperi and Dirk Eddelbuettel.", "names samperi before"),
        ("Eddelbuettel, Chambers.", "beside another candidate: chambers"),
        ("Dominick Samperi.", "no gold"),
    ]:
        ok, reason = qa_scoring.grade(wrong, AUTHORS)
        assert not ok and why in reason, (wrong, reason)


def test_two_passage_answers_may_show_their_working_but_not_rival_numbers():
    item = {
        "kind": "two-passage",
        "question": "How many years after Rcpp first appeared did its redesign start?",
        "answers": ["4", "four"],
        "working": "2009 - 2005 = 4",
    }
    shown = "It first appeared in 2005 and the redesign began in 2009: 4 years."
    assert qa_scoring.grade(shown, item)[0]
    assert not strict(shown, item["answers"], item["question"])[0]  # without the working: rival numbers
    ok, reason = qa_scoring.grade("4 or 5 years.", item)
    assert not ok and "other numbers named: 5" in reason


LICENSE = {
    "kind": "absent",
    "absent": True,
    "question": "Under which license is the Rcpp package released?",
    "answers": [],
    "absent_terms": ["license", "GPL"],
}
YEAR = {
    "kind": "absent",
    "absent": True,
    "question": "In which year was this novel first published?",
    "answers": [],
    "absent_terms": ["1815", "published", "publication"],
}


@pytest.mark.parametrize(
    "answer,item",
    [
        ("The document does not mention the license of Rcpp.", LICENSE),
        ("The license is not stated in the paper.", LICENSE),
        ("There is no information about the license in the text.", LICENSE),
        ("It cannot be determined from the document.", LICENSE),
        ("The text doesn't say when it was published.", YEAR),
        ("The year of publication is not given in the document.", YEAR),  # lower-case terms are fine
        ("Unknown.", YEAR),
        ("I don't know.", YEAR),
    ],
)
def test_absent_answers_that_say_so_are_right(answer, item):
    assert qa_scoring.grade(answer, item) == (True, "says the document does not give it")


@pytest.mark.parametrize(
    "answer,item,why",
    [
        ("Rcpp is released under the GPL.", LICENSE, "does not say"),
        ("The license is not stated in the paper, but it is probably GPL-2.", LICENSE, "goes on to guess"),
        ("The paper does not say; Rcpp uses the GPL.", LICENSE, "names 'GPL'"),
        ("It was first published in 1815; the text does not say so.", YEAR, "names a number: 1815"),
        ("1815.", YEAR, "does not say"),
        ("The year is not given, although it is likely to be 1813.", YEAR, "goes on to guess"),
    ],
)
def test_absent_answers_that_assert_an_answer_are_wrong(answer, item, why):
    ok, reason = qa_scoring.grade(answer, item)
    assert not ok and why in reason, reason


def test_rescore_grades_absent_questions_by_their_rule(tmp_path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"id": "lic", **LICENSE}) + "\n")
    rows = tmp_path / "answers.jsonl"
    answers = ["Not mentioned in the paper.", "Not mentioned, but probably the GPL.", "GPL-2."]
    rows.write_text("".join(json.dumps({"id": "lic", "mode": "m", "answer": a}) + "\n" for a in answers))
    cell = qa_scoring.rescore([rows], dev)["answers.jsonl m"]
    assert (cell["questions"], cell["lenient"], cell["strict"]) == (3, 2, 1)
