"""Instruction records (LongAlpaca / Alpaca style) in JSON list or JSONL files.

    >>> records = read_records("LongAlpaca-12k.json")             # [{"instruction": ..., "output": ...}]
    >>> write_records("out.jsonl", records)                       # format from the suffix, atomic
    >>> for line, record in iter_records("qa.jsonl", required=("doc", "answer")): ...

A malformed line or record raises ``RecordError`` naming the file and the line number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence

from .errors import DataError
from .files import atomic_write


class RecordError(DataError):
    """A record file is malformed; the message names the file, the line and the fix."""


def _check(record, required: Sequence[str], where: str) -> dict:
    if not isinstance(record, dict):
        raise RecordError(
            f"{where}: expected a JSON object with {list(required)}, got {type(record).__name__}"
        )
    missing = [k for k in required if k not in record]
    if missing:
        raise RecordError(
            f"{where}: missing field(s) {missing}; every record needs {list(required)} "
            f"(it has {sorted(record)})"
        )
    bad = [k for k in required if not isinstance(record[k], str)]
    if bad:
        raise RecordError(f"{where}: field(s) {bad} must be strings")
    return record


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line of a JSONL file."""
    path = os.fspath(path)
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.strip())
            except json.JSONDecodeError as e:
                raise RecordError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line"
                ) from None
            yield lineno, _check(record, required, f"{path}:{lineno}")


def _json_list_line_numbers(text: str) -> list[int]:
    """Line number of each top-level element of a JSON list (for error messages)."""
    decoder = json.JSONDecoder()
    numbers = []
    i = text.index("[") + 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return numbers
        numbers.append(text.count("\n", 0, i) + 1)
        _, i = decoder.raw_decode(text, i)


def iter_records(
    path: str | os.PathLike, required: Sequence[str] = ("instruction", "output")
) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each record of a JSON list or JSONL file (see ``read_records``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RecordError(f"{path}: no such file; check the path")
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096)
    if not head.lstrip().startswith("["):
        yield from iter_jsonl(path, required)
        return
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(
            f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the file"
        ) from None
    try:
        lines = _json_list_line_numbers(text)
    except (ValueError, json.JSONDecodeError):
        lines = [0] * len(data)
    for i, (record, lineno) in enumerate(zip(data, lines)):
        yield lineno, _check(record, required, f"{path}:{lineno} (record {i + 1})")


def read_records(path: str | os.PathLike, required: Sequence[str] = ("instruction", "output")) -> list[dict]:
    """Read a JSON list or a JSONL file of records, each an object with the ``required`` string fields.

    The format is detected from the content (a file starting with '[' is a JSON list). Raises
    ``RecordError`` with ``file:line`` for a malformed line or record.
    """
    return [record for _, record in iter_records(path, required)]


def write_records(path: str | os.PathLike, records: Iterable[dict], fmt: str | None = None) -> str:
    """Write records atomically as a JSON list ("json") or JSONL ("jsonl"; default from the suffix)."""
    path = os.fspath(path)
    if fmt is None:
        fmt = "jsonl" if path.endswith(".jsonl") else "json"
    if fmt not in ("json", "jsonl"):
        raise ValueError(f"record format must be 'json' or 'jsonl', got {fmt!r}")
    records = list(records)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1) + "\n"
    atomic_write(path, text.encode("utf-8"))
    return path
