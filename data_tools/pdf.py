"""PDF pages to raw text with pypdf, with the failure modes real PDFs have.

``read_pdf_pages(path)`` returns one raw string per page (before cleaning). It

- tries the empty password on encrypted PDFs (many are "encrypted" only to restrict printing) and
  otherwise raises ``EncryptedPDFError``;
- raises ``NoTextLayerError`` for scanned PDFs (pages with images but no text), ``EmptyDocumentError``
  for PDFs with no text and no images, ``CorruptFileError`` for damaged files;
- detects pages whose inter-word spaces were lost ("Hereareafewbasicmethods...") and recovers them.

Why words get glued: TeX drivers (xdvipdfmx, dvipdfm) draw a line as one ``TJ`` array of word
strings separated by negative offsets (the inter-word gap, ~250-400 thousandths of an em), with no
space glyph. pypdf turns an offset into a space only when it exceeds half the font's space width,
and fonts without a space glyph often report a space as wide as an em (CID fonts' default width
1000), so no gap qualifies. The recovery re-reads the page with every ``TJ`` offset of at least
``WORD_GAP`` thousandths of an em (a gap no kern reaches) widened far past any space width, which
makes pypdf insert the spaces; pypdf's layout mode is the second attempt. The text with the fewest
glued runs wins.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from .clean import GLUED_THRESHOLD, glued_word_ratio
from .errors import CorruptFileError, EmptyDocumentError, EncryptedPDFError, NoTextLayerError

# pypdf logs every recoverable syntax problem at WARNING; a damaged-but-readable PDF is our problem
# to report, not a wall of log lines.
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass
class PdfPages:
    """Raw page texts plus how they were obtained."""

    texts: list[str]
    respaced_pages: list[int] = field(
        default_factory=list
    )  # 1-based pages whose lost word spaces were recovered


def _open_reader(path: str, password: str | None):
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

    name = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(1024)
    if b"%PDF-" not in head:
        raise CorruptFileError(
            f"{name}: not a PDF (the file does not start with '%PDF-'); check that it is the right file "
            "and that the download finished"
        )
    try:
        reader = pypdf.PdfReader(path, strict=False)
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError, AssertionError, OSError) as e:
        raise CorruptFileError(
            f"{name}: the PDF is damaged and cannot be read ({e}); re-download it or repair it "
            "(e.g. `qpdf in.pdf out.pdf` or print it to a new PDF)"
        ) from e
    if reader.is_encrypted:
        tried = "the given password" if password else "the empty password"
        try:
            ok = reader.decrypt(password or "")
        except DependencyError as e:
            raise EncryptedPDFError(
                f"{name}: the PDF is AES-encrypted and decrypting it needs the 'cryptography' package; "
                f"run `pip install cryptography` and try again ({e})"
            ) from e
        except (FileNotDecryptedError, PdfReadError, NotImplementedError) as e:
            raise EncryptedPDFError(
                f"{name}: the PDF is encrypted with an unsupported scheme ({e}); decrypt it first, "
                "e.g. `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`"
            ) from e
        if not ok:
            hint = "check the password" if password else "pass its password (--password / password=)"
            raise EncryptedPDFError(
                f"{name}: the PDF is encrypted and {tried} does not open it; {hint}, or decrypt it "
                "first with `qpdf --decrypt --password=PASSWORD in.pdf out.pdf`"
            )
    return reader


def _page_has_images(page) -> bool:
    try:
        resources = page.get("/Resources")
        resources = resources.get_object() if resources is not None else {}
        xobjects = resources.get("/XObject")
        if xobjects is None:
            return False
        for ref in xobjects.get_object().values():
            obj = ref.get_object()
            if obj.get("/Subtype") in ("/Image", "/Form"):
                return True
    except Exception:  # noqa: BLE001 - a broken resource dict means "can't tell", not a failure
        return False
    return False


# Negative TJ offsets at least this large (thousandths of an em) are word gaps: TeX's inter-word
# space is 0.25-0.5 em even when shrunk, kerns stay under ~0.1 em.
WORD_GAP = 150


def _widened_gaps_text(page) -> str:
    """The page's text after widening every TJ word gap (see the module doc); text-only, in memory."""
    import pypdf
    from pypdf.generic import ArrayObject, ContentStream, FloatObject

    contents = page.get_contents()
    if contents is None:
        return ""
    stream = ContentStream(contents, page.pdf)
    changed = 0
    for operands, operator in stream.operations:
        if operator != b"TJ" or not operands or not isinstance(operands[0], ArrayObject):
            continue
        array = operands[0]
        for k, item in enumerate(array):
            if isinstance(item, (int, float)) and not isinstance(item, bool) and float(item) <= -WORD_GAP:
                array[k] = FloatObject(-20000)
                changed += 1
    if not changed:
        return ""
    # a reader's page cannot take new contents; a throwaway writer page can
    scratch = pypdf.PdfWriter().add_page(page)
    scratch.replace_contents(stream)
    return scratch.extract_text() or ""


