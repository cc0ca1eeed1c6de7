"""Typed, self-validating settings of ``python -m longlora.finetune``, fillable from YAML recipes.

Every field has a default (the paper's recipe, Sec. 4.1: LoRA+ r=8, AdamW (0.9, 0.95), lr 2e-5, weight
decay 0, 20 warmup steps, batch 1 x 8 accumulation, 1000 steps, S2-Attn with group = 1/4 of the
context), so a YAML file names only what it changes. Keys may be spelled like the flags
(``context-length``) or like the fields (``context_length``); command-line flags override the file.
Errors name the flag to fix.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("pretrain", "sft")
METHODS = ("lora+", "lora", "full", "qlora")
ATTENTIONS = ("s2", "full", "short")
ROPE_TYPES = ("linear", "yarn", "dynamic", "llama3")
PACK_MODES = ("document", "eos")
DTYPES = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class FinetuneConfig:
    model: str = "default"
    adapter: str | None = None
    mode: str = "pretrain"
    data: list[str] = field(default_factory=list)
    output_dir: str | None = None
    overwrite_output_dir: bool = False
    method: str = "lora+"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    attention: str = "s2"
    s2_group_size_ratio: float | None = 0.25
    s2_group_size: int | None = None
    context_length: int | None = None
    rope_type: str = "linear"
    pack: str = "document"
    learning_rate: float = 2e-5
    warmup_steps: int = 20
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    max_steps: int = 1000
    save_steps: int | None = None
    dtype: str = "auto"
    gradient_checkpointing: bool = True
    resume: bool = False
    seed: int = 42
    deepspeed: str | None = None
    log_file: str | None = None

    def __post_init__(self):
        def choice(name, value, options):
            if value not in options:
                raise ValueError(f"--{_flag(name)} {value!r} is not one of: {', '.join(options)}")

        choice("mode", self.mode, MODES)
        choice("method", self.method, METHODS)
        choice("attention", self.attention, ATTENTIONS)
        choice("rope_type", self.rope_type, ROPE_TYPES)
        choice("pack", self.pack, PACK_MODES)
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
