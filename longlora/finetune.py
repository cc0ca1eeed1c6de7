"""python -m longlora.finetune: extend a model's context (pretrain) or teach it long-document QA (sft).

The LongLoRA recipe (paper Sec. 3-4): Position Interpolation to the target ``--context-length``,
S2-Attn while training (full attention at inference), LoRA+ (LoRA on q,k,v,o + trainable embedding and
norms), AdamW (0.9, 0.95), lr 2e-5, weight decay 0, constant LR after 20 warmup steps, batch 1 x 8
gradient accumulation, bf16, gradient checkpointing.

Usage (CPU examples first; every flag has --help):

    # 2-step smoke run on the bundled SmolLM2-135M-Instruct, 8k -> 16k, LoRA+ with S2-Attn
    python -m longlora.finetune --model default --mode pretrain --data book.txt \\
        --context-length 16384 --max-steps 2 --gradient-accumulation-steps 1 --output-dir out/smol-16k

    # long-QA supervised fine-tuning on LongAlpaca records
    python -m longlora.finetune --mode sft --data LongAlpaca-12k.json --context-length 16384 \\
        --output-dir out/smol-16k-sft

    # a shipped recipe (YAML fills the flags; flags on the command line override it)
    python -m longlora.finetune --config configs/tiny-cpu-debug.yaml --data tests/fixtures --output-dir out/dbg

    # several processes: DDP (gloo on CPU, NCCL on GPUs), DeepSpeed ZeRO-2/3, FSDP via accelerate
    torchrun --nproc_per_node 8 -m longlora.finetune --config configs/llama2-7b-32k.yaml --data ...
    torchrun --nproc_per_node 8 -m longlora.finetune --deepspeed configs/deepspeed/zero3.json ...
    accelerate launch --use_fsdp --num_processes 8 -m longlora.finetune ...

    # after a crash or kill: continue from the last checkpoint (same data order, no lost steps)
    python -m longlora.finetune ... --output-dir out/smol-16k --resume

The output directory is one peft adapter folder (LoRA + embedding + norm weights, the tokenizer, the
model config with its RoPE scaling and S2 settings, ``longlora_args.json`` with the resolved settings,
``train_log.jsonl`` with step, loss, lr, tokens/s). ``--method full`` writes a full model instead. Turn
an adapter into a plain model with ``python -m longlora.merge``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from longlora.config import (
    ATTENTIONS,
    DTYPES,
    LR_SCHEDULES,
    METHODS,
    MODES,
    PACK_MODES,
    ROPE_TYPES,
    FinetuneConfig,
    load_yaml,
)
from longlora.lora import DependencyError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
ARGS_FILE = "longlora_args.json"
LOG_FILE = "train_log.jsonl"


# ----------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig.__dataclass_fields__
    p = argparse.ArgumentParser(
        prog="python -m longlora.finetune",
        description="LongLoRA fine-tuning: Position Interpolation + S2-Attn + LoRA+ (see the module docstring).",
        argument_default=argparse.SUPPRESS,
    )
    add = p.add_argument
    add("--config", help="YAML recipe whose keys are these flags (configs/*.yaml); command-line flags win")
    add("--model", help="'default' (bundled SmolLM2-135M-Instruct), a local model folder, or a hub id")
    add("--adapter", help="an adapter folder from an earlier run to keep training (LoRA methods)")
    add("--mode", choices=MODES, help="pretrain: next-token loss on long text; sft: LongAlpaca QA records")
    add(
        "--data",
        nargs="+",
        action="extend",
        help="pretrain: .txt/.md/.pdf files or folders, JSONL with 'text', "
        "token files (.bin), a saved datasets folder or dataset name; sft: LongAlpaca .json/.jsonl (repeatable)",
    )
    add("--output-dir", help="where the adapter (or full model), logs and checkpoints go")
    add("--overwrite-output-dir", action="store_true", help="allow writing into a non-empty --output-dir")
    add(
        "--method",
        choices=METHODS,
        help="lora+ (default: LoRA + embedding + norms), lora, full, qlora (4-bit base)",
    )
    add("--lora-r", type=int, help=f"LoRA rank (default {d['lora_r'].default})")
    add("--lora-alpha", type=int, help=f"LoRA alpha (default {d['lora_alpha'].default})")
    add("--lora-dropout", type=float, help="LoRA dropout (default 0)")
    add(
        "--attention",
        choices=ATTENTIONS,
        help="s2 (default, shifted groups), full, short (groups without shift)",
    )
    add("--s2-group-size-ratio", type=float, help="S2 group size as a fraction of the context (default 0.25)")
    add("--s2-group-size", type=int, help="S2 group size in tokens (overrides the ratio)")
    add(
        "--context-length",
        type=int,
        help="training length; above the model's window applies Position "
        "Interpolation (default: the model's current window)",
    )
    add(
        "--rope-type",
        choices=ROPE_TYPES,
        help="RoPE scaling: linear (PI, default), yarn, dynamic (llama3 for models that already use it)",
    )
    add(
        "--pack",
        choices=PACK_MODES,
        help="pretrain packing: document (positions restart per document, "
        "default) or eos (documents joined with EOS)",
    )
    add("--learning-rate", type=float, help="peak learning rate (default 2e-5)")
    add("--warmup-steps", type=int, help="linear warmup steps, then constant (default 20)")
    add(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="after warmup: constant (default, the paper's fine-tuning) or cosine decay to 10%% of the peak "
        "at --max-steps (for pre-training from scratch)",
    )
    add("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    add("--max-grad-norm", type=float, help="gradient clipping norm, 0 to disable (default 1.0)")
    add("--per-device-batch-size", type=int, help="rows per process per micro-step (default 1)")
    add("--gradient-accumulation-steps", type=int, help="micro-steps per optimizer step (default 8)")
    add("--max-steps", type=int, help="optimizer steps (default 1000)")
    add("--save-steps", type=int, help="checkpoint every N steps (default: max-steps / 10)")
    add("--dtype", choices=DTYPES, help="auto (bf16 on GPUs that support it, else fp32), bf16, fp32")
    add(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="keep activations (faster, much more memory)",
    )
    add("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    add("--seed", type=int, help="seed for LoRA init and data order (default 42)")
    add("--deepspeed", help="DeepSpeed config JSON (configs/deepspeed/zero2.json or zero3.json)")
    add("--log-file", help="JSONL training log (default OUTPUT/train_log.jsonl)")
    return p


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    ns = vars(build_parser().parse_args(argv))
    values: dict = {}
    if "config" in ns:
        values.update(load_yaml(ns.pop("config")))
    values.update(ns)
    return FinetuneConfig(**values)


# ----------------------------------------------------------------------------- helpers


class DataOrder:
    """Which dataset rows each (step, micro-step, rank) reads: seeded permutations, one per epoch.

    A pure function of its arguments, so a resumed run reads exactly what the killed run would have.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = int(size), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.size)}
        return self._perms[epoch]

    def indices(self, step: int, micro: int, rank: int, world: int, batch: int, accum: int) -> list[int]:
        first = ((step * accum + micro) * world + rank) * batch
        out = []
        for g in range(first, first + batch):
            out.append(int(self._perm(g // self.size)[g % self.size]))
        return out


COSINE_FLOOR = 0.1  # cosine decay ends at this fraction of the peak learning rate


def lr_at(step: int, peak: float, warmup: int, schedule: str = "constant", total: int | None = None) -> float:
    """Learning rate of optimizer step ``step`` (from 0): linear warmup over ``warmup`` steps, then
    constant, or (``schedule="cosine"``) a cosine decay that reaches ``COSINE_FLOOR * peak`` at ``total``.

    A pure function of the step, so a resumed run follows the same curve.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant" or total is None or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup + 1) / (total - warmup))
    return peak * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _latest_checkpoint(output_dir: Path) -> Path | None:
    root = output_dir / CHECKPOINTS
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _check_output_dir(cfg: FinetuneConfig) -> Path | None:
    """Refuse a non-empty output dir unless asked; return the checkpoint to resume from, if any."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file; pass a folder")
    if cfg.resume:
        ckpt = _latest_checkpoint(out)
        if ckpt is not None:
            return ckpt
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite_output_dir:
        hint = "it has no checkpoint to resume from; " if cfg.resume else ""
        raise ValueError(
            f"--output-dir {out} is not empty; {hint}pass --overwrite-output-dir to write into it, --resume to "
            "continue its last checkpoint, or choose another folder"
        )
    return None


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines of steps after the checkpoint being resumed (they are trained again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    _atomic_write_text(path, "".join(k + "\n" for k in keep))


def _resolve_dtype(name: str) -> torch.dtype:
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    # training on CPU stays in fp32; GPUs use bf16 where they support it (the paper's setting)
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def _deepspeed_plugin(cfg: FinetuneConfig, dtype: torch.dtype):
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise ValueError(
            f"--deepspeed {path}: no such file; shipped configs are configs/deepspeed/zero2.json, zero3.json"
        )
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--deepspeed {path}: not valid JSON ({err})") from None
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


def _load_base_config(cfg: FinetuneConfig):
    """The config training starts from (the adapter's saved one when continuing an adapter)."""
    from transformers import AutoConfig

    from longlora.models import ModelLoadError, resolve_model_path

    spec = cfg.model
    path = resolve_model_path(spec)
    source = cfg.adapter if cfg.adapter and (Path(cfg.adapter) / "config.json").is_file() else path
    try:
        return AutoConfig.from_pretrained(source), path
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of model {spec!r} ({source}): {err}") from None


# ----------------------------------------------------------------------------- training


def train(cfg: FinetuneConfig) -> dict:
    """Run training as configured; return a summary dict. Raises ValueError subclasses on bad input."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from longlora import data as D
    from longlora.lora import (
        count_parameters,
        enable_checkpointing,
        make_adapter_trainable,
        prepare_model,
        require_qlora_support,
    )
    from longlora.models import load_model
    from longlora.position import current_context_length, original_context_length, pi_factor
    from longlora.s2attn import enable_s2_attention

    out = Path(cfg.output_dir)
    resume_from = _check_output_dir(cfg)
    if cfg.method == "qlora":
        require_qlora_support()
    dtype = _resolve_dtype(cfg.dtype)
    plugin = _deepspeed_plugin(cfg, dtype) if cfg.deepspeed else None

    config, model_path = _load_base_config(cfg)
    original = original_context_length(config)
    context_length = cfg.context_length or current_context_length(config)
    if context_length < original:
        raise ValueError(
            f"--context-length {context_length} is below the model's original context {original}; LongLoRA "
            f"extends a context: pass --context-length {original} or more"
        )

    _fresh_accelerator_state()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision="bf16" if dtype == torch.bfloat16 else "no",
        deepspeed_plugin=plugin,
    )
    main_proc = accelerator.is_main_process
    say = accelerator.print
    set_seed(cfg.seed)

    # ---- model
    load_dtype = torch.float32 if cfg.method == "full" else dtype
    model, tokenizer = load_model(
        cfg.model,
        adapter=cfg.adapter,
        merge_adapter=False,
        dtype=load_dtype,
        device=accelerator.device,
        context_length=context_length,
        rope_type=cfg.rope_type,
        load_in_4bit=cfg.method == "qlora",
        attn_implementation="sdpa",
        status=say,
    )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.use_cache = False
    if cfg.attention != "full":
        enable_s2_attention(
            base,
            group_size=cfg.s2_group_size,
            group_size_ratio=None if cfg.s2_group_size else cfg.s2_group_size_ratio,
            shift=cfg.attention == "s2",
        )
    if cfg.adapter:
        if cfg.gradient_checkpointing:
            enable_checkpointing(base)
        model = make_adapter_trainable(model)
    else:
        model = prepare_model(
            model,
            cfg.method,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            gradient_checkpointing=cfg.gradient_checkpointing,
        )
    n_trainable, n_total = count_parameters(model)
    say(f"trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / max(1, n_total):.2f}%)")

    # ---- data
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sft_stats = None
    if cfg.mode == "pretrain":
        stream = D.read_pretrain_stream(cfg.data, tokenizer, pack=cfg.pack)
        dataset = D.PackedDataset(stream, context_length, pack=cfg.pack, pad_id=pad_id)
        say(
            f"pretrain data: {len(stream):,} tokens in {stream.num_documents} documents -> {len(dataset)} rows "
            f"of {context_length} tokens (pack={cfg.pack})"
        )
    else:
        dataset = D.read_sft_dataset(cfg.data, tokenizer, context_length)
        sft_stats = dataset.stats
        say(f"sft data: {sft_stats.summary()}")

    # ---- optimizer (the LR follows lr_at(step); no scheduler object to keep in sync)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=lr_at(0, cfg.learning_rate, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps),
        betas=(0.9, 0.95),
        weight_decay=cfg.weight_decay,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_save_state_pre_hook(_keep_trainable_only)

    start_step = 0
    log_path = Path(cfg.log_file) if cfg.log_file else out / LOG_FILE
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if resume_from is not None:
        accelerator.load_state(str(resume_from), strict=False)
        start_step = json.loads((resume_from / STATE_FILE).read_text())["step"]
        say(f"resumed from {resume_from} at step {start_step}")
        if main_proc:
            _truncate_log(log_path, start_step)
    elif main_proc:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        log_path.write_text("")
    accelerator.wait_for_everyone()

    # ---- loop
    world, rank = accelerator.num_processes, accelerator.process_index
    order = DataOrder(len(dataset), cfg.seed)
    model.train()
    bar = tqdm(
        total=cfg.max_steps, initial=start_step, disable=not main_proc, desc="finetune", dynamic_ncols=True
    )
    step = start_step
    loss_value = float("nan")
    started = time.perf_counter()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg.learning_rate, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        losses, tokens = [], 0
        for micro in range(cfg.gradient_accumulation_steps):
            idx = order.indices(
                step, micro, rank, world, cfg.per_device_batch_size, cfg.gradient_accumulation_steps
            )
            batch = D.collate([dataset[i] for i in idx], pad_id)
            tokens += (
                int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else batch["input_ids"].numel()
            )
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch, use_cache=False).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
        step += 1
        stats = torch.stack(
            [torch.stack(losses).mean(), torch.tensor(float(tokens), device=losses[0].device)]
        )
        stats = accelerator.reduce(stats.to(accelerator.device), reduction="sum")
        loss_value = stats[0].item() / world
        elapsed = time.perf_counter() - t0
        record = {
            "step": step,
            "loss": round(loss_value, 6),
            "lr": lr,
            "tokens": int(stats[1].item()),
            "tokens_per_s": round(stats[1].item() / max(elapsed, 1e-9), 2),
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if main_proc:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        _after_step(step)
        if step % cfg.save_every == 0 and step < cfg.max_steps:
            _save_checkpoint(accelerator, out, step)
    bar.close()

    # ---- final artifact
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    summary = {
        "steps": step,
        "final_loss": loss_value,
        "context_length": context_length,
        "original_context_length": original,
        "pi_factor": pi_factor(context_length, original),
        "rope_parameters": dict(getattr(config, "rope_parameters", {}) or {}),
        "trainable_parameters": n_trainable,
        "total_parameters": n_total,
        "world_size": world,
        "model_path": model_path,
        "sft_stats": sft_stats.to_dict() if sft_stats else None,
    }
    if main_proc:
        _save_output(unwrapped, state, tokenizer, cfg, out, summary)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        say(f"saved {'model' if cfg.method == 'full' else 'adapter'} to {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def _fresh_accelerator_state() -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second Accelerator with another
    precision, so a second run in the same process (a notebook, a benchmark, a test suite) with another
    --dtype would fail. A single-process run starts from a clean state; launched (distributed) runs keep
    theirs."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=False)


def _after_step(step: int) -> None:
    """Called after every optimizer step (tests use it to simulate a crash)."""


def _keep_trainable_only(models, weights, output_dir) -> None:
    """Checkpoints hold only what trains (LoRA, embedding, norms): the frozen base is reloaded anyway."""
    for model, state in zip(models, weights):
        keep = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        for key in [k for k in state if k not in keep]:
            del state[key]


def _save_checkpoint(accelerator, out: Path, step: int) -> None:
    root = out / CHECKPOINTS
    target = root / f"step-{step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        _atomic_write_text(target / STATE_FILE, json.dumps({"step": step}))
        for old in root.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_output(model, state, tokenizer, cfg: FinetuneConfig, out: Path, summary: dict) -> None:
    """Write the adapter (or full model), the tokenizer, the model config and the resolved arguments."""
    out.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cfg.method == "full":
        model.save_pretrained(out, state_dict=state, safe_serialization=True)
    else:
        model.save_pretrained(out, state_dict=state, safe_serialization=True)
        # The config the adapter was trained with (RoPE scaling, S2 settings) travels with it; the 4-bit
        # loading recipe does not (merge dequantizes).
        base_config = copy.deepcopy(base.config)
        if hasattr(base_config, "quantization_config"):
            del base_config.quantization_config
        base_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    payload = {"args": dataclasses.asdict(cfg), "resolved": summary, "versions": _versions()}
    _atomic_write_text(out / ARGS_FILE, json.dumps(payload, indent=2, default=str) + "\n")


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        train(cfg)
    except (ValueError, DependencyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
