"""Evaluation data -> one stream of token ids.

Inputs are read by ``data_tools.reader``, the reader every command shares (files, folders read
recursively in sorted order with hidden files skipped, globs):

- documents (.txt / .text / .md / .markdown / .pdf): read through ``data_tools.load_document``;
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

from data_tools.errors import DataError
from data_tools.reader import DOCUMENT_SUFFIXES, RECORD_SUFFIXES, TOKEN_SUFFIXES, find_sources, read_texts

SUPPORTED = DOCUMENT_SUFFIXES + RECORD_SUFFIXES + TOKEN_SUFFIXES


@dataclass
class EvalData:
    """``tokens``: int64 ids, documents concatenated; ``sources``: one entry per file read."""

    tokens: np.ndarray
    sources: list[dict] = field(default_factory=list)
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files named directly, plus the supported files under each folder or glob (see ``data_tools.reader``)."""
    return [source.path for source in find_sources(paths, flag="--data")]


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
    written with another tokenizer. Raises :class:`DataError` (or a ``data_tools``
    ``DocumentError`` for unreadable documents) with the file and the fix in the message.
    """
    if max_tokens is not None and max_tokens <= 1:
        raise DataError(f"--max-tokens must be at least 2, got {max_tokens}")
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    chunks: list[np.ndarray] = []
    sources: list[dict] = []
    total = 0
    truncated = False
    for source in find_sources(paths, flag="--data"):
        path = source.path
        if max_tokens is not None and total >= max_tokens:
            truncated = True
            break
        budget = None if max_tokens is None else max_tokens - total
        if source.kind == "tokens":
            ids = _read_token_file(path, token_dtype, budget, vocab_size)
            kind = "tokens"
        else:
            if tokenizer is None:
                raise DataError(f"{path}: a tokenizer is needed to evaluate text files")
            texts = [text for _, text in read_texts(source) if text.strip()]
            ids = _tokenize_documents(texts, tokenizer, eos, budget)
            kind = "records" if source.kind == "records" else "text"
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
        raise DataError(
            f"no tokens in {', '.join(str(p) for p in paths)}: the data is empty; give a text with content"
        )
    return EvalData(tokens=tokens, sources=sources, truncated=truncated)


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
        raise DataError(f"cannot read token file {path}: {err}{hint}") from err
    n = len(tf) if budget is None else min(len(tf), budget)
    if vocab_size is not None:
        tf.check_vocabulary(vocab_size, scan=n)
    return np.asarray(tf.tokens[:n], dtype=np.int64)
