"""Cleaning steps that text extracted from real papers and books needs.

Each step is a pure function of strings, so each can be tested on crafted input:

- ``normalize_characters``: ligatures (U+FB00-FB06) and other compatibility characters (no-break and
  typographic spaces, full-width forms, math-alphabet letters, the ellipsis) to their plain forms;
  control, format (soft hyphen, zero-width) and private-use characters removed.
- ``join_hyphenated``: words split across line ends ("Soft-\\nware") joined; a hyphen the document
  uses elsewhere ("object-oriented") is kept.
- ``remove_running_lines``: running headers, footers and page numbers (lines repeated at the top or
  bottom of many pages, digits ignored) removed.
- ``cut_references``: the references / bibliography section cut (an appendix after it is kept).
- ``reflow``: lines wrapped by the typesetter joined into paragraphs; short lines, code, list items
  and headings keep their line breaks.
- ``glued_word_ratio``: how much of a text is words glued together ("Hereareafewbasicmethods"),
  the symptom of pypdf losing the inter-word spaces of some LaTeX PDFs. PDFium reads those PDFs
  with their spaces, so extraction no longer re-reads pages by it; it stays as a diagnostic.

``clean_pages`` runs them in order on a document's pages and ``join_pages`` joins the cleaned pages,
recording each page's exact character span in the final text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

# ---------------------------------------------------------------------------------------------
# Characters

LIGATURES = {
    "\ufb00": "ff",
    "\ufb01": "fi",
    "\ufb02": "fl",
    "\ufb03": "ffi",
    "\ufb04": "ffl",
    "\ufb05": "st",
    "\ufb06": "st",
}

# Unicode decomposition tags whose NFKC form is the same text in a plainer spelling. Superscripts,
# subscripts, fractions and circled forms change meaning when flattened, so they are kept.
_FLATTEN_TAGS = ("<compat>", "<noBreak>", "<wide>", "<narrow>", "<font>", "<small>", "<vertical>")


def _char_replacement(ch: str) -> str:
    if ch in LIGATURES:
        return LIGATURES[ch]
    if ch in "\n\t ":
        return ch
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Cf", "Co", "Cs", "Cn") and ch not in "\u200d":
        # control (\x02 from math fonts), format (soft hyphen, zero-width space, BOM),
        # private use (math symbols without a Unicode mapping), surrogates, unassigned
        return ""
    if ch == "\u200d":
        return ""
    if cat == "Zs":  # all the typographic spaces
        return " "
    if cat in ("Zl", "Zp"):
        return "\n"
    decomposition = unicodedata.decomposition(ch)
    if decomposition.startswith(_FLATTEN_TAGS):
        flat = unicodedata.normalize("NFKC", ch)
        # "´" (U+00B4) flattens to space + combining accent: in math fonts it is a symbol, keep it.
        if flat and not any(unicodedata.combining(c) for c in flat):
            return flat
    return ch


_CHAR_CACHE: dict[str, str] = {}


def normalize_characters(text: str) -> str:
    """Ligatures and compatibility characters to plain text; control/format/private-use removed.

    Line ends are normalised to ``\\n``, tabs become spaces.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    out = []
    for ch in text:
        if ch.isascii() and (ch >= " " or ch == "\n"):
            out.append(ch)
            continue
        rep = _CHAR_CACHE.get(ch)
        if rep is None:
            rep = _CHAR_CACHE[ch] = _char_replacement(ch)
        out.append(rep)
    return "".join(out)


def has_ligatures(text: str) -> bool:
    return any(ch in text for ch in LIGATURES)


# ---------------------------------------------------------------------------------------------
# Hyphenation

_HYPHEN_BREAK = re.compile(r"([^\W\d_]+)-[ ]*\n[ ]*([a-z][^\W\d_]*)(\S*)[ ]*(\n|$)?")


def word_counts(text: str) -> Counter[str]:
    """Lower-case word counts (hyphenated compounds as one word), line-end hyphenations excluded:
    the vocabulary ``join_hyphenated`` consults. Build it from the whole document."""
    body = _HYPHEN_BREAK.sub(" ", text)
    return Counter(w.lower() for w in re.findall(r"[^\W\d_]+(?:-[^\W\d_]+)*", body))


