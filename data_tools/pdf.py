"""PDF pages to raw text with PDFium (``pypdfium2``), with the failure modes real PDFs have.

``read_pdf_pages(path)`` returns one raw string per page (before cleaning) and a quality score per
page (``data_tools.garble``). It

- opens encrypted PDFs with the empty password (many are "encrypted" only to restrict printing) or
  the given one, and otherwise raises ``EncryptedPDFError``;
- raises ``NoTextLayerError`` for scanned PDFs (pages with images but no text) unless ``ocr=True``
  and ``tesseract`` is installed (``data_tools.ocr``), ``EmptyDocumentError`` for PDFs with no text
  and no images, ``CorruptFileError`` for damaged files;
- fixes PDFium's own quirks: ``\\r\\n`` line ends, U+0002/U+FFFE for a hyphen at a line end
  (sometimes with the line break itself lost), a line break after a subscript, and words run
  together where PDFium's spacing rule misses a gap (groff/Ghostscript man pages: "theyare"). For
  those, the page's text is rebuilt from the characters' boxes: a space where two neighbours are
  more than ``WORD_GAP`` of the line height apart, a line break where they do not share a line.
  Only documents whose text shows the symptom are rebuilt, because asking PDFium for every
  character's box costs about 3 us per character.

The text comes from ``get_text_range`` (all characters in content order), not
``get_text_bounded``: on an Excel export the latter glues table cells and stacked row numbers
("Macquotedblright", "123456789101112", 8.6% fewer words than pdftotext), the former does not.

Why PDFium and not pypdf: on the 14-file development corpus (../shared/corpus) pypdf keeps a third
of the words of a DocBook manual (lost inter-word spaces), 7 words of a 27-slide groff deck (text
in Form XObjects) and splits words at kerns; PDFium is within 2% of ``pdftotext`` on all of them
(numbers in docs/data_tools.md). pypdf is no longer used to read PDFs; the tests still use it to
*write* encrypted PDFs and as an independent second reader.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import CorruptFileError, EmptyDocumentError, EncryptedPDFError, NoTextLayerError
from .garble import PageQuality, page_quality

# Neighbouring characters further apart than this share of the line height are separate words:
# an inter-word space is 0.25-0.33 em, kerns and tracking stay under 0.1 em (a loose char box is
# about 1.1 em tall).
WORD_GAP = 0.15

# Share of a page's tokens that look run together ("theyare", "On,readline"): measured on the
# corpus, the median page of the groff/Ghostscript man page scores 1.3%, of every other file at
# most 0.4% (code, URLs and footnote marks score too), and single pages of code or math up to 11%.
# Rebuilding a page from its char boxes changed word counts only in the man page (-3.2% -> -0.1%
# vs pdftotext), so pages are rebuilt when the whole document shows the symptom, or when one
# page shows it far beyond what code reaches.
RUN_TOGETHER_DOC = 0.008  # median page rate
RUN_TOGETHER_PAGE = 0.15  # a single page's rate


@dataclass
class PdfPages:
    """Raw page texts plus how they were obtained."""

    texts: list[str]
    respaced_pages: list[int] = field(default_factory=list)  # 1-based pages rebuilt from char boxes
    quality: list[PageQuality] = field(default_factory=list)  # one per page, see data_tools.garble
    ocr_pages: list[int] = field(default_factory=list)  # 1-based pages read by OCR


def _open(path: str, password: str | None):
    import pypdfium2 as pdfium

    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        raise CorruptFileError(
            f"{name}: not a PDF (the file does not start with '%PDF-'); check that it is the right file "
            "and that the download finished"
        )
    try:
        return pdfium.PdfDocument(path, password=password)
    except pdfium.PdfiumError as e:
        if getattr(e, "err_code", None) == pdfium.raw.FPDF_ERR_PASSWORD:
            tried = "the given password" if password else "the empty password"
            hint = "check the password" if password else "pass its password (--password / password=)"
            raise EncryptedPDFError(
                f"{name}: the PDF is encrypted and {tried} does not open it; {hint}, or decrypt it "
                "first with `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`"
            ) from e
        if getattr(e, "err_code", None) == pdfium.raw.FPDF_ERR_SECURITY:
            raise EncryptedPDFError(
                f"{name}: the PDF is encrypted with an unsupported scheme ({e}); decrypt it first, "
                "e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`"
            ) from e
        raise CorruptFileError(
            f"{name}: the PDF is damaged and cannot be read ({e}); re-download it or repair it "
            "(e.g. `qpdf in.pdf out.pdf` or print it to a new PDF)"
        ) from e


def _page_has_images(page) -> bool:
    import pypdfium2.raw as raw

    # get_objects descends into Form XObjects, where scanners and slide tools often put the image
    return next(page.get_objects(filter=[raw.FPDF_PAGEOBJ_IMAGE]), None) is not None


# ---------------------------------------------------------------------------------------------
# Words PDFium ran together

_GLUED_PUNCT = re.compile(r"[a-z][,;][A-Za-z]|[a-z]{2}\.[A-Z][a-z]|\d{10,}")
_LETTERS = re.compile(r"[a-z]+")


def _run_together(token: str, vocabulary: Counter[str]) -> bool:
    """ "theyare": two words the document uses often, written as one word it does not use."""
    word = token.strip(".,;:()[]\"'").lower()
    if len(word) < 5 or not word.isalpha() or not word.isascii() or vocabulary[word] > 1:
        return False
    return any(vocabulary[word[:i]] >= 3 and vocabulary[word[i:]] >= 3 for i in range(2, len(word) - 1))


def glued_suspects(text: str, vocabulary: Counter[str]) -> int:
    """How many tokens of ``text`` look like neighbouring words or cells run together."""
    return sum(bool(_GLUED_PUNCT.search(t)) or _run_together(t, vocabulary) for t in text.split())


def respaced_text(textpage) -> str:
    """The page's text with a space between characters ``WORD_GAP`` apart and a line break between
    characters on different lines, where PDFium put neither (see the module doc)."""
    import numpy as np
    import pypdfium2.raw as raw

    text = textpage.get_text_range()
    n = textpage.count_chars()
    if len(text) != n or n < 2:  # characters outside the BMP: indices do not line up
        return text
    rects = (raw.FS_RECTF * n)()
    get, handle = raw.FPDFText_GetLooseCharBox, textpage.raw
    for k in range(n):  # one C call per character: the cost of this step
        get(handle, k, rects[k])
    left, top, right, bottom = _along_lines(np.frombuffer(rects, dtype=np.float32).reshape(n, 4).T)
    height = np.minimum(top[:-1] - bottom[:-1], top[1:] - bottom[1:])  # (n - 1,) per neighbour pair
    overlap = np.minimum(top[:-1], top[1:]) - np.maximum(bottom[:-1], bottom[1:])
    chars = np.frombuffer(text.encode("utf-16-le"), dtype=np.uint16)
    blank = np.isin(chars, [32, 10, 13])
    pair = (height > 0) & ~blank[:-1] & ~blank[1:]
    newline = pair & (overlap < 0.3 * height)
    space = pair & ~newline & (left[1:] - right[:-1] > WORD_GAP * height)
    out, last = [], 0
    for k in np.flatnonzero(newline | space).tolist():
        out += [text[last : k + 1], "\n" if newline[k] else " "]
        last = k + 1
    out.append(text[last:])
    return "".join(out)


def _along_lines(boxes):
    """(left, top, right, bottom) arrays of char boxes, turned so that the page's text runs left to
    right: a landscape table printed on a portrait page (an Excel export) runs bottom to top."""
    import numpy as np

    left, top, right, bottom = boxes
    dx = np.abs(np.diff(left + right))
    dy = np.diff(top + bottom)
    along_y = np.abs(dy) > dx  # neighbour pairs that step along y
    if along_y.sum() <= along_y.size / 2:
        return left, top, right, bottom
    if (dy[along_y] > 0).sum() > along_y.sum() / 2:  # bottom to top: x' = y, y' = -x
        return bottom, -left, top, -right
    return -top, right, -bottom, left  # top to bottom: x' = -y, y' = x


def fix_pdfium_quirks(text: str) -> str:
    """PDFium's line ends to ``\\n``; its U+0002 or U+FFFE (a hyphen at a line end; the line break
    itself is sometimes lost) back to a hyphen that ends the line, so ``join_hyphenated`` decides
    whether the word is joined; a line break before punctuation removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufffe", "\x02")
    text = re.sub(r"\x02(?!\n)", "-\n", text)
    # PDFium starts a new line after a subscript ("term u_i. In" -> "term ui\n. In"); punctuation
    # that opens a line belongs to the line before
    text = re.sub(r"(?<=\w)\n(?=[,.;:](?:[ \n]|$))", "", text)
    return text.replace("\x02", "-")


