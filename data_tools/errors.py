"""Errors raised while loading documents.

Every error is a ``ValueError`` (callers that only want "bad input" can catch that) and its message
names the file, the problem and what to do about it, so a UI can show it unchanged.
"""

from __future__ import annotations


class DocumentError(ValueError):
    """A document could not be turned into text."""


class EncryptedPDFError(DocumentError):
    """The PDF is encrypted and the empty password (or the given one) does not open it."""


class NoTextLayerError(DocumentError):
    """The PDF has pages but no extractable text (scanned images): it needs OCR."""


class CorruptFileError(DocumentError):
    """The file is damaged or is not what its extension says."""


class UnsupportedFileTypeError(DocumentError):
    """The file type is not one of .pdf, .txt, .md."""


class EmptyDocumentError(DocumentError):
    """The document holds no text at all."""
