"""Documents: a file (.pdf, .txt, .md) or pasted text as clean text with a page map.

    >>> doc = load_document("paper.pdf", drop_references=True)
    >>> doc.num_pages, doc.word_count
    >>> doc.pages_for_span(1200, 1800)        # pages a passage of doc.text came from
    [2]

For PDFs each page is cleaned separately and the pages are joined, so ``PageSpan`` character spans
are exact in the final ``text``: ``doc.text[span.start:span.end]`` is that page's text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .clean import clean_pages, join_pages, normalize_characters, reflow
from .errors import CorruptFileError, DocumentError, EmptyDocumentError, UnsupportedFileTypeError
from .pdf import read_pdf_pages

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
    path: str | os.PathLike, *, drop_references: bool = False, password: str | None = None
) -> Document:
    """Load a .pdf, .txt or .md file as a clean ``Document``.

    ``drop_references`` cuts the references/bibliography section (PDF and text); ``password`` opens an
    encrypted PDF (the empty password is always tried). Raises ``DocumentError`` subclasses whose
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
        raw = read_pdf_pages(path, password=password)
        pages = clean_pages(raw.texts, drop_references=drop_references)
        text, spans = join_pages(pages)
        if not text.strip():
            raise EmptyDocumentError(
                f"{name}: no text is left after cleaning; check that it is the right file"
            )
        notes = []
        if raw.respaced_pages:
            notes.append(
                "inter-word spaces were missing on page(s) "
                f"{', '.join(map(str, raw.respaced_pages))}; recovered them from the word gaps"
            )
        return Document(
            text=text,
            name=name,
            path=os.path.abspath(path),
            kind="pdf",
            pages=[PageSpan(i + 1, s, e) for i, (s, e) in enumerate(spans)],
            notes=notes,
        )
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
