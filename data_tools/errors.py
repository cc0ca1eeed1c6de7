"""The one error hierarchy for bad user input, shared by ``data_tools`` and ``longlora``.

Every error here is a ``ValueError`` (callers that only want "bad input" can catch that, or
:class:`InputError`), and its message names the problem and what to do about it, so a command or the
app can show it unchanged.

    InputError                      bad input from the user: a file, a flag, a model, a record
    ├── DocumentError               a document could not be turned into text
    │   ├── EncryptedPDFError, NoTextLayerError, CorruptFileError,
    │   └── UnsupportedFileTypeError, EmptyDocumentError
    ├── DataError                   training / evaluation data: token files, records, folders
    ├── ModelLoadError              a model, tokenizer or adapter cannot be loaded as asked
    │   └── TokenizerLoadError      (data_tools.tokenizer) a tokenizer spec names nothing loadable
    ├── DependencyError             an optional package the chosen option needs is not installed
    └── WriteError                  an output cannot be written (full disk, no permission); also an OSError

This module is torch-free and sits at the bottom of the dependency graph (``app -> longlora ->
data_tools``), so both packages raise the same classes.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user; the message names the problem and the fix."""


class DocumentError(InputError):
    """A document could not be turned into text."""


class EncryptedPDFError(DocumentError):
    """The PDF is encrypted and the empty password (or the given one) does not open it."""


class NoTextLayerError(DocumentError):
    """The PDF has pages but no extractable text (scanned images): it needs OCR."""


class CorruptFileError(DocumentError):
    """The file is damaged or is not what its extension says."""


class UnsupportedFileTypeError(DocumentError):
    """The file type is not one the reader knows."""


class EmptyDocumentError(DocumentError):
    """The document holds no text at all."""


class DataError(InputError):
    """Training or evaluation data is unusable: token files, dataset records, input folders."""


class ModelLoadError(InputError):
    """A model, tokenizer or adapter cannot be loaded as asked."""


class DependencyError(InputError):
    """An optional package that the chosen option needs is not installed (the message says how)."""


class WriteError(InputError, OSError):
    """An output file or folder cannot be written (a full disk, a file-size limit, no permission). The
    message names the file, the system's reason and the fix; the file's previous version, if any, is left
    as it was. Also an ``OSError``, so code that catches write failures as such still does."""
