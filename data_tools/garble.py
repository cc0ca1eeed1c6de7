"""Is a page's text language? A score per page, so garbled pages are reported instead of read.

PDF text is only as good as the font's mapping from glyphs to characters, and real PDFs break it
in a few recurring ways:

- **shifted glyph codes**: a font whose ``ToUnicode`` map is off by a constant gives "7KH" for
  "The" (every character moved by 29 code points) on every page it sets;
- **unmapped glyphs**: private-use code points (U+E000-F8FF), control characters, U+FFFD, or
  ``(cid:N)`` placeholders some extractors write;
- **legacy-encoded fonts**: a Khmer or Hebrew font that reuses Latin-1 slots gives runs of
  "ហdsិ.†៉.ÄÅ": letters of two scripts, or combining marks on symbols, inside one word;
- **wrong glyph numbers in a word**: LuaTeX 0.77 maps the Th/tt ligatures to CJK ideographs
  ("吀is" for "This"): a CJK character inside a Latin word.

``page_quality(text)`` scores one page: ``junk`` is the share of its non-space characters that sit
in words showing one of the marks above, and ``shift`` the code-point offset that turns the page
into English when it only reads as English after shifting (0 otherwise). A page is **garbled**
when ``junk > GARBLED_JUNK`` or ``shift != 0``; such a page is left out of the document text and
named in ``Document.garbled_pages``. A readable page with a few garbled words keeps its text and
lists their count (``PageQuality.junk_words``, tokens with letters only: a math symbol from a font
without a Unicode mapping is junk but not a garbled word) so reports can say so.

The threshold was measured on every page of the 14-file development corpus and the 3 fixture
papers (629 pages, ``python benchmarks/extraction.py``): clean pages score at most 0.057
(Unicode Khmer examples beside legacy-font ones), the legacy-font Khmer examples page 0.58; no
clean page, indexes and tables of contents included, gets a ``shift``, and a synthetic page in a
font shifted by 29 gets ``shift == 29``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

GARBLED_JUNK = 0.3  # share of non-space characters in junk words above which a page is garbled

# The most frequent short words of English, German, French and Spanish: running text hits them in
# 20-45% of its words, shifted glyph codes in none. Used only to compare a page with its shifted
# forms, so a page in another language is never called garbled by it.
_STOPWORDS = frozenset(
    "the of and to in is that for it as with was on be by are this or from at an not which "
    "can if has have but we you they its their these there one all will when use used also "
    "der die und das ist nicht ein eine den zu mit von sich auf für les des est une pour dans "
    "que qui pas sur par los las del por con para una"
    "".split()
)
_CID = re.compile(r"\(cid:\d+\)")
_EDGE_PUNCT = string.punctuation + "“”‘’«»„"
_SCRIPT_ALIASES = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HANGUL": "CJK", "IDEOGRAPHIC": "CJK"}
# Writing systems whose letters never share a word with Latin ones. Greek and the letter-like
# symbols (SCRIPT SMALL L, DOUBLE-STRUCK, MICRO SIGN) do, in math and units: "wℓ", "αβ-stable".
_SCRIPTS = frozenset(
    "LATIN CYRILLIC ARMENIAN HEBREW ARABIC SYRIAC THAANA DEVANAGARI BENGALI GURMUKHI GUJARATI "
    "ORIYA TAMIL TELUGU KANNADA MALAYALAM SINHALA THAI LAO TIBETAN MYANMAR GEORGIAN ETHIOPIC "
    "KHMER MONGOLIAN CJK".split()
)


@dataclass(frozen=True)
class PageQuality:
    """How much of one page's text is language; ``garbled`` pages are left out of documents."""

    junk: float  # share of non-space characters inside junk words, 0..1
    junk_words: int  # junk tokens with a letter in them ("吀is"): garbled words, not stray symbols
    shift: int = 0  # code-point offset that makes the page English ("7KH" -> "The": +29), 0 if none

    @property
    def garbled(self) -> bool:
        return self.shift != 0 or self.junk > GARBLED_JUNK


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    first = name.split(" ", 1)[0]
    return _SCRIPT_ALIASES.get(first, first)


