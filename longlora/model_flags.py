"""The model flags every command shares (``--model``, ``--adapter``, ``--context-length``, ``--rope-type``,
``--dtype``, ``--device``, ...), without torch: the app parses them before it serves its first page, and
importing torch and transformers for that would delay the page by seconds
(``benchmarks/app_startup.py``). :func:`longlora.models.load_from_args` loads from the parsed flags.
"""

from __future__ import annotations

import argparse

from data_tools.errors import ModelLoadError

DEFAULT_SPEC = "default"
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
"""``--dtype`` values of every command; ``auto`` is decided by :func:`resolve_dtype` alone."""
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def canonical_dtype(name: str) -> str:
    """A ``--dtype`` value -> one of :data:`DTYPE_CHOICES` (``float32`` -> ``fp32``, ...)."""
    key = str(name).strip().lower()
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_CHOICES:
        raise ModelLoadError(
            f"unknown dtype {name!r}; use one of {', '.join(DTYPE_CHOICES)} (or {', '.join(DTYPE_ALIASES)})"
        )
    return key


class _DtypeAction(argparse.Action):
    """``--dtype``: stores the canonical model dtype; where a command reads raw token files,
    ``uint16``/``uint32`` (that command's earlier spelling of the token dtype) go to ``token_dest``."""

    def __init__(self, *args, token_dest: str | None = None, **kwargs):
        self.token_dest = token_dest
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if self.token_dest and str(values) in ("uint16", "uint32"):
            setattr(namespace, self.token_dest, str(values))
            return
        try:
            setattr(namespace, self.dest, canonical_dtype(values))
        except ModelLoadError as err:
            raise argparse.ArgumentError(self, str(err)) from None


def parse_length(text: str) -> int:
    """``"4096"`` -> 4096, ``"4k"`` -> 4096, ``"1.5k"`` -> 1536 (k = 1024 tokens); for argparse ``type=``."""
    raw = str(text).strip().lower()
    try:
        value = float(raw[:-1]) * 1024 if raw.endswith("k") else int(raw)
        if value != int(value):
            raise ValueError
        value = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot read {text!r} as a token length; write a whole number such as 4096 or 4k"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"token length must be positive, got {text!r}")
    return value


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    model: bool = True,
    adapter: bool = True,
    context_length: bool = True,
    load_in_4bit: bool = True,
    dtype_default: str = "auto",
    token_dtype_dest: str | None = None,
    title: str = "model",
):
    """Add the model flags every command shares to ``parser`` (as a group titled ``title``); return the group.

    ``--model``, ``--adapter``, ``--context-length`` (accepts ``4k``), ``--rope-type``, ``--dtype``
    (alias ``--torch-dtype``; ``float32``/``bfloat16``/``float16`` read as ``fp32``/``bf16``/``fp16``),
    ``--device``, ``--trust-remote-code``, ``--load-in-4bit``. Keyword switches leave out flags a command
    has no use for; ``token_dtype_dest`` lets ``--dtype uint16|uint32`` (a token-file dtype) land in that
    attribute instead. :func:`load_from_args` loads from the parsed namespace.
    """
    from longlora.position import ROPE_TYPES  # torch-free

    group = parser.add_argument_group(title)
    add = group.add_argument
    if model:
        add(
            "--model",
            default=DEFAULT_SPEC,
            help="'default' (bundled SmolLM2-135M-Instruct), a local model/merged/adapter folder, or a hub id "
            "(default: %(default)s)",
        )
    if adapter:
        add("--adapter", default=None, help="a LoRA/LoRA+ adapter folder to put on --model")
    if context_length:
        add(
            "--context-length",
            type=parse_length,
            default=None,
            help="tokens the model must address (4096 or 4k); above its window, Position Interpolation "
            "is applied at load",
        )
        add(
            "--rope-type",
            default="linear",
            choices=ROPE_TYPES,
            help="RoPE scaling used with --context-length: linear (the paper's PI), yarn, or the scheme "
            "the model already uses (llama3, longrope) (default: %(default)s)",
        )
    add(
        "--dtype",
        "--torch-dtype",
        dest="dtype",
        action=_DtypeAction,
        token_dest=token_dtype_dest,
        metavar="{" + ",".join(DTYPE_CHOICES) + "}",
        default=dtype_default,
        help="weights and activations: auto = bf16 where it is fast (CUDA with bf16, a CPU with "
        "AVX512-BF16/AMX), else fp32; float32/bfloat16/float16 are accepted (default: %(default)s)",
    )
    add("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    add("--trust-remote-code", action="store_true", help="allow custom model code from the hub")
    if load_in_4bit:
        add("--load-in-4bit", action="store_true", help="NF4 weights through bitsandbytes (meant for CUDA)")
    return group