def join_hyphenated(text: str, vocabulary: Counter[str] | None = None) -> str:
    """Join words hyphenated across line ends: "soft-\\nware is" -> "software\\nis".

    The completed word (with punctuation attached to it) moves up to the first line; the rest of the
    second line stays on its own line. The hyphen is kept ("real-world") when the document writes
    the hyphenated form more often than the joined one, or writes neither but uses both halves as
    words of three letters or more. ``vocabulary`` is ``word_counts`` of the whole document
    (default: of ``text``). Breaks after a digit or before a capital ("C-\\nLevel") are left alone.
    """
    words = word_counts(text) if vocabulary is None else vocabulary

    def fix(m: re.Match) -> str:
        a, b, tail, line_end = m.group(1), m.group(2), m.group(3), m.group(4)
        joined, hyphenated = words[(a + b).lower()], words[f"{a}-{b}".lower()]
        keep = hyphenated > joined or (
            joined == hyphenated == 0 and min(len(a), len(b)) >= 3 and words[a.lower()] and words[b.lower()]
        )
        word = f"{a}-{b}" if keep else a + b
        # the second line held only this word: its line end is the one we keep
        return word + tail + ("\n" if line_end is None else line_end)

    return _HYPHEN_BREAK.sub(fix, text)


# ---------------------------------------------------------------------------------------------
# Running headers, footers, page numbers

_PAGE_NUMBER = re.compile(
    r"^[\s\-–—|]*(?:page\s*|p\.\s*|seite\s*)?(?:\d{1,4}|[ivxlc]{1,7})"
    r"(?:\s*(?:of|/|von)\s*\d{1,4})?[\s\-–—|]*$",
    re.IGNORECASE,
)


def is_page_number_line(line: str) -> bool:
    """'12', '- 12 -', 'Page 3 of 19', 'xiv' (a line that is only a page number)."""
    return bool(line.strip()) and bool(_PAGE_NUMBER.match(line.strip()))


def _line_key(line: str) -> str:
    key = re.sub(r"\d+", "#", line.strip().lower())
    return re.sub(r"\s+", " ", key)


def _zone(lines: list[str], size: int) -> tuple[list[int], list[int]]:
    """Indices of the first and last ``size`` non-blank lines."""
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    return nonblank[:size], nonblank[-size:] if size else []


def running_line_keys(pages: list[str], zone: int = 3, min_fraction: float = 0.25) -> set[str]:
    """Keys of lines repeated near the top or bottom of many pages (digits ignored).

    A line counts when it is one of the first or last ``zone`` non-blank lines of a page, holds at
    least three letters and at most 150 characters, and its key (lower case, digits as '#')
    appears there on at least max(2, ceil(min_fraction * pages)) pages. Documents with fewer than
    three pages have no running lines.
    """
    if len(pages) < 3:
        return set()
    top: Counter[str] = Counter()
    bottom: Counter[str] = Counter()
    for page in pages:
        lines = page.split("\n")
        head, tail = _zone(lines, zone)
        top.update({_line_key(lines[i]) for i in head})
        bottom.update({_line_key(lines[i]) for i in tail})
    need = max(2, math.ceil(min_fraction * len(pages)))
    keys = {k for c in (top, bottom) for k, n in c.items() if n >= need}
    return {k for k in keys if len(re.findall(r"[^\W\d_]", k)) >= 3 and len(k) <= 150}


def remove_running_lines(pages: list[str], zone: int = 3, min_fraction: float = 0.25) -> list[str]:
    """Drop running headers/footers (see ``running_line_keys``) and bare page-number lines.

    Only lines in the top/bottom zone of each page are candidates, so body text that happens to
    repeat a header's words is kept.
    """
    keys = running_line_keys(pages, zone, min_fraction)
    out = []
    for page in pages:
        lines = page.split("\n")
        head, tail = _zone(lines, zone)
        drop = {
            i for i in set(head) | set(tail) if _line_key(lines[i]) in keys or is_page_number_line(lines[i])
        }
        out.append("\n".join(line for i, line in enumerate(lines) if i not in drop))
    return out


