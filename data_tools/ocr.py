"""Optional OCR for image-only PDF pages: render with PDFium, read with the ``tesseract`` program.

Off by default (``load_document(..., ocr=True)``, ``python -m data_tools extract --ocr``): OCR is
slow (1-3 s per page) and its text has errors a text layer does not, so a user asks for it.
Needs the ``tesseract`` command (Debian/Ubuntu: ``apt-get install tesseract-ocr``); without it
``DependencyError`` says how to install it. The ``tesseract`` program is called directly (no
Python wrapper): it reads a PNG and prints the text, which is all that is needed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from .errors import DependencyError, DocumentError

OCR_DPI = 300  # tesseract's recommended resolution for body text
OCR_LANGUAGE = os.environ.get("LONGLORA_OCR_LANG", "eng")


def tesseract_path() -> str:
    """The tesseract executable, or ``DependencyError`` naming how to install it."""
    found = shutil.which("tesseract")
    if found is None:
        raise DependencyError(
            "OCR needs the `tesseract` program, which is not installed; install it "
            "(Debian/Ubuntu: `apt-get install tesseract-ocr`, macOS: `brew install tesseract`) "
            "or run `ocrmypdf in.pdf out.pdf` and load out.pdf"
        )
    return found


def ocr_page(page, dpi: int = OCR_DPI, language: str = OCR_LANGUAGE) -> str:
    """The text of one ``pypdfium2.PdfPage`` as read by tesseract from a ``dpi`` rendering."""
    exe = tesseract_path()
    image = page.render(scale=dpi / 72, grayscale=True).to_pil()
    with tempfile.TemporaryDirectory(prefix="longlora-ocr-") as tmp:
        png = os.path.join(tmp, "page.png")
        image.save(png)
        run = subprocess.run(
            [exe, png, "stdout", "-l", language, "--dpi", str(dpi)], capture_output=True, text=True
        )
    if run.returncode != 0:
        raise DocumentError(
            f"tesseract failed on a page ({run.stderr.strip()[-300:]}); check that the language "
            f"data for {language!r} is installed (`apt-get install tesseract-ocr-{language}`)"
        )
    return run.stdout
