"""Documents: a file (.pdf, .txt, .md) or pasted text as clean text with a page map.

    >>> doc = load_document("paper.pdf", drop_references=True)
    >>> doc.num_pages, doc.word_count
    >>> doc.pages_for_span(1200, 1800)        # pages a passage of doc.text came from
    [2]

For PDFs each page is cleaned separately and the pages are joined, so ``PageSpan`` character spans
are exact in the final ``text``: ``doc.text[span.start:span.end]`` is that page's text.

Pages whose text is not language (a font that maps glyphs to wrong characters: "7KH" for "The",
private-use code points, legacy-encoded scripts; see ``data_tools.garble``) are left out of
``text`` (their span is empty) and listed in ``doc.garbled_pages``; ``doc.warning`` says so in one
line for a report or the app's document card, and ``doc.page_quality`` holds every page's score.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .clean import clean_pages, join_pages, normalize_characters, reflow
from .errors import (
    CorruptFileError,
    DocumentError,
    EmptyDocumentError,
    NoTextLayerError,
    UnsupportedFileTypeError,
)
from .garble import PageQuality, garbled_summary
from .pdf import read_pdf_pages

# A kept page with at least this many garbled words ("吀is" for "This") is named in the warning;
# fewer are math symbols from fonts without a Unicode mapping, seen on clean papers too.
GARBLED_WORDS_TO_WARN = 3

KINDS_BY_SUFFIX = {".pdf": "pdf", ".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md"}
SUPPORTED = ".pdf, .txt, .md"

_CONVERT_HINTS = {
    ".docx": "save it as PDF or plain text",
    ".doc": "save it as PDF or plain text",
    ".odt": "save it as PDF or plain text",
    ".rtf": "save it as plain text",
    ".epub": "convert it to text (e.g. `ebook-convert book.epub book.txt`)",
    ".html": "save the page as PDF or copy its text into a .txt file",
    ".htm": "save the page as PDF or copy its text into a .txt file",
    ".djvu": "convert it to PDF (e.g. `ddjvu -format=pdf`)",
}


@dataclass(frozen=True)
class PageSpan:
    """Page ``number`` (1-based) is ``text[start:end]`` of its document."""

    number: int
    start: int
    end: int


@dataclass
class Document:
    text: str
    name: str
    path: str | None = None
    kind: str = "txt"
    pages: list[PageSpan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how extraction went, for reports
    garbled_pages: list[int] = field(default_factory=list)  # 1-based PDF pages left out: not language
    page_quality: list[PageQuality] = field(default_factory=list)  # one per PDF page (data_tools.garble)
    ocr_pages: list[int] = field(default_factory=list)  # 1-based PDF pages read by OCR
    respaced_pages: list[int] = field(default_factory=list)  # 1-based PDF pages spaced from char boxes

    @property
    def garbled_word_pages(self) -> list[int]:
        """Kept pages with ``GARBLED_WORDS_TO_WARN`` or more garbled words (their text is kept)."""
        return [
            i + 1
            for i, q in enumerate(self.page_quality)
            if not q.garbled and q.junk_words >= GARBLED_WORDS_TO_WARN
        ]

    @property
    def warning(self) -> str:
        """One line about text the reader could not trust, for a report or a document card; ""
        when there is none."""
        parts = []
        if self.garbled_pages:
            parts.append(
                f"{len(self.garbled_pages)} of {self.num_pages} page(s) are not readable text "
                f"(the PDF's fonts map glyphs to wrong characters) and were left out: pages "
                f"{garbled_summary(self.garbled_pages)}; load it with OCR (--ocr / ocr=True) to read them"
            )
        words = self.garbled_word_pages
        if words:
            count = sum(self.page_quality[p - 1].junk_words for p in words)
            parts.append(f"{count} garbled word(s) kept on page(s) {garbled_summary(words)}")
        if self.ocr_pages:
            parts.append(
                f"page(s) {garbled_summary(self.ocr_pages)} were read by OCR and may hold OCR errors"
            )
        return "; ".join(parts)

    @property
    def num_pages(self) -> int | None:
        return len(self.pages) if self.kind == "pdf" else None

    @property
    def word_count(self) -> int:
        return len(self.text.split())

    def pages_for_span(self, start: int, end: int) -> list[int]:
        """Page numbers whose text overlaps ``text[start:end]`` (the page holding ``start`` if empty)."""
        if end <= start:
            return [p.number for p in self.pages if p.start <= start < p.end]
        return [p.number for p in self.pages if p.start < end and start < p.end]


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:4096]:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return data.decode("utf-16")
        raise CorruptFileError(
            f"{name}: looks like a binary file, not text; check the file (a .txt must be plain text)"
        )
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def clean_text(text: str, kind: str = "txt") -> str:
    """Clean plain text (``kind`` "txt": characters normalised and paragraphs re-flowed) or
    Markdown (``kind`` "md": characters normalised only, its line structure is meaning)."""
    text = normalize_characters(text)
    if kind == "md":
        lines = [line.rstrip() for line in text.split("\n")]
        return "\n".join(lines).strip()
    return reflow(text)


def load_text(text: str, name: str = "pasted text", kind: str = "txt") -> Document:
    """A ``Document`` from a string (pasted text); ``kind`` is "txt" or "md"."""
    if kind not in ("txt", "md"):
        raise ValueError(f"load_text kind must be 'txt' or 'md', got {kind!r}")
    cleaned = clean_text(text, kind)
    if not cleaned.strip():
        raise EmptyDocumentError(f"{name}: there is no text in it; paste or load some text first")
    return Document(text=cleaned, name=name, path=None, kind=kind)


def load_document(
    path: str | os.PathLike,
    *,
    drop_references: bool = False,
    password: str | None = None,
    ocr: bool = False,
) -> Document:
    """Load a .pdf, .txt or .md file as a clean ``Document``.

    ``drop_references`` cuts the references/bibliography section (PDF and text); ``password`` opens an
    encrypted PDF (the empty password is always tried); ``ocr`` reads image-only and garbled PDF
    pages with tesseract (off by default, see ``data_tools.ocr``). Raises ``DocumentError`` subclasses whose
    messages name the file, the problem and the fix.
    """
    path = os.fspath(path)
    name = os.path.basename(path) or path
    if os.path.isdir(path):
        raise DocumentError(f"{path}: is a directory; pass a .pdf, .txt or .md file inside it")
    if not os.path.exists(path):
        raise DocumentError(f"{path}: no such file; check the path")
    suffix = os.path.splitext(name)[1].lower()
    kind = KINDS_BY_SUFFIX.get(suffix)
    if kind is None:
        hint = _CONVERT_HINTS.get(suffix, "convert it to one of them")
        raise UnsupportedFileTypeError(
            f"{name}: unsupported file type {suffix or '(no extension)'!r}; supported: {SUPPORTED}; {hint}"
        )
    if kind == "pdf":
        raw = read_pdf_pages(path, password=password, ocr=ocr)
        garbled = [i + 1 for i, q in enumerate(raw.quality) if q.garbled]
        if len(garbled) == len(raw.texts):
            raise NoTextLayerError(
                f"{name}: the text of all {len(garbled)} page(s) is not language (the PDF's fonts map "
                "glyphs to wrong characters, e.g. '7KH' for 'The'); read it with OCR: pass --ocr / "
                f"ocr=True (needs tesseract), or run `ocrmypdf --force-ocr {name} out.pdf`"
            )
        kept = ["" if q.garbled else t for t, q in zip(raw.texts, raw.quality)]
        pages = clean_pages(kept, drop_references=drop_references)
        text, spans = join_pages(pages)
        if not text.strip():
            raise EmptyDocumentError(
                f"{name}: no text is left after cleaning; check that it is the right file"
            )
        notes = []
        if raw.respaced_pages:
            notes.append(
                "words ran together on page(s) "
                f"{garbled_summary(raw.respaced_pages)}; spaced them from the character positions"
            )
        doc = Document(
            text=text,
            name=name,
            path=os.path.abspath(path),
            kind="pdf",
            pages=[PageSpan(i + 1, s, e) for i, (s, e) in enumerate(spans)],
            notes=notes,
            garbled_pages=garbled,
            page_quality=raw.quality,
            ocr_pages=raw.ocr_pages,
            respaced_pages=raw.respaced_pages,
        )
        if doc.warning:
            doc.notes.append(doc.warning)
        return doc
    with open(path, "rb") as f:
        data = f.read()
    raw_text = _decode(data, name)
    if drop_references:
        from .clean import cut_references

        raw_text = cut_references([normalize_characters(raw_text)])[0]
    text = clean_text(raw_text, kind)
    if not text.strip():
        raise EmptyDocumentError(f"{name}: the file is empty; check that it is the right file")
    return Document(text=text, name=name, path=os.path.abspath(path), kind=kind)