# ---------------------------------------------------------------------------------------------
# Reading


# PDFium is not thread-safe; the app reads uploads and renders pages from a thread pool. Every PDFium call
# of the project (reading and page images, both here) holds this lock.
PDFIUM_LOCK = threading.RLock()


def render_pdf_page(path: str | os.PathLike, page: int, *, scale: float = 1.0):
    """Page ``page`` (1-based) of the PDF at ``path`` as an RGB ``PIL.Image`` at ``scale`` x 72 dpi, under
    the one PDFium lock (the app renders the pages its answers cite from gradio's thread pool)."""
    import pypdfium2 as pdfium

    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(os.fspath(path))
        try:
            # convert() copies the pixels out of PDFium's bitmap before the document is closed
            return pdf[page - 1].render(scale=scale).to_pil().convert("RGB")
        finally:
            pdf.close()


def read_pdf_pages(path: str | os.PathLike, password: str | None = None, *, ocr: bool = False) -> PdfPages:
    """One raw text per page; raises the ``DocumentError`` subclasses described in the module doc.

    ``ocr=True`` reads image-only pages with ``tesseract`` (``data_tools.ocr``) instead of raising
    ``NoTextLayerError``; it raises ``DependencyError`` when tesseract is not installed.
    """
    with PDFIUM_LOCK:
        return _read_pdf_pages(path, password, ocr=ocr)


