"""Uploaded files: gradio's copy is deleted once its text is read; a PDF's private copy is kept for
the page view (``webapp.pages``)."""

from __future__ import annotations

import os
import shutil
import tempfile


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
