"""The one reader from user paths to inputs: files, folders and globs -> documents, records, token files.

Used by ``python -m longlora.finetune`` (``longlora.training.data``), the evaluation commands
(``longlora.eval.tokens``) and ``python -m data_tools tokenize | extract | build-longalpaca``, so all of
them accept the same files:

- documents (``DOCUMENT_SUFFIXES``: .pdf, .txt, .text, .md, .markdown), read with
  ``data_tools.load_document`` (PDF extraction, cleaning, page map);
- record files (``RECORD_SUFFIXES``: .jsonl, .json), one document per record (its ``text`` field);
- token files (``TOKEN_SUFFIXES``: .bin), read only through ``data_tools.tokenfile``.

Rules, the same everywhere: a folder is searched recursively in sorted order and its hidden files and
hidden folders (names starting with ".") are skipped, as are files of other types; a glob (``books/*.txt``,
``corpus/**/*.pdf``) expands like a folder's listing; a file named directly is taken even when hidden, but
must be of an accepted type. A missing path, a folder or glob with no accepted file and a file of another
type raise :class:`DataError` naming the path and the fix.

    >>> for source in find_sources(["books/", "qa.jsonl"]):
    ...     for where, text in read_texts(source): ...
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .document import KINDS_BY_SUFFIX, Document, load_document
from .errors import DataError

DOCUMENT_SUFFIXES = tuple(KINDS_BY_SUFFIX)
RECORD_SUFFIXES = (".jsonl", ".json")
TOKEN_SUFFIXES = (".bin",)
KINDS = ("document", "records", "tokens")
_SUFFIXES = {"document": DOCUMENT_SUFFIXES, "records": RECORD_SUFFIXES, "tokens": TOKEN_SUFFIXES}


@dataclass(frozen=True)
class Source:
    """One input file and how to read it (``kind`` is one of ``KINDS``)."""

    path: Path
    kind: str


def kind_of(path: str | os.PathLike) -> str | None:
    """'document', 'records' or 'tokens' from the file name; None for any other file (and for the
    ``NAME.bin.json`` sidecar of a token file, which is read with its ``NAME.bin``)."""
    path = Path(path)
    if path.name.lower().endswith(".bin.json"):
        return None
    suffix = path.suffix.lower()
    return next((kind for kind, suffixes in _SUFFIXES.items() if suffix in suffixes), None)


def _accepted(kinds: Sequence[str]) -> str:
    return ", ".join(s for kind in kinds for s in _SUFFIXES[kind])


def list_folder(path: str | os.PathLike, suffixes: tuple[str, ...]) -> list[str]:
    """Files under ``path`` (recursively, sorted) whose name ends in one of ``suffixes`` (any case).

    Hidden files and folders (names starting with ".") are skipped: editor backups, ``.git``,
    ``.ipynb_checkpoints`` and macOS ``._`` files are never data. This is the one folder rule of
    every command that reads a folder.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(root, f) for f in files if f.lower().endswith(suffixes) and not f.startswith(".")
        ]
    return sorted(found)


def _listing(path: Path, kinds: Sequence[str]) -> list[Path]:
    found = list_folder(path, tuple(s for kind in kinds for s in _SUFFIXES[kind]))
    return [Path(p) for p in found if kind_of(p) in kinds]


def is_glob(text: str) -> bool:
    return glob.has_magic(text)


def find_sources(
    paths: Iterable[str | os.PathLike], kinds: Sequence[str] = KINDS, *, flag: str = "input"
) -> list[Source]:
    """Expand files, folders and globs into ``Source``s of the given ``kinds``, in order.

    ``flag`` names the argument in error messages (e.g. "--data").
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown input kinds {sorted(unknown)}; choose from {KINDS}")
    out: list[Source] = []
    for raw in paths:
        text = os.fspath(raw)
        path = Path(text).expanduser()
        if path.is_dir():
            found = _listing(path, kinds)
            if not found:
                raise DataError(
                    f"{flag} {text}: folder holds no {_accepted(kinds)} files (hidden files are skipped); "
                    "put the files in it or point at them directly"
                )
        elif path.is_file():
            if path.name.lower().endswith(".bin.json"):
                raise DataError(
                    f"{flag} {text}: this is the sidecar of token file {path.with_suffix('')}; pass that"
                )
            if kind_of(path) not in kinds:
                raise DataError(
                    f"{flag} {text}: unsupported file type {path.suffix or '(none)'}; use one of "
                    f"{_accepted(kinds)} (convert other formats to PDF or plain text first)"
                )
            found = [path]
        elif is_glob(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
            found = [p for p in matches if p.is_file() and kind_of(p) in kinds]
            if not found:
                raise DataError(f"{flag} {text}: the pattern matches no {_accepted(kinds)} files; check it")
        else:
            raise DataError(f"{flag} {text}: no such file or folder; check the path")
        out.extend(Source(p, kind_of(p)) for p in found)
    return out


def read_texts(
    source: Source, *, field: str = "text", drop_references: bool = False
) -> Iterator[tuple[str, str]]:
    """(where, text) for each document of a document or record source (``where``: path or path:line)."""
    if source.kind == "records":
        from .records import iter_records

        for lineno, record in iter_records(source.path, required=(field,)):
            yield f"{source.path}:{lineno}", record[field]
    elif source.kind == "document":
        yield str(source.path), read_document(source, drop_references=drop_references).text
    else:
        raise DataError(
            f"{source.path}: a token file holds ids, not text; pass it where token files are read"
        )


def read_document(
    source: Source | str | os.PathLike,
    *,
    drop_references: bool = False,
    password: str | None = None,
    ocr: bool = False,
) -> Document:
    """One document with its pages (PDF extraction through ``data_tools.load_document``, which explains
    ``drop_references``, ``password`` and ``ocr``)."""
    path = source.path if isinstance(source, Source) else source
    return load_document(path, drop_references=drop_references, password=password, ocr=ocr)


def read_documents(paths: Iterable[str | os.PathLike], *, flag: str = "input") -> Iterator[Document]:
    """Every document (with pages) under ``paths``: files, folders, globs of document files."""
    for source in find_sources(paths, ("document",), flag=flag):
        yield read_document(source)