def is_junk_word(word: str) -> bool:
    """True when a whitespace-free token cannot be language (see the module doc for the marks)."""
    if "(cid:" in word and _CID.search(word):
        return True
    scripts = set()
    previous = ""
    for ch in word:
        if ch.isascii():
            if ch < " " or ch == "\x7f":
                return True
            if ch.isalpha():
                scripts.add("LATIN")
            previous = ch
            continue
        cat = unicodedata.category(ch)
        if cat in ("Co", "Cc", "Cs", "Cn") or ch == "\ufffd":
            return True
        if cat in ("Mn", "Mc"):
            # a combining mark belongs on a letter (or on another mark); on a symbol it is a
            # legacy font's glyph slot read as a character
            if previous and not (previous.isalpha() or unicodedata.category(previous) in ("Mn", "Mc")):
                return True
        elif cat.startswith("L"):
            script = _script(ch)
            if script in _SCRIPTS:
                scripts.add(script)
        previous = ch
    return len(scripts) > 1


def _stopwords_in(tokens: list[str]) -> list[str]:
    """The tokens that are stopwords once punctuation at their ends is stripped (lower case)."""
    words = (t.strip(_EDGE_PUNCT).lower() for t in tokens)
    return [w for w in words if w in _STOPWORDS]


def _shift_table(k: int) -> dict[int, int]:
    # only printable ASCII moves; a character that would leave that range breaks the word (NUL)
    return {c: (c + k if 33 <= c + k <= 126 else 0) for c in range(33, 127)}


_SHIFT_TABLES = {k: _shift_table(k) for k in range(-93, 94) if k}


def detect_shift(text: str, sample_words: int = 300) -> int:
    """The code-point offset ``k`` for which ``text`` shifted by ``k`` reads as English/German/
    French/Spanish while ``text`` itself does not; 0 when there is none (or too few words to tell).

    "7KH 'HELDQ" -> +29 ("The Debian"). Tries every offset that keeps printable ASCII printable.
    Both rates count stopwords per whitespace token of the same sample, and the shifted text must
    hit at least five different stopwords, so an index, a table of contents or a table of numbers
    (few stopwords either way; digits shifted to letters) is not mistaken for shifted text.
    """
    tokens = text.split()[:sample_words]
    if len(tokens) < 20 or len(_stopwords_in(tokens)) >= 0.05 * len(tokens):
        return 0
    sample = " ".join(tokens)
    best, best_hits = 0, 0
    for k, table in _SHIFT_TABLES.items():
        hits = _stopwords_in(sample.translate(table).split(" "))
        if len(hits) > best_hits and len(set(hits)) >= 5:
            best, best_hits = k, len(hits)
    # running text hits 20-45% stopwords; 15% leaves room for short or list-like pages
    return best if best_hits >= 0.15 * len(tokens) else 0


def page_quality(text: str) -> PageQuality:
    """Score one page's (character-normalised) text; see ``PageQuality``."""
    words = text.split()
    total = sum(len(w) for w in words)
    if not total:
        return PageQuality(0.0, 0)
    junk_words = [w for w in words if not w.isascii() or "(cid:" in w or not w.isprintable()]
    junk_words = [w for w in junk_words if is_junk_word(w)]
    junk = sum(len(w) for w in junk_words) / total
    shift = detect_shift(text) if junk <= GARBLED_JUNK else 0
    lettered = sum(any(ch.isalpha() for ch in w) for w in junk_words)
    return PageQuality(junk, lettered, shift)


def garbled_summary(numbers: list[int], limit: int = 12) -> str:
    """'3, 4, 9' or '3, 4, ... (20 pages)' for a warning line."""
    if len(numbers) <= limit:
        return ", ".join(map(str, numbers))
    return ", ".join(map(str, numbers[:limit])) + f", ... ({len(numbers)} pages)"
