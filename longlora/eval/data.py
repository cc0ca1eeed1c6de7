"""Evaluation data -> one stream of token ids.

Accepted inputs (mix freely; a folder is read recursively in sorted order):

- ``.txt`` / ``.md`` / ``.pdf``: read through ``data_tools.load_document`` (PDF text extraction);
- ``.jsonl`` / ``.json``: records with a ``"text"`` field (one document per record);
- ``.bin``: token files from ``data_tools`` (dtype from the ``.bin.json`` sidecar); the original
  LongLoRA raw uint16 files (no sidecar) need ``token_dtype="uint16"``.

Text is tokenized without special tokens; documents are joined with the tokenizer's EOS id so
no window silently runs from one book into the next. Token files are used as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = (".txt", ".md", ".pdf")
RECORD_SUFFIXES = (".jsonl", ".json")
TOKEN_SUFFIXES = (".bin",)
SUPPORTED = TEXT_SUFFIXES + RECORD_SUFFIXES + TOKEN_SUFFIXES


class EvalDataError(ValueError):
    """Evaluation data is missing, unreadable or too short; the message says which file and the fix."""


@dataclass
class EvalData:
    """``tokens``: int64 ids, documents concatenated; ``sources``: one entry per file read."""

    tokens: np.ndarray
    sources: list[dict] = field(default_factory=list)
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus the supported files under each folder (recursive, sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED and not p.name.startswith(".")
            )
            if not found:
                raise EvalDataError(
                    f"folder {path} holds no evaluation files; put {', '.join(SUPPORTED)} files in it"
                )
            files.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED:
                raise EvalDataError(
                    f"{path}: unsupported file type {path.suffix or '(none)'}; use one of {', '.join(SUPPORTED)}"
                )
            files.append(path)
        else:
            raise EvalDataError(f"{path}: no such file or folder; check the --data path")
    return files


def load_eval_tokens(
    paths: list[str | Path],
    tokenizer=None,
    *,
    token_dtype: str | None = None,
    max_tokens: int | None = None,
    vocab_size: int | None = None,
) -> EvalData:
    """Read every path into one token stream of at most ``max_tokens`` ids.

    ``tokenizer`` is needed for text inputs; ``vocab_size`` (the model's) guards token files
    written with another tokenizer. Raises :class:`EvalDataError` (or a ``data_tools``
    ``DocumentError`` for unreadable documents) with the file and the fix in the message.
    """
    if max_tokens is not None and max_tokens <= 1:
        raise EvalDataError(f"--max-tokens must be at least 2, got {max_tokens}")
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    chunks: list[np.ndarray] = []
    sources: list[dict] = []
    total = 0
    truncated = False
    for path in expand_paths(paths):
        if max_tokens is not None and total >= max_tokens:
            truncated = True
            break
        budget = None if max_tokens is None else max_tokens - total
        suffix = path.suffix.lower()
        if suffix in TOKEN_SUFFIXES:
            ids = _read_token_file(path, token_dtype, budget, vocab_size)
            kind = "tokens"
        else:
            if tokenizer is None:
                raise EvalDataError(f"{path}: a tokenizer is needed to evaluate text files")
            texts = _read_texts(path)
            ids = _tokenize_documents(texts, tokenizer, eos, budget)
            kind = "records" if suffix in RECORD_SUFFIXES else "text"
        if chunks and eos is not None and kind != "tokens":
            ids = np.concatenate([np.asarray([eos], dtype=np.int64), ids])
        if budget is not None and len(ids) > budget:
            ids = ids[:budget]
            truncated = True
        chunks.append(ids)
        sources.append({"path": str(path), "kind": kind, "tokens": int(len(ids))})
        total += len(ids)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    if len(tokens) == 0:
        raise EvalDataError(
            f"no tokens in {', '.join(str(p) for p in paths)}: the data is empty; give a text with content"
        )
    return EvalData(tokens=tokens, sources=sources, truncated=truncated)


def _read_texts(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in RECORD_SUFFIXES:
        from data_tools.records import read_records

        records = read_records(path, required=("text",))
        return [str(r["text"]) for r in records if str(r["text"]).strip()]
    from data_tools import load_document

    return [load_document(path).text]


def _tokenize_documents(texts: list[str], tokenizer, eos: int | None, budget: int | None) -> np.ndarray:
    out: list[np.ndarray] = []
    total = 0
    for i, text in enumerate(texts):
        if budget is not None and total >= budget:
            break
        if budget is not None:
            # A token is rarely shorter than one character: cut huge texts before tokenizing.
            text = text[: (budget - total) * 16 + 1024]
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)[
            "input_ids"
        ]
        arr = np.asarray(ids, dtype=np.int64)
        if i and eos is not None:
            arr = np.concatenate([np.asarray([eos], dtype=np.int64), arr])
        out.append(arr)
        total += len(arr)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _read_token_file(
    path: Path, token_dtype: str | None, budget: int | None, vocab_size: int | None
) -> np.ndarray:
    from data_tools.tokenfile import open_token_file

    try:
        tf = open_token_file(path, dtype=token_dtype)
    except (OSError, ValueError) as err:
        hint = (
            "" if token_dtype else " (a raw .bin without a .bin.json sidecar needs --dtype uint16 or uint32)"
        )
        raise EvalDataError(f"cannot read token file {path}: {err}{hint}") from err
    stored = np.dtype(tf.dtype)
    size = int(tf.tokens.shape[0])
    if path.stat().st_size % stored.itemsize:
        raise EvalDataError(
            f"token file {path} is {path.stat().st_size} bytes, not a whole number of {stored.name} values; "
            f"the file is truncated or the dtype is wrong (try --dtype uint16 / uint32)"
        )
    n = size if budget is None else min(size, budget)
    ids = np.asarray(tf.tokens[:n], dtype=np.int64)
    if vocab_size is not None and n and int(ids.max()) >= vocab_size:
        raise EvalDataError(
            f"token file {path} holds id {int(ids.max())}, beyond the model's vocabulary of {vocab_size}: "
            f"it was written with another tokenizer ({tf.meta.get('tokenizer', 'unknown')}) or the wrong "
            f"--dtype; re-tokenize it with data_tools for this model"
        )
    return ids
