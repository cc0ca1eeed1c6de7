"""Typed, self-validating settings of ``python -m longlora.finetune``, fillable from YAML recipes.

Every field has a default (the paper's recipe, Sec. 4.1: LoRA+ r=8, AdamW (0.9, 0.95), lr 2e-5, weight
decay 0, 20 warmup steps, batch 1 x 8 accumulation, 1000 steps, S2-Attn with group = 1/4 of the
context), so a YAML file names only what it changes. Keys may be spelled like the flags
(``context-length``) or like the fields (``context_length``); command-line flags override the file.
Errors name the flag to fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longlora.lora import METHODS
from longlora.model_flags import DTYPE_ALIASES, canonical_dtype, parse_length
from longlora.model_flags import DTYPE_CHOICES as DTYPES
from longlora.position import ROPE_TYPES
from longlora.training.data import PACK_MODES

MODES = ("pretrain", "sft")
ATTENTIONS = ("s2", "full", "short", "s2-sink")
DEFAULT_SINK_TOKENS = 4
DEFAULT_SINK_STRIDE = 8
LR_SCHEDULES = ("constant", "cosine")


def _opt(default: Any, help: str, *, choices: tuple | None = None, default_text: str | None = None, **extra):
    """A config field with its command-line help: ``build_parser`` makes the flag from it and appends the
    default (``default_text`` when the default is computed at run time), so help never repeats it by hand."""
    meta = {"help": help, "choices": choices, "default_text": default_text, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FinetuneConfig:
    model: str = _opt(
        "default", "'default' (bundled SmolLM2-135M-Instruct), a local model folder, or a hub id"
    )
    adapter: str | None = _opt(
        None, "an adapter folder from an earlier run to keep training (LoRA methods)", default_text="none"
    )
    mode: str = _opt(
        "pretrain", "pretrain: next-token loss on long text; sft: LongAlpaca QA records", choices=MODES
    )
    data: list[str] = _opt(
        [],
        "pretrain: documents (.txt/.md/.pdf, ...), folders or globs of them, JSONL with 'text', token files "
        "(.bin), a saved datasets folder or dataset name; sft: LongAlpaca .json/.jsonl (repeatable)",
        default_text="required",
    )
    output_dir: str | None = _opt(
        None, "where the adapter (or full model), logs and checkpoints go", default_text="required"
    )
    overwrite_output_dir: bool = _opt(False, "allow writing into a non-empty --output-dir")
    method: str = _opt(
        "lora+",
        "lora+ (LoRA + embedding + norms), lora, lora+norm (LoRA + norms), lora+embed (LoRA + embedding), "
        "full, qlora (4-bit base)",
        choices=METHODS,
    )
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    attention: str = _opt(
        "s2",
        "s2 (shifted groups), full, short (groups without shift), s2-sink (s2 groups that also see the first "
        "--sink-tokens tokens and every --sink-stride-th earlier token of each document)",
        choices=ATTENTIONS,
    )
    sink_tokens: int | None = _opt(
        None,
        "--attention s2-sink: every query also attends to this many first tokens of its document "
        "(>= 1, or 0 with a --sink-stride; below the group size)",
        default_text=f"{DEFAULT_SINK_TOKENS} with s2-sink",
    )
    sink_stride: int | None = _opt(
        None,
        "--attention s2-sink: every query also attends to every s-th earlier token of its document (document "
        "positions p with p % s == s - 1); 0 for none, else >= 2",
        default_text=f"{DEFAULT_SINK_STRIDE} with s2-sink",
    )
    s2_group_size_ratio: float | None = _opt(0.25, "S2 group size as a fraction of the context")
    s2_group_size: int | None = _opt(
        None, "S2 group size in tokens (overrides the ratio)", default_text="from the ratio"
    )
    s2_backend: str = _opt(
        "auto",
        "S2 kernel: auto (flash-attn varlen on CUDA when installed, else group-by-group SDPA), sdpa, flash, "
        "flex (one fused flex_attention call per layer; CUDA only for training)",
        choices=("auto", "sdpa", "flash", "flex"),
    )
    context_length: int | None = _opt(
        None,
        "training length (16384 or 16k); above the model's window applies Position Interpolation",
        default_text="the model's current window",
        type=parse_length,
    )
    rope_type: str = _opt(
        "linear",
        "RoPE scaling used with --context-length: linear (the paper's PI), yarn, or the scheme the model "
        "already uses (llama3, longrope)",
        choices=ROPE_TYPES,
    )
    pack: str = _opt(
        "document",
        "pretrain packing: document (positions restart per document) or eos (documents joined with EOS)",
        choices=PACK_MODES,
    )
    learning_rate: float = _opt(2e-5, "peak learning rate")
    warmup_steps: int = _opt(20, "linear warmup steps, then the --lr-schedule")
    lr_schedule: str = _opt(
        "constant",
        "after warmup: constant (the paper's fine-tuning) or cosine decay to 10% of the peak at --max-steps "
        "(for pre-training from scratch)",
        choices=LR_SCHEDULES,
    )
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm, 0 to disable")
    per_device_batch_size: int = _opt(1, "rows per process per micro-step")
    gradient_accumulation_steps: int = _opt(8, "micro-steps per optimizer step")
    max_steps: int = _opt(1000, "optimizer steps")
    save_steps: int | None = _opt(None, "checkpoint every N steps", default_text="max-steps / 10")
    keep_checkpoints: int = _opt(
        2,
        "newest checkpoints kept (--resume falls back to an older one when the newest is damaged)",
    )
    dtype: str = _opt(
        "auto",
        "weights and activations, the rule of every command: auto = bf16 where it is fast (CUDA with bf16, "
        "a CPU with AVX512-BF16/AMX), else fp32; fp16 needs a GPU; float32/bfloat16/float16 are accepted",
        choices=DTYPES,
        type=canonical_dtype,
    )
    gradient_checkpointing: bool = _opt(
        True, "keep activations (faster, much more memory)", flag="--no-gradient-checkpointing"
    )
    chunked_loss: bool = _opt(
        True,
        "compute the loss without the tokens x vocabulary logits (chunked linear + cross-entropy; Liger's fused "
        "kernel on CUDA when installed); off: the plain logits path",
        flag="--no-chunked-loss",
    )
    offload_activations: bool = _opt(
        False, "CUDA: keep checkpointed activations in pinned CPU memory (longer context, slower steps)"
    )
    tiled_mlp: bool = _opt(
        False,
        "run each layer's MLP over the sequence in slices (DeepSpeed's TiledMLP): its (tokens x intermediate) "
        "tensors exist one slice at a time, for one more MLP forward per step; for long contexts (needs deepspeed)",
    )
    tiled_mlp_shards: int | None = _opt(
        None, "slices for --tiled-mlp", default_text="auto: ceil(tokens / hidden size), DeepSpeed's rule"
    )
    compact_cpu_memory: bool = _opt(
        False,
        "CPU: give freed activation memory back to the system at once (glibc; peak RSS about half at 8k, "
        "steps ~30% slower): for when memory limits the context",
    )
    resume: bool = _opt(False, "continue from the last checkpoint in --output-dir (from step 0 if none yet)")
    seed: int = _opt(42, "seed for LoRA init and data order")
    deepspeed: str | None = _opt(
        None, "DeepSpeed config JSON (configs/deepspeed/zero2.json or zero3.json)", default_text="none"
    )
    sequence_parallel: int = _opt(
        1,
        "split every row over N processes (DeepSpeed Ulysses with S2-Attn as its core attention; launch a "
        "multiple of N with torchrun or deepspeed; N must divide the query heads); 1: off",
    )
    log_file: str | None = _opt(None, "JSONL training log", default_text="OUTPUT/train_log.jsonl")

    def __post_init__(self):
        def choice(name, value, options):
            if value not in options:
                raise ValueError(f"--{_flag(name)} {value!r} is not one of: {', '.join(options)}")

        choice("mode", self.mode, MODES)
        choice("method", self.method, METHODS)
        choice("attention", self.attention, ATTENTIONS)
        choice("rope_type", self.rope_type, ROPE_TYPES)
        choice("pack", self.pack, PACK_MODES)
        self.dtype = DTYPE_ALIASES.get(str(self.dtype).lower(), self.dtype)  # float32 -> fp32, ...
        choice("dtype", self.dtype, DTYPES)
        choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in (self.data or [])]
        if not self.data:
            raise ValueError(
                "--data is required: text files/folders, JSONL, token files or a dataset (see --help)"
            )
        if not self.output_dir:
            raise ValueError("--output-dir is required: the folder the adapter (or full model) is written to")
        for name in (
            "lora_r",
            "lora_alpha",
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "max_steps",
            "keep_checkpoints",
            "sequence_parallel",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("--warmup-steps and --weight-decay must be >= 0")
        if self.save_steps is not None and self.save_steps < 1:
            raise ValueError(f"--save-steps must be at least 1, got {self.save_steps}")
        if self.context_length is not None and self.context_length < 2:
            raise ValueError(f"--context-length must be at least 2 tokens, got {self.context_length}")
        if self.s2_group_size is not None:
            if self.s2_group_size < 2:
                raise ValueError(f"--s2-group-size must be at least 2 tokens, got {self.s2_group_size}")
            self.s2_group_size_ratio = None  # an explicit size wins over the default ratio
        elif self.s2_group_size_ratio is not None and not 0 < self.s2_group_size_ratio <= 1:
            raise ValueError(f"--s2-group-size-ratio must be in (0, 1], got {self.s2_group_size_ratio}")
        if self.attention == "s2-sink":
            if self.sink_tokens is None:
                self.sink_tokens = DEFAULT_SINK_TOKENS
            if self.sink_stride is None:
                self.sink_stride = DEFAULT_SINK_STRIDE
            if self.sink_stride < 0 or self.sink_stride == 1:
                raise ValueError(
                    f"--sink-stride must be 0 (no strided keys) or at least 2, got {self.sink_stride} (a stride "
                    "of 1 would be every earlier token: use --attention full)"
                )
            if self.sink_tokens < 0 or (self.sink_tokens == 0 and self.sink_stride == 0):
                raise ValueError(
                    f"--sink-tokens must be at least 1, got {self.sink_tokens} (0 only with a --sink-stride; "
                    "for plain S2 use --attention s2)"
                )
            if self.s2_group_size is not None and self.sink_tokens >= self.s2_group_size:
                raise ValueError(
                    f"--sink-tokens {self.sink_tokens} must be below the group size (--s2-group-size "
                    f"{self.s2_group_size}): lower --sink-tokens or raise --s2-group-size"
                )
        else:
            for name in ("sink_tokens", "sink_stride"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"--{_flag(name)} applies to --attention s2-sink only (got --attention {self.attention}); "
                        f"drop --{_flag(name)} or pass --attention s2-sink"
                    )
        if self.tiled_mlp_shards is not None:
            if self.tiled_mlp_shards < 1:
                raise ValueError(f"--tiled-mlp-shards must be at least 1, got {self.tiled_mlp_shards}")
            if not self.tiled_mlp:
                raise ValueError(
                    f"--tiled-mlp-shards {self.tiled_mlp_shards} applies only with --tiled-mlp; add --tiled-mlp"
                )
        if self.adapter is not None and self.method == "full":
            raise ValueError("--adapter continues a LoRA adapter; it cannot be combined with --method full")

    @property
    def save_every(self) -> int:
        """Checkpoint period: --save-steps, else about ten checkpoints per run."""
        return self.save_steps or max(1, self.max_steps // 10)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return name.replace("_", "-")


FIELDS = {f.name: f for f in dataclasses.fields(FinetuneConfig)}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe file -> field values (keys normalised to field names; unknown keys are an error)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {path}: no such file; shipped recipes are under configs/")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a mapping of flag: value, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise ValueError(
                f"--config {path}: unknown key {key!r}; keys are the finetune flags, e.g. context-length"
            )
        out[name] = value
    ds = out.get("deepspeed")
    if ds and not Path(ds).is_absolute() and not Path(ds).exists():
        # recipes name DeepSpeed configs relative to the repository root; find them from anywhere
        for root in (p.parent, p.parent.parent):
            if (root / ds).is_file():
                out["deepspeed"] = str(root / ds)
                break
    return out


def build_parser() -> argparse.ArgumentParser:
    """One flag per ``FinetuneConfig`` field; help and choices come from the field, with its default."""
    p = argparse.ArgumentParser(
        prog="python -m longlora.finetune",
        description="LongLoRA fine-tuning: Position Interpolation + S2-Attn + LoRA+ (see the module docstring).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--config", help="YAML recipe whose keys are these flags (configs/*.yaml); command-line flags win"
    )
    # the deepspeed launcher passes --local_rank unless told --no_local_rank; the rank comes from the
    # environment (LOCAL_RANK) either way
    p.add_argument("--local-rank", "--local_rank", type=int, dest="local_rank", help=argparse.SUPPRESS)
    hints = typing.get_type_hints(FinetuneConfig)
    for f in dataclasses.fields(FinetuneConfig):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = hints[f.name]
        kwargs: dict = {"dest": f.name}
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
            help_ = meta["help"]  # a switch: its default is the absence of the flag
        else:
            shown = meta.get("default_text") or default
            help_ = f"{meta['help']} (default: {shown})"
            item = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            if typing.get_origin(kind) is list:
                kwargs.update(nargs="+", action="extend")
            # `int | None` -> int
            kwargs["type"] = meta.get("type") or next(
                (t for t in typing.get_args(item) if t is not type(None)), item
            )
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        p.add_argument(
            meta.get("flag") or "--" + f.name.replace("_", "-"), help=help_.replace("%", "%%"), **kwargs
        )
    return p


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    """Command line (and the ``--config`` YAML it names) -> ``FinetuneConfig``; flags win over the file."""
    ns = vars(build_parser().parse_args(argv))
    ns.pop("local_rank", None)
    values: dict = {}
    if "config" in ns:
        values.update(load_yaml(ns.pop("config")))
    values.update(ns)
    return FinetuneConfig(**values)
