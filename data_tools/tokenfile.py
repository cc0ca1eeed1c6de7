"""Token files for pre-training and perplexity: ``NAME.bin`` + ``NAME.bin.json``.

``NAME.bin`` holds raw little-endian token ids, uint16 when the vocabulary fits (<= 65,536 ids),
uint32 otherwise (Llama-3, Qwen). ``NAME.bin.json`` records how to read it:

    {"dtype": "uint16", "tokenizer": "HuggingFaceTB/SmolLM2-135M", "vocab_size": 49152,
     "num_tokens": 123456, "documents": [[0, 5120], [5120, 9000], ...]}

``documents`` holds [start, end) token offsets of each source document. The original LongLoRA
files (PG19, proof-pile) are bare uint16 ``.bin`` files without a sidecar: open them with
``open_token_file(path, dtype="uint16")``.

    >>> write_token_file("pg19.bin", [[1, 2, 3], [4, 5]], vocab_size=32000, tokenizer="llama")
    >>> tf = open_token_file("pg19.bin")
    >>> tf.tokens[:3], tf.documents
    (memmap([1, 2, 3], dtype=uint16), [(0, 3), (3, 5)])
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError

DTYPES = ("uint16", "uint32")


class TokenFileError(DataError):
    """A token file is missing, inconsistent with its sidecar, or cannot hold the ids."""


def dtype_for_vocab(vocab_size: int) -> str:
    """'uint16' when every id < vocab_size fits in 16 bits, else 'uint32'."""
    if vocab_size <= 0:
        raise TokenFileError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > 2**32:
        raise TokenFileError(f"vocab_size {vocab_size} does not fit in uint32 token files")
    return "uint16" if vocab_size <= 2**16 else "uint32"


def sidecar_path(path: str | os.PathLike) -> str:
    return os.fspath(path) + ".json"


@dataclass
class TokenFile:
    tokens: np.ndarray  # np.memmap (read-only) of ``dtype``
    dtype: str
    documents: list[tuple[int, int]] | None
    meta: dict = field(default_factory=dict)
    path: str = ""

    def __len__(self) -> int:
        return len(self.tokens)

    def document(self, i: int) -> np.ndarray:
        """The tokens of document ``i`` (needs document boundaries)."""
        if self.documents is None:
            raise TokenFileError("this token file records no document boundaries (raw .bin without sidecar)")
        start, end = self.documents[i]
        return self.tokens[start:end]

    def check_vocabulary(self, vocab_size: int, *, scan: int | None = 0) -> None:
        """Refuse a file written for another vocabulary than the model's ``vocab_size``.

        The sidecar's recorded vocabulary is always compared; ``scan`` ids (None: all) are also checked
        against ``vocab_size`` (raw files have no sidecar, and a wrong ``dtype`` shows up as huge ids).
        """
        name = self.path or "token file"
        tokenizer = self.meta.get("tokenizer", "unknown")
        n = len(self) if scan is None else min(int(scan), len(self))
        if n:
            top = int(np.max(self.tokens[:n]))
            if top >= vocab_size:
                raise TokenFileError(
                    f"token file {name} holds id {top}, beyond the model's vocabulary of {vocab_size}: it was "
                    f"written with another tokenizer ({tokenizer}) or the wrong --dtype; re-tokenize it with "
                    "`python -m data_tools tokenize` and this model's tokenizer"
                )
        recorded = self.meta.get("vocab_size")
        if recorded is not None and int(recorded) > vocab_size:
            raise TokenFileError(
                f"{name}: token file was written for a vocabulary of {recorded} ids (tokenizer {tokenizer!r}) "
                f"but the model's tokenizer has {vocab_size}; re-tokenize it with `python -m data_tools "
                "tokenize` and this model's tokenizer"
            )


class ChainedTokens:
    """Several 1-D token arrays (memmaps of any dtype, or in-memory arrays) read as one, lazily.

    Slicing copies only the requested ids (as int64); nothing of the total size is ever allocated, so
    gigabytes of uint16 files stay on disk (a concatenation would hold them in memory as int64, 4x
    their size, in every process).
    """

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)  # (P + 1,)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int64)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(key)
            part = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.int64(self.parts[part][i - self.offsets[part]])
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ChainedTokens supports integers and contiguous slices")
        lo, hi, _ = key.indices(len(self))
        out = np.empty(max(0, hi - lo), dtype=np.int64)
        if hi <= lo:
            return out
        first = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        pos = lo
        for part in range(first, len(self.parts)):
            start = int(self.offsets[part])
            if start >= hi:
                break
            a, b = pos - start, min(hi, int(self.offsets[part + 1])) - start
            out[pos - lo : pos - lo + b - a] = self.parts[part][a:b]
            pos += b - a
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[int]:
        return self[:].tolist()


class TokenWriter:
    """Stream documents of token ids into ``NAME.bin`` (+ sidecar), atomically on ``close()``.

    with TokenWriter("corpus.bin", vocab_size=49152, tokenizer="smollm2") as w:
        for ids in stream:
            w.add(ids)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        vocab_size: int,
        tokenizer: str = "unknown",
        dtype: str | None = None,
    ):
        self.path = os.fspath(path)
        self.vocab_size = int(vocab_size)
        needed = dtype_for_vocab(self.vocab_size)
        if dtype is None:
            dtype = needed
        if dtype not in DTYPES:
            raise TokenFileError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if dtype == "uint16" and needed == "uint32":
            raise TokenFileError(
                f"vocab_size {self.vocab_size} does not fit in uint16 (max 65,536 ids); use dtype='uint32'"
            )
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.documents: list[tuple[int, int]] = []
        self.num_tokens = 0
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            dir=directory, prefix="." + os.path.basename(self.path) + ".", suffix=".tmp"
        )
        self._f = os.fdopen(fd, "wb")
        self._closed = False

    def add(self, ids: Sequence[int] | np.ndarray) -> None:
        """Append one document's token ids."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise TokenFileError(f"a document must be a flat sequence of ids, got shape {arr.shape}")
        if arr.size:
            if not np.issubdtype(arr.dtype, np.integer):
                raise TokenFileError(f"token ids must be integers, got {arr.dtype}")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self.vocab_size:
                raise TokenFileError(
                    f"document {len(self.documents)} has token id {hi if hi >= self.vocab_size else lo} "
                    f"outside [0, {self.vocab_size}); pass the tokenizer's full vocab_size (len(tokenizer))"
                )
        self._f.write(arr.astype("<" + np.dtype(self.dtype).str[1:], copy=False).tobytes())
        self.documents.append((self.num_tokens, self.num_tokens + int(arr.size)))
        self.num_tokens += int(arr.size)

    def close(self) -> str:
        if self._closed:
            return self.path
        self._f.close()
        meta = {
            "dtype": self.dtype,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "num_tokens": self.num_tokens,
            "documents": [list(d) for d in self.documents],
        }
        from .files import _umask, atomic_write

        os.chmod(self._tmp, 0o666 & ~_umask())
        os.replace(self._tmp, self.path)
        atomic_write(sidecar_path(self.path), (json.dumps(meta) + "\n").encode())
        self._closed = True
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._f.close()
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
            self._closed = True

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_token_file(
    path: str | os.PathLike,
    documents: Iterable[Sequence[int] | np.ndarray],
    *,
    vocab_size: int,
    tokenizer: str = "unknown",
    dtype: str | None = None,
) -> TokenFile:
    """Write documents of token ids to ``path`` (+ ``path.json`` sidecar); returns it opened."""
    with TokenWriter(path, vocab_size=vocab_size, tokenizer=tokenizer, dtype=dtype) as w:
        for ids in documents:
            w.add(ids)
    return open_token_file(path)


def open_token_file(path: str | os.PathLike, dtype: str | None = None) -> TokenFile:
    """Memory-map a token file. A ``.bin`` without sidecar needs ``dtype`` ("uint16" for the original
    LongLoRA PG19/proof-pile files)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TokenFileError(f"{path}: no such token file; check the path (token files end in .bin)")
    meta: dict = {}
    side = sidecar_path(path)
    if os.path.exists(side):
        try:
            with open(side, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, OSError) as e:
            raise TokenFileError(
                f"{side}: unreadable sidecar ({e}); regenerate it with `python -m data_tools tokenize`"
            ) from e
        recorded = meta.get("dtype")
        if recorded not in DTYPES:
            raise TokenFileError(f"{side}: dtype {recorded!r} is not one of {DTYPES}")
        if dtype is not None and dtype != recorded:
            raise TokenFileError(
                f"{path}: dtype={dtype!r} given but the sidecar says {recorded!r}; drop the dtype argument"
            )
        dtype = recorded
    elif dtype is None:
        raise TokenFileError(
            f"{path}: raw token file without a {os.path.basename(side)} sidecar, so its dtype is unknown; "
            "pass dtype='uint16' (the original LongLoRA PG19/proof-pile files) or dtype='uint32'"
        )
    if dtype not in DTYPES:
        raise TokenFileError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    itemsize = np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size % itemsize:
        raise TokenFileError(
            f"{path}: size {size} bytes is not a multiple of {itemsize} ({dtype}); wrong dtype or truncated file"
        )
    n = size // itemsize
    if meta and meta.get("num_tokens", n) != n:
        raise TokenFileError(
            f"{path}: holds {n} tokens but its sidecar says {meta['num_tokens']}; the file is truncated or "
            "the sidecar belongs to another file: regenerate it"
        )
    le = np.dtype(dtype).newbyteorder("<")
    tokens = np.memmap(path, dtype=le, mode="r", shape=(n,)) if n else np.zeros(0, dtype=le)
    documents = [tuple(d) for d in meta["documents"]] if meta.get("documents") is not None else None
    return TokenFile(tokens=tokens, dtype=dtype, documents=documents, meta=meta, path=path)
