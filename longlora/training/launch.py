"""How a fine-tuning run is launched: its precision, the accelerate state and the DeepSpeed plugin.

``python -m longlora.finetune`` runs as one process or under ``torchrun`` / ``accelerate launch``
(DDP: gloo on CPU, NCCL on GPUs) with optional DeepSpeed ZeRO-2/3 through accelerate.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from data_tools.errors import DependencyError, InputError


def resolve_dtype(name: str) -> torch.dtype:
    """``--dtype`` -> the training dtype, by the rule every command shares (``longlora.models.resolve_dtype``)."""
    from longlora.models import resolve_dtype as shared_rule

    dtype = shared_rule(name)
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise InputError(
            "--dtype fp16 trains only on a GPU (mixed precision with loss scaling); use bf16 or fp32"
        )
    return dtype


MIXED_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # accelerate's names; fp32 -> "no"


def deepspeed_plugin(cfg, dtype: torch.dtype):
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise InputError(
            f"--deepspeed {path}: no such file; shipped configs are configs/deepspeed/zero2.json, zero3.json"
        )
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"--deepspeed {path}: not valid JSON ({err})") from None
    if importlib.util.find_spec("deepspeed") is None:
        raise DependencyError(
            "--deepspeed needs the deepspeed package, which is not installed: `pip install deepspeed` "
            "(listed in requirements-gpu.txt; it needs a CUDA toolchain), or drop --deepspeed to train with DDP"
        )
    from accelerate import DeepSpeedPlugin

    fills = {
        "train_micro_batch_size_per_gpu": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, value in fills.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds.pop("train_batch_size", None)
    if isinstance(ds.get("bf16"), dict) and ds["bf16"].get("enabled") == "auto":
        ds["bf16"]["enabled"] = dtype == torch.bfloat16
    return DeepSpeedPlugin(hf_ds_config=ds)


def fresh_accelerator_state() -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    precision, so a second run in the same process (a notebook, a benchmark, a test suite) with another
    --dtype would fail. A single-process run starts from a clean state; launched (distributed) runs keep
    theirs."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)
