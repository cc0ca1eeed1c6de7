"""Scoring answers to the development questions: strict by default, the old lenient rule for comparison.

``lenient`` (the earlier rule): correct when a gold answer occurs anywhere in the answer,
case-insensitive (``"match": "word"`` golds as whole words). Golds such as "2", "17", "1.1", "no" then
match inside other numbers and words, and an answer that lists several candidates gets the credit.

``strict`` (the rule every figure now uses):

- a gold matches as whole tokens only: a number never inside a longer number ("1.1" is not found in
  "11.1" or "1.15", "17" not in "2017"), a word never inside a longer word (a plural "s" aside);
- an answer that names several candidates is wrong:
  - for a numeric gold, another number in the answer that is neither a gold nor in the question;
  - for a yes/no gold, both "yes" and "no";
  - for any gold, the gold inside a hedge or a list: "X or Y", or three or more short items (up to four
    words) joined by commas, "and" or "or" in the clause that holds it (unless the question itself asks
    for several things).

The kinds of question the development set grew for users' first questions grade as follows (``grade``
picks the rule from the record):

- ``about`` and ``author`` ("What software does this paper describe?", "Who wrote this paper?"): an
  answer describes (a list of topics) or names several authors, so the three-short-items rule does not
  apply; "X or Y" still does. What makes such an answer wrong is naming something else as the subject:
  the record's ``others`` (names the document gives that are not the answer: a package it only cites, a
  function from a code listing, a cited author) count as candidates, and an answer that names one of
  them before the gold, or beside it ("Rcpp and RInside", "Zeileis, Greene"), is wrong. "The paper
  describes Rcpp; it compares it with RInside" is right, "It describes the RInside package, built on
  Rcpp" is not. A gold found only inside an other ("zoo" in ``read.zoo``) is not found.
- ``two-passage``: as the strict rule, but the numbers of the record's ``working`` (how a computed
  answer follows from the two facts, e.g. "2009 - 2005 = 4") are not rival candidates, so an answer may
  show its working.
- ``absent`` (the document does not answer; ``answers`` is empty): right when the answer says the
  document does not give it (``SAYS_ABSENT``: "not mentioned / stated / given / specified ...",
  "does not say / state / mention / specify ...", "no information / mention / details", "not in the
  document / text / paper ...", "cannot be determined / found / answered", "unknown", "unclear",
  "I don't know"), and does not go on to assert an answer: no guess after it (``GUESS``: "but",
  "however", "probably", "likely", "perhaps", "might be", "I think" ...), no number the question does
  not hold, and none of the record's ``absent_terms`` written as names (a capital or a digit: "GPL",
  "CUDA", "1813") that the question does not use: the document does not contain them, so naming one is
  an answer from outside it (lower-case terms such as "license" are only checked against the document).

Usage: ``python benchmarks/qa_scoring.py ANSWERS.jsonl...`` re-scores stored answers (the rows
``qa_accuracy.py`` writes, with their question ids) under both rules and prints the counts per run;
``--output`` keeps them as a result file with provenance.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_SET = ROOT / "benchmarks" / "qa_dev_set.jsonl"

NUMBER = re.compile(r"(?<![\w.,])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?(?![\w]|[.,]\d)")
YES_NO = {"yes", "no"}
SEVERAL = re.compile(r"\b(which|what)\b.*\b(are|were)\b|\blist\b|\bname (two|three|all)\b|\bwho are\b", re.I)
DESCRIPTIVE = ("about", "author")  # kinds whose answers describe or list: no three-short-items rule
OTHER = "\x01"  # stands for a masked non-answer name
_VERBS = (
    "mentioned|stated|given|specified|provided|listed|named|included|found|available|known|described|"
    "discussed|indicated|reported|covered|addressed|identified|shown|defined|clear"
)
SAYS_ABSENT = re.compile(
    rf"\bnot\s+(?:explicitly\s+|specifically\s+|directly\s+|clearly\s+)?(?:{_VERBS})\b"
    r"|\b(?:does|do|did)(?:n['’]t|\s+not)\s+(?:explicitly\s+|specifically\s+|directly\s+)?"
    r"(?:say|state|mention|specify|give|provide|include|contain|list|name|indicate|discuss|describe|tell|"
    r"reveal|report|address|cover|identify|compare|cite|explain|show)\b"
    r"|\bno\s+(?:information|mention|details?|data|indication|answer|reference|record)\b"
    r"|\bnot\s+(?:in|from|within)\s+the\s+(?:document|text|paper|passages?|material|manual|guide|book|"
    r"article|context|slides?|faq|standard|chart|novel)\b"
    r"|\b(?:cannot|can\s?not|can['’]t|could\s+not|couldn['’]t|unable\s+to)\s+(?:be\s+)?"
    r"(?:determined?|find|found|answer(?:ed)?|tell|told|say|know|identif(?:y|ied)|infer(?:red)?)\b"
    r"|\bunknown\b|\bunclear\b|\bi\s+(?:do\s+not|don['’]t)\s+know\b"
)
GUESS = re.compile(
    r"\b(?:but|however|although|though|yet|instead|probably|likely|presumably|perhaps|possibly|maybe"
    r"|(?:might|may|could|would)\s+be|i\s+(?:think|believe|guess)|the\s+answer\s+is)\b"
)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _numbers(text: str) -> set[str]:
    return {m.group(0).replace(",", "").rstrip("%").lstrip("+") for m in NUMBER.finditer(text)}


def _is_number(gold: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+%?", gold.strip()))


def _token_pattern(gold: str) -> str:
    plural = "(?:e?s)?" if gold[-1:].isalpha() and len(gold) > 3 else ""  # "hypergraphs" for "hypergraph"
    if gold[:1].isdigit() or gold[:1] == ".":
        return rf"(?<![\w.,]){re.escape(gold)}{plural}(?![\w]|[.,]\d)"
    return rf"(?<![\w]){re.escape(gold)}{plural}(?![\w]|[.,]\d)"


def _find(text: str, gold: str) -> re.Match | None:
    """``gold`` in ``text`` as whole tokens: no letter or digit glued to either end, and a number not
    continued by a decimal part or thousands group."""
    return re.search(_token_pattern(gold), text)


def lenient(answer: str, gold: list[str], match: str = "substring") -> bool:
    text = answer.lower()
    for g in gold:
        g = g.lower()
        if match == "word":
            if re.search(rf"(?<![\w]){re.escape(g)}(?![\w])", text):
                return True
        elif g in text:
            return True
    return False


def _clause(text: str, start: int, end: int) -> str:
    """The clause of ``text`` around [start, end): cut at sentence ends, semicolons and line breaks."""
    left = max(text.rfind(c, 0, start) for c in (". ", ";", "\n", "? ", "! "))
    rights = [i for i in (text.find(c, end) for c in (". ", ";", "\n", "? ", "! ")) if i >= 0]
    return text[left + 1 : min(rights) if rights else len(text)]


def _hedged(clause: str, found: str, *, lists: bool = True) -> bool:
    """The gold sits in "X or Y", or (``lists``) in a list of three or more items."""
    around = clause.replace(found, "\x00", 1)
    if re.search(r"\x00\s*(?:,\s*)?or\s+\S|\S\s+or\s+\x00|\beither\b", around):
        return True
    if not lists:
        return False
    # a list of candidates is short items; an apposition ("The outlier, Alaska, influences ...") is not
    items = [i for i in re.split(r",|\band\b|\bor\b|/", around) if i.strip()]
    short = [i for i in items if len(i.split()) <= 4]
    return len(short) >= 3 and any("\x00" in i for i in short)


def _mask(text: str, names: list[str]) -> tuple[str, list[tuple[int, str]]]:
    """``text`` with each whole-token occurrence of ``names`` (longest first) replaced by ``OTHER``, and
    the position in the masked text and name of each."""
    spans: list[tuple[int, int, str]] = []
    for name in sorted({_norm(n) for n in names if n.strip()}, key=len, reverse=True):
        for m in re.finditer(_token_pattern(name), text):
            if all(m.end() <= s or m.start() >= e for s, e, _ in spans):
                spans.append((m.start(), m.end(), name))
    out, named, at = [], [], 0
    for s, e, name in sorted(spans):
        out.append(text[at:s])
        named.append((sum(map(len, out)), name))
        out.append(OTHER)
        at = e
    return "".join(out) + text[at:], named


def strict(
    answer: str,
    gold: list[str],
    question: str = "",
    *,
    others: list[str] = (),
    lists: bool = True,
    numbers_from: str = "",
) -> tuple[bool, str]:
    """(correct, why): the gold found as whole tokens and no other candidate named.

    ``others``: names that are not the answer (wrong when named before the gold or beside it);
    ``lists=False`` drops the three-short-items rule (descriptions, author lists); the numbers of
    ``numbers_from`` (a computed answer's working) are not rival candidates.
    """
    text, named = _mask(_norm(answer), list(others))
    golds = [_norm(g) for g in gold if g.strip()]
    hit = next(((g, m) for g in golds if (m := _find(text, g))), None)
    if hit is None:
        return False, "no gold answer as whole tokens"
    found, m = hit
    first = min((mm.start() for g in golds if (mm := _find(text, g))), default=m.start())
    before = [name for at, name in named if at < first]
    if before:
        return False, f"names {before[0]} before the gold"
    beside = rf"(?<![\w]){re.escape(found)}\S*\s*(?:,|&|/|\band\b|\bor\b)\s*(?:the\s+)?{OTHER}"
    if b := re.search(beside, text):
        return False, f"the gold beside another candidate: {dict(named)[b.end() - 1]}"
    if any(g in YES_NO for g in golds) and YES_NO <= set(re.findall(r"\b(?:yes|no)\b", text)):
        return False, "both yes and no"
    if any(_is_number(g) for g in golds):
        allowed = {g.replace(",", "").rstrip("%").lstrip("+") for g in golds if _is_number(g)}
        rivals = _numbers(text) - allowed - _numbers(_norm(question)) - _numbers(_norm(numbers_from))
        if rivals:
            return False, f"other numbers named: {', '.join(sorted(rivals)[:4])}"
    clause = _clause(text, m.start(), m.end())
    if lists and not SEVERAL.search(question) and _hedged(clause, found):
        return False, "the gold among several candidates"
    if not lists and _hedged(clause, found, lists=False):
        return False, "the gold among several candidates"
    return True, "gold found"


def absent(answer: str, question: str = "", absent_terms: list[str] = ()) -> tuple[bool, str]:
    """(correct, why) for a question the document does not answer: the answer says so and asserts none."""
    text = _norm(answer)
    said = SAYS_ABSENT.search(text)
    if said is None:
        return False, "does not say the document lacks the answer"
    if guess := GUESS.search(text, said.end()):
        return False, f"goes on to guess ({guess.group(0)!r})"
    q = _norm(question)
    rivals = _numbers(text) - _numbers(q)
    if rivals:
        return False, f"names a number: {', '.join(sorted(rivals)[:4])}"
    for term in (t for t in absent_terms if t != t.lower() or any(c.isdigit() for c in t)):
        t = _norm(term)
        if not re.search(rf"(?<![\w]){re.escape(t)}", q) and re.search(rf"(?<![\w]){re.escape(t)}", text):
            return False, f"names {term!r}, which the document does not hold"
    return True, "says the document does not give it"


def grade(answer: str, item: dict) -> tuple[bool, str]:
    """(correct, why) under the strict rule for this record's kind (see the module docstring)."""
    if item.get("absent"):
        return absent(answer, item.get("question", ""), item.get("absent_terms", []))
    return strict(
        answer,
        item["answers"],
        item.get("question", ""),
        others=item.get("others", []),
        lists=item.get("kind") not in DESCRIPTIVE,
        numbers_from=item.get("working", ""),
    )


def grade_lenient(answer: str, item: dict) -> bool:
    """The lenient rule for a record: a gold anywhere, or for an absent question any "not given" phrase."""
    if item.get("absent"):
        return SAYS_ABSENT.search(_norm(answer)) is not None
    return lenient(answer, item["answers"], item.get("match", "substring"))


def rescore(paths: list[Path], dev_set: Path = DEV_SET) -> dict:
    """Counts per (file, mode, config) of correct answers under the lenient and the strict rule."""
    items = {r["id"]: r for r in map(json.loads, dev_set.read_text().splitlines()) if r}
    table = defaultdict(lambda: {"questions": 0, "lenient": 0, "strict": 0, "changed": []})
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            item = items.get(row.get("id"))
            if item is None or "answer" not in row:
                continue
            cell = table[f"{path.name} {row.get('mode', '')} {row.get('config', '')}".strip()]
            old = grade_lenient(row["answer"], item)
            new, why = grade(row["answer"], item)
            cell["questions"] += 1
            cell["lenient"] += old
            cell["strict"] += new
            if old != new:
                cell["changed"].append({"id": row["id"], "lenient": old, "strict": new, "why": why})
    return dict(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("answers", nargs="+", type=Path, help="answer rows written by qa_accuracy.py (JSONL)")
    p.add_argument("--dev-set", type=Path, default=DEV_SET, help="the questions and gold answers")
    p.add_argument("--output", type=Path, help="write the counts and every changed verdict as JSON")
    args = p.parse_args(argv)
    table = rescore(args.answers, args.dev_set)
    for name, cell in table.items():
        print(
            f"{name}: lenient {cell['lenient']}/{cell['questions']}, strict {cell['strict']}/{cell['questions']}"
        )
    if args.output:
        sys.path.insert(0, str(ROOT))
        from longlora.provenance import run_record

        payload = {"kind": "qa-rescore", "provenance": run_record(), "runs": table}
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