# ---------------------------------------------------------------------------------------------
# References

_REFERENCES_HEADING = re.compile(
    r"^\s*(?:\d+(?:\.\d+)*\.?\s+|[A-Z]\.\s+|[IVX]+\.\s+)?"
    r"(?:references|bibliography|works cited|literature cited|literature|reference list|citations)\s*:?\s*$",
    re.IGNORECASE,
)
_AFTER_REFERENCES = re.compile(
    r"^\s*(?:appendix\b|appendices\b|supplementary|[A-Z]\.\s+[A-Z]\S*|[A-Z]\.\d+\.?\s+\S|affiliation:?\s*$)",
    re.IGNORECASE,
)


def find_references(pages: list[str]) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """Locate the references section as ((page, line), (page, line)) start/end (end exclusive).

    The heading is the last line that is only "References" / "Bibliography" / ... (optionally
    numbered) in the second half of the document; the section ends at the next appendix heading
    ("Appendix ...", "A. R code") or "Affiliation:" block, or at the end of the document.
    """
    lines = [(p, i, line) for p, page in enumerate(pages) for i, line in enumerate(page.split("\n"))]
    sizes = [len(line) + 1 for _, _, line in lines]
    total = sum(sizes)
    start, pos = None, 0
    for k, (_, _, line) in enumerate(lines):
        if pos >= total * 0.4 and _REFERENCES_HEADING.match(line):
            start = k
        pos += sizes[k]
    if start is None:
        return None
    end = len(lines)
    for k in range(start + 1, len(lines)):
        line = lines[k][2]
        if _AFTER_REFERENCES.match(line) and not re.match(r"^\s*[A-Z]\.\s+[A-Z][a-z]*\s*(?:,|\(|$)", line):
            end = k
            break
    first = (lines[start][0], lines[start][1])
    last = (lines[end][0], lines[end][1]) if end < len(lines) else (len(pages), 0)
    return first, last


def cut_references(pages: list[str]) -> list[str]:
    """The pages without their references section (pages keep their count; some may become empty)."""
    found = find_references(pages)
    if found is None:
        return list(pages)
    (p0, l0), (p1, l1) = found
    out = []
    for p, page in enumerate(pages):
        lines = page.split("\n")
        keep = [line for i, line in enumerate(lines) if not ((p, i) >= (p0, l0) and (p, i) < (p1, l1))]
        out.append("\n".join(keep))
    return out


# ---------------------------------------------------------------------------------------------
# Reflow

_CODE_START = re.compile(r"^\s*(?:R>|>>>|>|\+ |\$ |In \[\d*\]:|#|//|\{|\}|\[\d+\])")
_LIST_START = re.compile(r"^\s*(?:[•●▪◦∙·*–—-]\s|\(?[a-z0-9]{1,3}[.)]\s|\([ivx]+\)\s)")
_HEADING = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.?|[A-Z]\.(?:\d+\.?)?)\s+[A-Z]")
_SYMBOLS = re.compile(r"[{}()\[\];=<>_\\$@&|^~]")


def _is_codey(line: str) -> bool:
    s = line.strip()
    if not s:
        return False
    if _CODE_START.match(s):
        return True
    return len(_SYMBOLS.findall(s)) / len(s) > 0.12


def typical_line_length(pages: list[str]) -> int:
    """The length of a full line of body text: the 80th percentile of non-blank line lengths."""
    lengths = sorted(len(line.strip()) for page in pages for line in page.split("\n") if line.strip())
    if not lengths:
        return 0
    return lengths[min(len(lengths) - 1, int(0.8 * len(lengths)))]


