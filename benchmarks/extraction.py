"""Extraction quality against pdftotext (poppler-utils), the yardstick, on the fixture PDFs.

Usage:
    python benchmarks/extraction.py                        # the fixture PDFs
    python benchmarks/extraction.py paper.pdf other.pdf    # any PDFs

For each PDF it prints:
- pypdf default words: what plain ``page.extract_text()`` gives (glued words show up as fewer words);
- words: whitespace-separated words of our text vs pdftotext's (diff in %), raw and after removing
  the running headers/footers from pdftotext's pages the same way we do ("content" words), since
  pdftotext keeps headers, footers and page numbers;
- phrases: share of 200 seeded random 5-word phrases from pdftotext's lines found in our text;
- ligatures: ligature code points (U+FB00-FB06) left in our text;
- glued: letter runs of 20+ letters in our text that pdftotext does not have (glued words).
A synthetic PDF that loses its word spaces in pypdf's default mode is added as a last row.
Target: |content words diff| <= 3% on every fixture, no ligatures, no glued runs.
Needs `pdftotext` (Debian/Ubuntu: `apt-get install poppler-utils`); skips with a message otherwise.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from data_tools import load_document  # noqa: E402
from data_tools.clean import LIGATURES, normalize_characters, remove_running_lines  # noqa: E402
from data_tools.minipdf import write_text_pdf  # noqa: E402

FIXTURES = os.environ.get("LONGLORA_FIXTURES") or str(
    Path(__file__).resolve().parents[2] / "shared" / "fixtures"
)
DEFAULT_PDFS = ["rcpp-jss-2011.pdf", "sandwich-hac-jss.pdf", "zoo-faq.pdf"]

GLUED_SAMPLE = [
    "Here are a few basic methods that we use to build the interface between",
    "the two systems, and how the package maps objects between them. The first",
    "method converts vectors and matrices; the second one handles functions and",
    "environments, which are passed by reference rather than copied.",
]


def pdftotext_pages(path: str) -> list[str]:
    out = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", path, "-"], check=True, capture_output=True, text=True
    )
    pages = out.stdout.split("\f")
    return pages[:-1] if pages and not pages[-1].strip() else pages


def squash(text: str) -> str:
    return " ".join(normalize_characters(text).split())


def phrase_recall(ours: str, reference_pages: list[str], n: int = 200, seed: int = 0) -> float:
    rng = random.Random(seed)
    lines = [line.split() for page in reference_pages for line in page.split("\n")]
    candidates = [w for w in lines if len(w) >= 7 and not w[-1].endswith("-")]
    ours_flat = squash(ours)
    picks = [rng.choice(candidates) for _ in range(n)]
    found = 0
    for words in picks:
        i = rng.randrange(0, len(words) - 4)
        if squash(" ".join(words[i : i + 5])) in ours_flat:
            found += 1
    return found / n


def measure(path: str) -> dict:
    t0 = time.perf_counter()
    doc = load_document(path)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_pages = pdftotext_pages(path)
    t_ref = time.perf_counter() - t0
    ref_words = sum(len(p.split()) for p in ref_pages)
    content_pages = remove_running_lines([normalize_characters(p) for p in ref_pages])
    content_words = sum(len(p.split()) for p in content_pages)
    import pypdf

    raw_words = sum(len((page.extract_text() or "").split()) for page in pypdf.PdfReader(path).pages)
    ref_vocab = set(re.findall(r"[^\W\d_]+", normalize_characters("\n".join(ref_pages))))
    glued = [r for r in re.findall(r"[^\W\d_]{20,}", doc.text) if r not in ref_vocab]
    return {
        "file": os.path.basename(path),
        "pages": doc.num_pages,
        "raw": raw_words,
        "ours": doc.word_count,
        "pdftotext": ref_words,
        "raw_diff": 100 * (doc.word_count - ref_words) / ref_words,
        "content": content_words,
        "content_diff": 100 * (doc.word_count - content_words) / content_words,
        "phrases": phrase_recall(doc.text, ref_pages),
        "ligatures": sum(doc.text.count(c) for c in LIGATURES),
        "glued": len(glued),
        "time_ratio": t_ours / max(t_ref, 1e-9),
        "notes": "; ".join(doc.notes),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if shutil.which("pdftotext") is None:
        print(
            "SKIPPED: pdftotext not found; install poppler-utils (apt-get install poppler-utils) to run this benchmark"
        )
        return 0
    paths = argv or [os.path.join(FIXTURES, f) for f in DEFAULT_PDFS]
    rows = [measure(p) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        glued = os.path.join(tmp, "synthetic-glued.pdf")
        write_text_pdf(glued, [GLUED_SAMPLE, GLUED_SAMPLE[::-1]], glued=True)
        rows.append(measure(glued))
    header = (
        "| file | pages | pypdf default words | words (ours) | pdftotext words | diff | pdftotext content words | content diff "
        "| phrases found | ligatures left | glued runs | time ours/pdftotext |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(
            f"| {r['file']} | {r['pages']} | {r['raw']:,} | {r['ours']:,} | {r['pdftotext']:,} | {r['raw_diff']:+.1f}% "
            f"| {r['content']:,} | {r['content_diff']:+.1f}% | {100 * r['phrases']:.1f}% | {r['ligatures']} "
            f"| {r['glued']} | {r['time_ratio']:.1f}x |"
        )
    for r in rows:
        if r["notes"]:
            print(f"note: {r['file']}: {r['notes']}")
    bad = [r["file"] for r in rows if abs(r["content_diff"]) > 3 or r["ligatures"] or r["glued"]]
    print(
        "target (|content diff| <= 3%, no ligatures, no glued runs):",
        "MISSED on " + ", ".join(bad) if bad else "met",
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
