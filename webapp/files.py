"""Uploaded files: gradio's copy is deleted once its text is read; a PDF's private copy is kept for
the page view, which renders one page as an image.

No gradio event code here: the handlers in ``app.py`` turn the ``DocumentError`` raised below into
visible messages. The page image comes from PDFium (``pypdfium2``), the library that reads the text,
so what the user sees is the page the passages were taken from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from data_tools.errors import DocumentError

# 1.5 x 72 dpi = 108 dpi: body text is readable in the page panel and a letter page is ~920 x 1190 px.
RENDER_SCALE = 1.5

# PDFium is not thread-safe, and gradio runs handlers in a thread pool: one render at a time.
_PDFIUM = threading.Lock()


def _is_gradio_upload(path: str) -> bool:
    """True for files gradio wrote to its upload cache (never delete anything else)."""
    from gradio.utils import get_upload_folder

    folder = os.path.realpath(get_upload_folder())
    return os.path.realpath(path).startswith(folder + os.sep)


def discard_upload(path: str) -> None:
    """Delete an uploaded file (and its per-upload folder) once its text is extracted."""
    if not path or not _is_gradio_upload(path):
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(path))  # gradio puts each upload in its own hash folder
    except OSError:
        pass


class PdfCopy:
    """A private copy of an uploaded PDF, in a temporary folder of its own.

    The folder is removed by ``close()`` (a new upload, New document, the end of the browser
    session), and otherwise when the copy is garbage-collected or the app exits
    (``tempfile.TemporaryDirectory`` registers that finalizer).
    """

    def __init__(self, path: str):
        self._folder = tempfile.TemporaryDirectory(prefix="longlora-app-")
        self.path = os.path.join(self._folder.name, "document.pdf")
        shutil.copyfile(path, self.path)

    def close(self) -> None:
        self._folder.cleanup()


def cited_pages(sources) -> list[tuple[str, int]]:
    """Dropdown choices for the pages that ``sources`` (``longlora.qa.Source``) come from.

    Each page once, in page order, labelled with the numbers of the sources under the answer that
    cite it: ``[("Page 2 (source 1)", 2), ("Page 5 (sources 1, 3)", 5)]``.
    """
    cited: dict[int, list[int]] = {}
    for number, source in enumerate(sources, start=1):
        for page in source.pages:
            cited.setdefault(page, []).append(number)
    return [
        (f"Page {page} (source{'s' * (len(numbers) > 1)} {', '.join(map(str, numbers))})", page)
        for page, numbers in sorted(cited.items())
    ]


def check_page(document, pdf: PdfCopy | None, page) -> int:
    """``page`` as a 1-based page number of ``document``; DocumentError saying what to do otherwise."""
    if document is None:
        raise DocumentError("Upload a PDF first, ask about it, then open a page its sources cite.")
    if document.kind != "pdf":
        raise DocumentError(
            f"{document.name} is a plain-text document: it has no pages to show. The sources under "
            "each answer are the text the model read."
        )
    if pdf is None or not os.path.exists(pdf.path):
        raise DocumentError(
            f"{document.name} is no longer kept by the app; upload it again to see its pages."
        )
    count = document.num_pages
    try:
        number = int(page)
        whole = number == float(page)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise DocumentError(f"Pick a page number from 1 to {count}; got {page!r}.")
    if not 1 <= number <= count:
        raise DocumentError(
            f"{document.name} has {count} page{'s' * (count != 1)}; there is no page {number}. "
            f"Pick a page from 1 to {count}."
        )
    return number


def render_page(pdf_path: str, page: int, scale: float = RENDER_SCALE):
    """Page ``page`` (1-based) of the PDF at ``pdf_path`` as an RGB ``PIL.Image``."""
    import pypdfium2 as pdfium

    with _PDFIUM:
        pdf = pdfium.PdfDocument(pdf_path)
        try:
            # convert() copies the pixels out of PDFium's bitmap before the document is closed
            return pdf[page - 1].render(scale=scale).to_pil().convert("RGB")
        finally:
            pdf.close()