def reflow(text: str, width: int | None = None) -> str:
    """Join lines the typesetter wrapped into paragraphs.

    A line is joined to the next with a space when it is a full line (at least 75% of ``width``,
    the typical line length; computed from ``text`` when not given) and neither it nor the next line
    looks like code, a list item or a heading. A short line ending a sentence ends a paragraph
    (blank line after it); other breaks stay single newlines. Runs of spaces collapse to one.
    """
    lines = [re.sub(r" {2,}", " ", line).strip() for line in text.split("\n")]
    if width is None:
        width = typical_line_length([text])
    out: list[str] = []
    for i, line in enumerate(lines):
        if not line:
            if out and out[-1] not in ("\n", "\n\n"):
                out.append("\n\n")
            elif out and out[-1] == "\n":
                out[-1] = "\n\n"
            continue
        out.append(line)
        if i + 1 >= len(lines):
            break
        nxt = lines[i + 1]
        if not nxt:
            continue
        full = width > 0 and len(line) >= 0.75 * width
        if (
            full
            and not _is_codey(line)
            and not _is_codey(nxt)
            and not _LIST_START.match(nxt)
            and not _HEADING.match(nxt)
        ):
            out.append(" ")
        elif not full and re.search(r"[.!?:]['\"”’)]*$", line) and not _is_codey(line):
            out.append("\n\n")
        else:
            out.append("\n")
    result = "".join(out).strip()
    return re.sub(r"\n{3,}", "\n\n", result)


# ---------------------------------------------------------------------------------------------
# Glued words

_LETTER_RUN = re.compile(r"[^\W\d_]+")


def glued_word_ratio(text: str, min_run: int = 16) -> float:
    """Fraction of letters that sit in runs of at least ``min_run`` letters.

    English words that long are rare (well under 5% of letters even in a paper that says
    "heteroskedasticity" on every page); text whose spaces were lost ("Hereareafewbasicmethods")
    scores above 0.5. Returns 0.0 for text without letters.
    """
    runs = _LETTER_RUN.findall(text)
    letters = sum(len(r) for r in runs)
    if not letters:
        return 0.0
    return sum(len(r) for r in runs if len(r) >= min_run) / letters


GLUED_THRESHOLD = 0.25


# ---------------------------------------------------------------------------------------------
# Pipeline


def clean_pages(pages: list[str], *, drop_references: bool = False, running_lines: bool = True) -> list[str]:
    """All cleaning steps on a document's pages, in order; returns as many pages as it was given."""
    pages = [normalize_characters(p) for p in pages]
    pages = [re.sub(r"[ ]+\n", "\n", p) for p in pages]
    if running_lines:
        pages = remove_running_lines(pages)
    if drop_references:
        pages = cut_references(pages)
    vocabulary = word_counts("\n".join(pages))
    pages = [join_hyphenated(p, vocabulary) for p in pages]
    width = typical_line_length(pages)
    return [reflow(p, width) for p in pages]


def join_pages(pages: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join cleaned pages into one text; returns (text, [(start, end) per page]).

    ``text[start:end]`` is exactly the page's (possibly adjusted) text. Pages are separated by a
    blank line, or by a space when a sentence runs on to the next page; a word hyphenated across a
    page break is joined on the earlier page. Empty pages get an empty span at their position.
    """
    pages = [p.strip() for p in pages]
    for i in range(len(pages) - 1):
        j = next((k for k in range(i + 1, len(pages)) if pages[k]), None)
        if j is None:
            break
        m = re.search(r"([^\W\d_]+)-$", pages[i])
        n = re.match(r"[a-z][^\W\d_]*", pages[j])
        if m and n:
            pages[i] = pages[i][:-1] + n.group(0)
            pages[j] = pages[j][n.end() :].lstrip(" ")
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    prev = ""
    for page in pages:
        if page and prev:
            run_on = not re.search(r"[.!?:;\"”’)\]]$", prev) and re.match(r"[a-z(]", page)
            sep = " " if run_on else "\n\n"
            parts.append(sep)
            pos += len(sep)
        spans.append((pos, pos + len(page)))
        parts.append(page)
        pos += len(page)
        if page:
            prev = page
    return "".join(parts), spans
