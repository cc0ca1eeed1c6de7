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


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _numbers(text: str) -> set[str]:
    return {m.group(0).replace(",", "").rstrip("%").lstrip("+") for m in NUMBER.finditer(text)}


def _is_number(gold: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+%?", gold.strip()))


def _find(text: str, gold: str) -> re.Match | None:
    """``gold`` in ``text`` as whole tokens: no letter or digit glued to either end, and a number not
    continued by a decimal part or thousands group."""
    plural = "(?:e?s)?" if gold[-1:].isalpha() and len(gold) > 3 else ""  # "hypergraphs" for "hypergraph"
    pattern = rf"(?<![\w]){re.escape(gold)}{plural}(?![\w]|[.,]\d)"
    if gold[:1].isdigit() or gold[:1] == ".":
        pattern = rf"(?<![\w.,]){re.escape(gold)}{plural}(?![\w]|[.,]\d)"
    return re.search(pattern, text)


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


def _hedged(clause: str, found: str) -> bool:
    """The gold sits in "X or Y", or in a list of three or more items."""
    around = clause.replace(found, "\x00", 1)
    if re.search(r"\x00\s*(?:,\s*)?or\s+\S|\S\s+or\s+\x00|\beither\b", around):
        return True
    # a list of candidates is short items; an apposition ("The outlier, Alaska, influences ...") is not
    items = [i for i in re.split(r",|\band\b|\bor\b|/", around) if i.strip()]
    short = [i for i in items if len(i.split()) <= 4]
    return len(short) >= 3 and any("\x00" in i for i in short)


def strict(answer: str, gold: list[str], question: str = "") -> tuple[bool, str]:
    """(correct, why): the gold found as whole tokens and no other candidate named."""
    text = _norm(answer)
    golds = [_norm(g) for g in gold if g.strip()]
    hit = next(((g, m) for g in golds if (m := _find(text, g))), None)
    if hit is None:
        return False, "no gold answer as whole tokens"
    found, m = hit
    if any(g in YES_NO for g in golds) and YES_NO <= set(re.findall(r"\b(?:yes|no)\b", text)):
        return False, "both yes and no"
    if any(_is_number(g) for g in golds):
        allowed = {g.replace(",", "").rstrip("%").lstrip("+") for g in golds if _is_number(g)}
        others = _numbers(text) - allowed - _numbers(_norm(question))
        if others:
            return False, f"other numbers named: {', '.join(sorted(others)[:4])}"
    if not SEVERAL.search(question) and _hedged(_clause(text, m.start(), m.end()), found):
        return False, "the gold among several candidates"
    return True, "gold found"


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
            old = lenient(row["answer"], item["answers"], item.get("match", "substring"))
            new, why = strict(row["answer"], item["answers"], item["question"])
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
