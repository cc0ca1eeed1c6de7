"""Every measured figure in the README and docs/ has a committed result file behind it.

A *figure* is a number with a unit of measurement (``1.76x``, ``12.4%``, ``83.5 s``, ``8157 MiB``,
``61.3 tokens/s``, ``18/40``) or a decimal in a table (perplexities, scores). Not figures: numbers inside
code (``--max-steps 32``), version numbers, whole-number factors (``4x`` longer context), small fractions
(``1/4`` of the context), confidence levels (a "95% interval") and targets (a number right after
"target", ">=", "<=", "≥" or "≤"). Each Markdown block holding figures (a
paragraph, a list, a table) must name an existing file under ``results/`` in the block itself or in the
block right before or after it (a table's caption), for example ``(results/train-step-16k.json)``.

    python benchmarks/figures.py            # lists uncovered blocks; exit status 1 if there are any
    python benchmarks/figures.py --all      # also lists covered blocks with their result files

The test suite runs the same check (tests/test_figures.py), so CI fails on a figure without a file.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/*.md")

_UNIT = (
    r"(?:x\b|×|%|\s?(?:ms|s|sec|seconds|min|minutes|h|hours|GB|GiB|MB|MiB|KB|KiB|TB/s|GB/s|TFLOP/s"
    r"|tok/s|tokens/s|tokens/second)\b)"
)
FIGURE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?" + _UNIT + r"|(?<![\w./])\d+/\d+(?![\w./])")
TABLE_DECIMAL = re.compile(r"(?<![\w./-])\d+\.\d+(?![\w.])")
VERSION = re.compile(r"\b\d+\.\d+\.\d+\b|\bv\d+(?:\.\d+)*\b")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
RESULT = re.compile(r"(?:\.\./)*results/[\w./+-]+")


@dataclass
class Block:
    path: Path
    line: int
    text: str
    kind: str  # paragraph, list, table, heading
    figures: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)


def blocks(path: Path) -> list[Block]:
    """Markdown blocks outside fenced code: runs of non-blank lines, a table apart from prose."""
    out, current, start, fenced = [], [], 0, False

    def flush():
        if current:
            text = "\n".join(current)
            kind = "table" if all(line.lstrip().startswith("|") for line in current) else "paragraph"
            if kind == "paragraph" and current[0].lstrip().startswith(("- ", "* ", "1. ")):
                kind = "list"
            if current[0].startswith("#"):
                kind = "heading"
            out.append(Block(path, start + 1, text, kind))
            current.clear()

    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.lstrip().startswith("```"):
            flush()
            fenced = not fenced
            continue
        if fenced:
            continue
        if not line.strip() or line.startswith("#"):
            flush()
            if line.startswith("#"):
                start = i
                current.append(line)
                flush()
            continue
        is_table = line.lstrip().startswith("|")
        if current and is_table != current[-1].lstrip().startswith("|"):
            flush()
        if not current:
            start = i
        current.append(line)
    flush()
    return out


TARGET = re.compile(r"(?:target[^\d\n]{0,12}|>=\s?|<=\s?|≥\s?|≤\s?)$", re.IGNORECASE)
WHOLE_FACTOR = re.compile(r"\d+\s?(?:x|×)")
SMALL_FRACTION = re.compile(r"\d+/[1-4]")


CONFIDENCE = re.compile(r"\s*(?:Wilson\s+|score\s+)*(?:confidence|interval|CI)\b", re.IGNORECASE)


def _is_figure(text: str, m: re.Match) -> bool:
    token = m.group(0).strip()
    if WHOLE_FACTOR.fullmatch(token) or SMALL_FRACTION.fullmatch(token):
        return False
    if token.endswith("%") and CONFIDENCE.match(text, m.end()):  # a 95% interval: a level, not a result
        return False
    return not TARGET.search(text[max(0, m.start() - 16) : m.start()])


def figures_in(block: Block) -> list[str]:
    text = CODE_SPAN.sub(" ", block.text)
    text = LINK_TARGET.sub("]", text)  # link targets are addresses, not figures
    text = VERSION.sub(" ", text)
    found = [m.group(0).strip() for m in FIGURE.finditer(text) if _is_figure(text, m)]
    if block.kind == "table":
        rows = text.splitlines()
        body = [r for r in rows if not re.fullmatch(r"[\s|:-]+", r)][1:]  # the header names columns
        found += [m.group(0) for r in body for m in TABLE_DECIMAL.finditer(r)]
    return found


def results_in(block: Block) -> list[str]:
    names = []
    for m in RESULT.finditer(block.text):
        name = re.sub(r"^(?:\.\./)*", "", m.group(0)).rstrip(".,;:)")
        names.append(name)
    return names


def check(paths: list[Path]) -> tuple[list[Block], list[Block]]:
    """(covered, uncovered) blocks with figures, over ``paths``."""
    covered, uncovered = [], []
    for path in paths:
        bs = blocks(path)
        for b in bs:
            b.figures = figures_in(b) if b.kind != "heading" else []
            b.results = results_in(b)
        for i, b in enumerate(bs):
            if not b.figures:
                continue
            near = [b] + [bs[j] for j in (i - 1, i + 1) if 0 <= j < len(bs) and bs[j].kind != "heading"]
            cited = [r for n in near for r in n.results]
            existing = list(dict.fromkeys(r for r in cited if (ROOT / r).exists()))
            b.results = existing
            (covered if existing else uncovered).append(b)
    return covered, uncovered


def documents() -> list[Path]:
    return sorted(p for pattern in DOCUMENTS for p in ROOT.glob(pattern))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="also list covered blocks and their result files")
    args = p.parse_args(argv)
    covered, uncovered = check(documents())
    if args.all:
        for b in covered:
            print(
                f"ok   {b.path.relative_to(ROOT)}:{b.line}  {', '.join(b.figures[:4])}  <- {', '.join(b.results)}"
            )
    for b in uncovered:
        print(f"MISSING {b.path.relative_to(ROOT)}:{b.line}  figures {', '.join(b.figures[:6])}")
    print(f"{len(covered)} blocks with figures cite a result file; {len(uncovered)} do not", file=sys.stderr)
    return 1 if uncovered else 0


if __name__ == "__main__":
    raise SystemExit(main())