@contextmanager
def _loaded_page(pdf, index: int):
    """Page ``index`` (0-based) of ``pdf``, closed on leaving. PDFium keeps a loaded page's parsed
    content (hundreds of KB a page), so the reader holds one page at a time and loads again the few
    it needs twice (respacing, OCR): a 2,000-page PDF is read in bounded memory
    (benchmarks/large_pdf.py)."""
    page = pdf[index]
    try:
        yield page
    finally:
        page.close()  # closes its text page too


def _page_text(pdf, index: int, name: str, *, respace: bool = False) -> str:
    """The raw text of page ``index`` (0-based), rebuilt from the characters' boxes if ``respace``."""
    try:
        with _loaded_page(pdf, index) as page:
            textpage = page.get_textpage()
            return respaced_text(textpage) if respace else textpage.get_text_range()
    except Exception as e:  # noqa: BLE001 - pdfium raises PdfiumError and others on bad pages
        raise CorruptFileError(
            f"{name}: page {index + 1} cannot be read ({type(e).__name__}: {e}); the file is "
            "damaged, repair it (e.g. `qpdf in.pdf out.pdf`) and try again"
        ) from e


def _has_images(pdf, index: int) -> bool:
    with _loaded_page(pdf, index) as page:
        return _page_has_images(page)


def _read_pdf_pages(path: str | os.PathLike, password: str | None = None, *, ocr: bool = False) -> PdfPages:
    path = os.fspath(path)
    name = os.path.basename(path)
    pdf = _open(path, password)
    try:
        count = len(pdf)
        if count == 0:
            raise EmptyDocumentError(f"{name}: the PDF has no pages; check that it is the right file")
        texts = [_page_text(pdf, i, name) for i in range(count)]
        vocabulary = Counter(w for t in texts for w in _LETTERS.findall(t.lower()))
        rates = [glued_suspects(t, vocabulary) / max(1, len(t.split())) for t in texts]
        whole = sorted(rates)[len(rates) // 2] >= RUN_TOGETHER_DOC
        respaced = []
        for i, rate in enumerate(rates):
            if rate >= RUN_TOGETHER_PAGE or (whole and rate * len(texts[i].split()) >= 2):
                texts[i] = _page_text(pdf, i, name, respace=True)
                respaced.append(i + 1)
        texts = [fix_pdfium_quirks(t) for t in texts]
        quality = [page_quality(t) for t in texts]
        ocr_pages: list[int] = []
        if ocr:
            from .ocr import ocr_page

            for i in range(count):
                # a garbled page's glyphs still render right, so OCR reads it too
                if quality[i].garbled or (not texts[i].strip() and _has_images(pdf, i)):
                    with _loaded_page(pdf, i) as page:
                        texts[i] = ocr_page(page)
                    quality[i] = page_quality(texts[i])
                    ocr_pages.append(i + 1)
        if not any(t.strip() for t in texts):
            if not any(_has_images(pdf, i) for i in range(count)):
                raise EmptyDocumentError(
                    f"{name}: the PDF's {count} page(s) hold no text; check that it is the right file"
                )
            if ocr:
                raise NoTextLayerError(
                    f"{name}: the PDF has {count} page(s) of images but no text layer, and OCR "
                    "found no text on them either; check that the pages show text"
                )
            raise NoTextLayerError(
                f"{name}: the PDF has {count} page(s) of images but no text layer (a scan?); "
                f"it needs OCR: pass --ocr / ocr=True (needs tesseract), or run "
                f"`ocrmypdf {name} out.pdf` and load out.pdf"
            )
        return PdfPages(texts, respaced, quality, ocr_pages)
    finally:
        pdf.close()
