"""benchmarks/qa_sft.py: the questions and answers it takes from a manual page, and its training mix."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import qa_sft  # noqa: E402

# A manual page as `man -P cat | col -bx` prints it (grep's, shortened).
PAGE = """GREP(1)                          User Commands                         GREP(1)

NAME
       grep, egrep, fgrep - print lines that match patterns

SYNOPSIS
       grep [OPTION...] PATTERNS [FILE...]

OPTIONS
   Generic Program Information
       --help Output a usage message and exit.

       -V, --version
              Output the version number of grep and exit.

       -F, --fixed-strings
              Interpret PATTERNS as fixed strings, not regular expressions.
              Second sentence.

AUTHOR
       Written by Mike Haertel and others; see
       <https://git.sv.gnu.org/cgit/grep.git/tree/AUTHORS>.

GNU grep 3.8                      2019-12-29                           GREP(1)
"""


def test_sections_and_options_of_a_manual_page():
    secs = qa_sft.sections(PAGE)
    assert set(secs) == {"NAME", "SYNOPSIS", "OPTIONS", "AUTHOR"}
    assert secs["NAME"].strip() == "grep, egrep, fgrep - print lines that match patterns"
    # a flag on its own line with its description below; "--help Output..." on one line has none
    assert qa_sft.options(secs["OPTIONS"]) == [
        ("-V", "Output the version number of grep and exit."),
        ("-F", "Interpret PATTERNS as fixed strings, not regular expressions."),
    ]
    assert qa_sft.first_sentence(secs["AUTHOR"]) == (
        "Written by Mike Haertel and others; see <https://git.sv.gnu.org/cgit/grep.git/tree/AUTHORS>."
    )


def test_lower1_keeps_acronyms():
    assert qa_sft.lower1("Print lines") == "print lines"
    assert qa_sft.lower1("EVP_PKEY keys") == "EVP_PKEY keys"


def test_mix_takes_the_asked_counts_and_repeats_author_records(tmp_path):
    records = tmp_path / "records.jsonl"
    kinds = ["about"] * 10 + ["option"] * 4 + ["author"] * 3 + ["absent"] * 6
    records.write_text("".join(json.dumps({"kind": k, "i": i}) + "\n" for i, k in enumerate(kinds)))
    out = tmp_path / "train.jsonl"
    counts = qa_sft.mix(records, out, seed=0, about=5, author_repeat=2, absent=2)
    assert counts == {"about": 5, "option": 4, "author": 6, "absent": 2}
    rows = [json.loads(line) for line in out.open()]
    assert len(rows) == 17
    assert sorted(r["i"] for r in rows if r["kind"] == "author") == [14, 14, 15, 15, 16, 16]
    # the same seed gives the same mix
    again = tmp_path / "again.jsonl"
    qa_sft.mix(records, again, seed=0, about=5, author_repeat=2, absent=2)
    assert again.read_text() == out.read_text()


def test_per_kind_counts_right_answers():
    rows = {
        "a": {"kind": "about", "correct": True},
        "b": {"kind": "about", "correct": False},
        "c": {"kind": "author", "correct": 1},
    }
    assert qa_sft.per_kind(rows) == {"about": "1/2", "author": "1/1"}


def test_absent_questions_name_the_program_and_have_terms_and_their_answers_say_so():
    from longlora.qa.readings import says_not_found

    for question, terms in qa_sft.ABSENT:
        assert "{p}" in question and terms and all(t == t.lower() for t in terms)
    # the engine recognises every trained "not in the document" answer as one
    assert all(says_not_found(a) for a in qa_sft.ABSENT_A)