def _layout_text(page) -> str:
    text = page.extract_text(extraction_mode="layout", layout_mode_space_vertically=False)
    # layout mode pads columns with runs of spaces; keep single spaces only
    return "\n".join(re.sub(r" {2,}", " ", line).strip() for line in text.split("\n"))


def _respaced(page, text: str) -> str | None:
    """A re-read of a glued page with its word spaces back, or None when no attempt does better."""

    def score(t: str) -> tuple[float, int]:  # fewer glued letters first, then more words
        return (glued_word_ratio(t), -len(t.split()))

    best, best_score = None, score(text)
    for attempt in (_widened_gaps_text, _layout_text):
        try:
            candidate = attempt(page)
        except Exception:  # noqa: BLE001 - a failed recovery keeps the default text
            continue
        if candidate.strip() and score(candidate) < best_score:
            best, best_score = candidate, score(candidate)
        if best is not None and best_score[0] <= GLUED_THRESHOLD:
            break
    return best


def read_pdf_pages(path: str | os.PathLike, password: str | None = None) -> PdfPages:
    """One raw text per page; raises the ``DocumentError`` subclasses described in the module doc."""
    path = os.fspath(path)
    name = os.path.basename(path)
    reader = _open_reader(path, password)
    try:
        pages = list(reader.pages)
    except Exception as e:  # noqa: BLE001 - pypdf raises many types on a broken page tree
        raise CorruptFileError(
            f"{name}: the PDF's page tree is damaged ({type(e).__name__}: {e}); repair it "
            "(e.g. `qpdf in.pdf out.pdf`) and try again"
        ) from e
    if not pages:
        raise EmptyDocumentError(f"{name}: the PDF has no pages; check that it is the right file")
    texts: list[str] = []
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(page.extract_text() or "")
        except Exception as e:  # noqa: BLE001
            raise CorruptFileError(
                f"{name}: page {number} cannot be read ({type(e).__name__}: {e}); the file is damaged, "
                "repair it (e.g. `qpdf in.pdf out.pdf`) and try again"
            ) from e
    # Short pages ("Third page.") cannot show glue on their own: when the document as a whole is
    # glued, every page is re-read.
    whole = glued_word_ratio("\n".join(texts)) > GLUED_THRESHOLD
    respaced_pages: list[int] = []
    for i, (page, text) in enumerate(zip(pages, texts)):
        if whole or glued_word_ratio(text) > GLUED_THRESHOLD:
            better = _respaced(page, text)
            if better is not None:
                texts[i] = better
                respaced_pages.append(i + 1)
    if not any(t.strip() for t in texts):
        if any(_page_has_images(p) for p in pages):
            raise NoTextLayerError(
                f"{name}: the PDF has {len(pages)} page(s) of images but no text layer (a scan?); "
                f"it needs OCR first, e.g. `ocrmypdf {name} out.pdf`, then load out.pdf"
            )
        raise EmptyDocumentError(
            f"{name}: the PDF's {len(pages)} page(s) hold no text; check that it is the right file"
        )
    return PdfPages(texts, respaced_pages)
