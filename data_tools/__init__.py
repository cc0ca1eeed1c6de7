"""Torch-free data tools: documents to clean text, LongAlpaca datasets, token files.

    from data_tools import load_document
    doc = load_document("paper.pdf")          # Document(text, name, path, kind, pages)

Commands: ``python -m data_tools extract | build-longalpaca | tokenize`` (see ``python -m data_tools -h``).
"""

from .document import Document, PageSpan, load_document, load_text
from .errors import (
    CorruptFileError,
    DocumentError,
    EmptyDocumentError,
    EncryptedPDFError,
    NoTextLayerError,
    UnsupportedFileTypeError,
)

__all__ = [
    "CorruptFileError",
    "Document",
    "DocumentError",
    "EmptyDocumentError",
    "EncryptedPDFError",
    "NoTextLayerError",
    "PageSpan",
    "UnsupportedFileTypeError",
    "load_document",
    "load_text",
]
