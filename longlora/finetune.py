"""python -m longlora.finetune: extend a model's context (pretrain) or teach it long-document QA (sft).

The LongLoRA recipe (paper Sec. 3-4): Position Interpolation to the target ``--context-length``,
S2-Attn while training (full attention at inference), LoRA+ (LoRA on q,k,v,o + trainable embedding and
norms), AdamW (0.9, 0.95), lr 2e-5, weight decay 0, constant LR after 20 warmup steps, batch 1 x 8
gradient accumulation, bf16, gradient checkpointing.

Usage (CPU examples first; every flag has --help):

    # 2-step smoke run on the bundled SmolLM2-135M-Instruct, 8k -> 16k, LoRA+ with S2-Attn
    python -m longlora.finetune --model default --mode pretrain --data book.txt \\
        --context-length 16384 --max-steps 2 --gradient-accumulation-steps 1 --output-dir out/smol-16k

    # S2 groups that also attend to the first 4 tokens of each document; Table 2's LoRA + norms
    python -m longlora.finetune --data book.txt --context-length 16384 --attention s2-sink --sink-tokens 4 \\
        --method lora+norm --output-dir out/smol-16k-sink

    # long-QA supervised fine-tuning on LongAlpaca records
    python -m longlora.finetune --mode sft --data LongAlpaca-12k.json --context-length 16384 \\
        --output-dir out/smol-16k-sft

    # a shipped recipe (YAML fills the flags; flags on the command line override it)
    python -m longlora.finetune --config configs/tiny-cpu-debug.yaml --data tests/fixtures --output-dir out/dbg

    # several processes: DDP (gloo on CPU, NCCL on GPUs), DeepSpeed ZeRO-2/3, FSDP via accelerate
    torchrun --nproc_per_node 8 -m longlora.finetune --config configs/llama2-7b-32k.yaml --data ...
    torchrun --nproc_per_node 8 -m longlora.finetune --deepspeed configs/deepspeed/zero3.json ...
    accelerate launch --use_fsdp --num_processes 8 -m longlora.finetune ...

    # sequence parallelism: every row split over 2 processes (DeepSpeed Ulysses, S2-Attn inside)
    torchrun --nproc_per_node 2 -m longlora.finetune --sequence-parallel 2 --context-length 64k ...
    deepspeed --num_gpus 8 --module longlora.finetune --sequence-parallel 4 ...  # 2 rows at a time

    # after a crash or kill: continue from the last checkpoint (same data order, no lost steps)
    python -m longlora.finetune ... --output-dir out/smol-16k --resume

The output directory is one peft adapter folder (LoRA + embedding + norm weights, the tokenizer, the
model config with its RoPE scaling and S2 settings, ``longlora_args.json`` with the resolved settings,
``train_log.jsonl`` with step, loss, lr, tokens/s). ``--method full`` writes a full model instead. Turn
an adapter into a plain model with ``python -m longlora.merge``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_tools.errors import InputError, WriteError
from data_tools.files import atomic_write_text
from data_tools.profiles import record_profile
from longlora.loss import training_loss
from longlora.training.checkpoints import (
    ARGS_FILE,
    CHECKPOINTS,
    LOG_FILE,
    STATE_FILE,
    WRITE_FAILURES,
    RunComplete,
    check_output_dir,
    check_resume_processes,
    keep_trainable_only,
    latest_checkpoint,
    save_checkpoint,
    truncate_log,
)
from longlora.training.config import FinetuneConfig, parse_args
from longlora.training.cpu_memory import compact_cpu_memory
from longlora.training.launch import MIXED_PRECISION, deepspeed_plugin, fresh_accelerator_state, resolve_dtype
from longlora.training.offload import check_offload_device, offload_activations

if typing.TYPE_CHECKING:
    from longlora.sequence_parallel import SequenceParallel

# ----------------------------------------------------------------------------- schedule


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


def _load_base_config(cfg: FinetuneConfig):
    """The config training starts from (the adapter's saved one when continuing an adapter)."""
    from transformers import AutoConfig

    from data_tools.errors import ModelLoadError
    from longlora.models import resolve_model_path

    spec = cfg.model
    path = resolve_model_path(spec)
    source = cfg.adapter if cfg.adapter and (Path(cfg.adapter) / "config.json").is_file() else path
    try:
        return AutoConfig.from_pretrained(source), path
    except Exception as err:
        raise ModelLoadError(f"cannot read the config of model {spec!r} ({source}): {err}") from None


# ----------------------------------------------------------------------------- training


@dataclass(kw_only=True)
class Run:
    """Everything ``setup`` prepares for ``fit`` and ``save``."""

    cfg: FinetuneConfig
    accelerator: typing.Any
    model: torch.nn.Module
    tokenizer: typing.Any
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    dataset: torch.utils.data.Dataset
    pad_id: int
    out: Path
    log_path: Path
    start_step: int
    resolved: dict
    loss: typing.Callable = None  # (model, batch) -> loss; see longlora.loss.training_loss
    sp: SequenceParallel | None = None  # --sequence-parallel above 1: this process's share of each row


def train(cfg: FinetuneConfig) -> dict:
    """Run training as configured (set-up, fit, save); return the summary of the run.

    Raises ``InputError`` (a ``ValueError``) on bad input; ``RunComplete`` when ``--resume`` finds the
    run already finished.
    """
    run = setup(cfg)
    step, loss = fit(run)
    return save(run, step, loss)


def setup(cfg: FinetuneConfig) -> Run:
    """Check the output folder, load the model (with PI and S2-Attn), read the data, restore a checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from longlora.lora import count_parameters
    from longlora.position import context_window, original_context_length

    out = Path(cfg.output_dir)
    resume_from = check_output_dir(cfg)
    dtype = resolve_dtype(cfg.dtype)
    plugin = _check_runtime(cfg, dtype)
    config, model_path = _load_base_config(cfg)
    original = original_context_length(config)
    context_length = cfg.context_length or context_window(config)
    if context_length < original:
        raise InputError(
            f"--context-length {context_length} is below the model's original context {original}; LongLoRA "
            f"extends a context: pass --context-length {original} or more"
        )
    _check_sink_tokens(cfg, context_length)
    if cfg.sequence_parallel > 1:
        from longlora.sequence_parallel import check_sequence_parallel

        text = config.get_text_config()
        check_sequence_parallel(
            cfg.sequence_parallel,
            processes=int(os.environ.get("WORLD_SIZE", "1")),
            heads=text.num_attention_heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            context_length=context_length if cfg.mode == "pretrain" else None,
        )

    fresh_accelerator_state()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=MIXED_PRECISION.get(dtype, "no"),
        deepspeed_plugin=plugin,
    )
    set_seed(cfg.seed)
    model, tokenizer = _load_trainable_model(cfg, accelerator, dtype, context_length)
    sp = None
    if cfg.sequence_parallel > 1:
        from longlora.sequence_parallel import enable_sequence_parallel

        sp = enable_sequence_parallel(
            model, cfg.sequence_parallel, micro_batch_size=cfg.per_device_batch_size
        )
    n_trainable, n_total = count_parameters(model)
    accelerator.print(
        f"trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / max(1, n_total):.2f}%)"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dataset, sft_stats = _read_data(cfg, tokenizer, context_length, pad_id, accelerator.print)

    # the LR follows lr_at(step); no scheduler object to keep in sync
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=lr_at(0, cfg.learning_rate, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps),
        betas=(0.9, 0.95),
        weight_decay=cfg.weight_decay,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_save_state_pre_hook(keep_trainable_only)

    resolved = {
        "steps": 0,
        "final_loss": None,
        "context_length": context_length,  # with the RoPE settings after PI, see _write_run_record
        "original_context_length": original,
        "trainable_parameters": n_trainable,
        "total_parameters": n_total,
        "world_size": accelerator.num_processes,
        "sequence_parallel": cfg.sequence_parallel,
        "model_path": model_path,
        "sft_stats": sft_stats.to_dict() if sft_stats else None,
        "tiled_mlp_layers": _tiled_mlp_layers(model),
    }
    log_path = Path(cfg.log_file) if cfg.log_file else out / LOG_FILE
    if sp is not None:
        from longlora.sequence_parallel import sequence_parallel_loss

        loss = sequence_parallel_loss(sp)
    else:
        loss = training_loss(cfg.chunked_loss, accelerator.num_processes, accelerator.print)
    run = Run(
        cfg=cfg,
        accelerator=accelerator,
        model=model,
        tokenizer=tokenizer,
        optimizer=optimizer,
        params=params,
        dataset=dataset,
        pad_id=pad_id,
        out=out,
        log_path=log_path,
        start_step=0,
        resolved=resolved,
        loss=loss,
        sp=sp,
    )
    _restore(run, resume_from)
    return run


def _check_runtime(cfg: FinetuneConfig, dtype: torch.dtype):
    """What the machine must offer for these flags (bitsandbytes, a device for offloading); returns the
    DeepSpeed plugin when --deepspeed is given."""
    from longlora.lora import require_qlora_support

    if cfg.sequence_parallel > 1:
        from longlora.sequence_parallel import require_deepspeed

        require_deepspeed()
    if cfg.method == "qlora":
        require_qlora_support()
    if cfg.s2_backend == "flex" and cfg.attention != "full" and not torch.cuda.is_available():
        raise InputError(
            "--s2-backend flex trains on CUDA only (torch has no flex_attention backward on a CPU); "
            "use --s2-backend auto (or sdpa) here"
        )
    plugin = deepspeed_plugin(cfg, dtype) if cfg.deepspeed else None
    if cfg.tiled_mlp:
        from longlora.tiled_mlp import tiled_mlp_function

        tiled_mlp_function()  # DependencyError naming the install when DeepSpeed is missing
    if cfg.offload_activations:
        check_offload_device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.compact_cpu_memory and not compact_cpu_memory():
        print(
            "--compact-cpu-memory: this C library has no such setting (glibc only); ignored", file=sys.stderr
        )
    return plugin


def _check_sink_tokens(cfg: FinetuneConfig, context_length: int) -> None:
    """--sink-tokens below the group size the training rows get (the ratio's group needs the context)."""
    from longlora.s2attn import DEFAULT_GROUP_SIZE_RATIO

    if cfg.attention != "s2-sink" or cfg.s2_group_size:  # an explicit size was checked with the flags
        return
    ratio = cfg.s2_group_size_ratio or DEFAULT_GROUP_SIZE_RATIO
    group = max(2, int(context_length * ratio))
    if cfg.sink_tokens >= group:
        raise InputError(
            f"--sink-tokens {cfg.sink_tokens} must be below the group size, {group} tokens at --context-length "
            f"{context_length} and --s2-group-size-ratio {ratio}: lower --sink-tokens or raise the group size"
        )


def _base_of(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _context_record(config, context_length: int, original: int) -> dict:
    """The RoPE and S2 settings of ``config`` as the model is trained (after Position Interpolation)."""
    from longlora.position import pi_factor

    return {
        "context_length": context_length,
        "original_context_length": original,
        "pi_factor": pi_factor(context_length, original),
        "rope_parameters": dict(getattr(config, "rope_parameters", None) or {}),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        **{
            k: getattr(config, k, None)
            for k in ("s2_group_size_ratio", "s2_group_size", "s2_shift", "s2_sink_tokens", "s2_sink_stride")
        },
    }


def _load_trainable_model(cfg: FinetuneConfig, accelerator, dtype: torch.dtype, context_length: int):
    """The model with PI applied, S2-Attn enabled and the LoRA+ (or full) parameters trainable."""
    from longlora.lora import enable_checkpointing, make_adapter_trainable, prepare_model
    from longlora.models import load_from_args
    from longlora.s2attn import enable_s2_attention

    # the model surface every command shares (--model/--adapter/--context-length/--rope-type/--dtype);
    # training needs the adapter unmerged, the resolved context and its own dtype choice
    model, tokenizer = load_from_args(
        cfg,
        merge_adapter=False,
        dtype=torch.float32 if cfg.method == "full" else dtype,
        device=accelerator.device,
        context_length=context_length,
        load_in_4bit=cfg.method == "qlora",
        # transformers' own choice (SDPA where the architecture supports it, else eager: Gemma 2's
        # soft-capping has no SDPA path); S2-Attn replaces it for training below
        attn_implementation=None,
        status=accelerator.print,
    )
    base = _base_of(model)
    base.config.use_cache = False
    if cfg.attention != "full":
        enable_s2_attention(
            base,
            group_size=cfg.s2_group_size,
            group_size_ratio=None if cfg.s2_group_size else cfg.s2_group_size_ratio,
            shift=cfg.attention in ("s2", "s2-sink"),
            backend=cfg.s2_backend,
            sink_tokens=cfg.sink_tokens or 0,
            sink_stride=cfg.sink_stride or 0,
        )
    if cfg.adapter:
        if cfg.gradient_checkpointing:
            enable_checkpointing(base)
        model = make_adapter_trainable(model, compute_dtype=dtype)
    else:
        # compute_dtype: the trainable fp32 embedding/norm copies of LoRA+ hand bf16 activations on, so q, k
        # and v reach the attention in the compute dtype (fp32 master weights stay for the optimizer)
        model = prepare_model(
            model,
            cfg.method,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            gradient_checkpointing=cfg.gradient_checkpointing,
            compute_dtype=dtype,
        )
    if cfg.tiled_mlp:
        _tile_mlps(cfg, model, accelerator)
    return model, tokenizer


def _tiled_mlp_layers(model) -> int:
    """How many MLPs run tiled (``--tiled-mlp``), for the run record."""
    from longlora.tiled_mlp import TiledMLP

    return sum(isinstance(m, TiledMLP) for m in model.modules())


def _tile_mlps(cfg: FinetuneConfig, model, accelerator) -> None:
    """``--tiled-mlp``: route every MLP through DeepSpeed's TiledMLP (names and saved weights unchanged)."""
    from longlora.tiled_mlp import enable_tiled_mlp

    trained = [n for n, p in model.named_parameters() if p.requires_grad and ".mlp." in n]
    if trained and accelerator.num_processes > 1 and not cfg.deepspeed:
        # TiledMLP accumulates the MLP weights' gradients slice by slice inside backward; DDP and FSDP mark a
        # gradient ready once, DeepSpeed's ZeRO is told by TiledMLP itself
        raise InputError(
            f"--tiled-mlp with trainable MLP weights ({trained[0]}, ...) needs one process or --deepspeed; "
            "with DDP/FSDP use --method lora+ (frozen MLPs) or drop --tiled-mlp"
        )
    layers = enable_tiled_mlp(model, cfg.tiled_mlp_shards)
    accelerator.print(f"tiled MLP: {layers} layers, {cfg.tiled_mlp_shards or 'auto'} slices")


def _read_data(cfg: FinetuneConfig, tokenizer, context_length: int, pad_id: int, say):
    """(dataset, SFT statistics or None) for ``cfg.mode``."""
    from longlora.training import data as D

    if cfg.mode == "sft":
        dataset = D.read_sft_dataset(cfg.data, tokenizer, context_length)
        say(f"sft data: {dataset.stats.summary()}")
        return dataset, dataset.stats
    stream = D.read_pretrain_stream(cfg.data, tokenizer, pack=cfg.pack)
    dataset = D.PackedDataset(stream, context_length, pack=cfg.pack, pad_id=pad_id)
    say(
        f"pretrain data: {len(stream):,} tokens in {stream.num_documents} documents -> {len(dataset)} rows "
        f"of {context_length} tokens (pack={cfg.pack})"
    )
    return dataset, None


def _restore(run: Run, resume_from: Path | None) -> None:
    """Load the checkpoint being resumed (or start the log afresh) and write the run record."""
    acc, out = run.accelerator, run.out
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    if resume_from is not None:
        state = json.loads((resume_from / STATE_FILE).read_text())
        check_resume_processes(
            state, resume_from, processes=acc.num_processes, deepspeed=bool(run.cfg.deepspeed)
        )
        acc.load_state(str(resume_from), strict=False)
        run.start_step = state["step"]
        acc.print(f"resumed from {resume_from} at step {run.start_step}")
        saved_sp = state.get("sequence_parallel", 1)
        if saved_sp != run.cfg.sequence_parallel:
            # every process holds the whole trainable weights and optimizer state, whatever N was
            acc.print(
                f"note: the checkpoint was written with --sequence-parallel {saved_sp}; continuing with "
                f"--sequence-parallel {run.cfg.sequence_parallel}"
            )
        if acc.is_main_process:
            truncate_log(run.log_path, run.start_step)
    elif acc.is_main_process:
        if run.cfg.resume:
            acc.print(f"--resume: {out} holds no checkpoint yet; training from step 0 (the log starts again)")
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        run.log_path.write_text("")
    if acc.is_main_process:
        _write_run_record(run, status="running")
    acc.wait_for_everyone()


def fit(run: Run) -> tuple[int, float]:
    """The training loop from ``run.start_step`` to ``--max-steps``; returns (last step, last loss)."""
    from tqdm.auto import tqdm

    from longlora.training.data import collate

    cfg, acc, model, optimizer = run.cfg, run.accelerator, run.model, run.optimizer
    world, rank = acc.num_processes, acc.process_index
    sp_size = run.sp.size if run.sp else 1
    rows_world, rows_rank = world // sp_size, rank // sp_size  # the processes of a group read the same rows
    order = DataOrder(len(run.dataset), cfg.seed)
    model.train()
    bar = tqdm(
        total=cfg.max_steps,
        initial=run.start_step,
        disable=not acc.is_main_process,
        desc="finetune",
        dynamic_ncols=True,
    )
    step, loss_value = run.start_step, float("nan")
    started = time.perf_counter()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg.learning_rate, cfg.warmup_steps, cfg.lr_schedule, cfg.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        losses, tokens, grad_norm = [], 0, None
        for micro in range(cfg.gradient_accumulation_steps):
            idx = order.indices(
                step, micro, rows_rank, rows_world, cfg.per_device_batch_size, cfg.gradient_accumulation_steps
            )
            batch = collate([run.dataset[i] for i in idx], run.pad_id)
            tokens += (
                int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else batch["input_ids"].numel()
            )
            if run.sp is not None:
                from longlora.sequence_parallel import shard_batch

                batch = shard_batch(batch, run.sp, run.pad_id)
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.accumulate(model):
                # autocast here too: the chunked loss calls into the decoder, past accelerate's wrapped forward
                with acc.autocast(), offload_activations(cfg.offload_activations, acc.device):
                    loss = run.loss(model, batch)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(run.params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
        step += 1
        stats = torch.stack(
            [torch.stack(losses).mean(), torch.tensor(float(tokens) / sp_size, device=losses[0].device)]
        )
        stats = acc.reduce(stats.to(acc.device), reduction="sum")
        loss_value = stats[0].item() / world
        elapsed = time.perf_counter() - t0
        record = {
            "step": step,
            "loss": round(loss_value, 6),
            # before clipping; the same on every process (the gradients are averaged first)
            "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
            "lr": lr,
            "tokens": int(stats[1].item()),
            "tokens_per_s": round(stats[1].item() / max(elapsed, 1e-9), 2),
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if acc.is_main_process:
            with run.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if step % cfg.save_every == 0 and step < cfg.max_steps:
            save_checkpoint(acc, run.out, step, cfg.keep_checkpoints, sequence_parallel=cfg.sequence_parallel)
    bar.close()
    return step, loss_value


def save(run: Run, step: int, loss: float) -> dict:
    """Write the adapter (or full model), tokenizer, config and run record; drop the checkpoints."""
    acc, cfg, out = run.accelerator, run.cfg, run.out
    acc.wait_for_everyone()
    state = acc.get_state_dict(run.model)
    unwrapped = acc.unwrap_model(run.model)
    run.resolved.update(steps=step, final_loss=loss)
    if acc.is_main_process:
        try:
            _save_output(unwrapped, state, run.tokenizer, cfg, out)
        except WRITE_FAILURES as err:  # a full disk: the checkpoints stay, so nothing trained is lost
            kept = latest_checkpoint(out)
            raise WriteError(
                f"cannot write the trained {'model' if cfg.method == 'full' else 'adapter'} to {out}: "
                f"{getattr(err, 'strerror', None) or err}; "
                + (f"checkpoint {kept.name} is kept. " if kept else "")
                + "Free space on that disk and run the same command with --resume"
            ) from err
        _write_run_record(run, status="complete")
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        acc.print(f"saved {'model' if cfg.method == 'full' else 'adapter'} to {out}")
    acc.wait_for_everyone()
    acc.end_training()
    return dict(run.resolved)


def _save_output(model, state, tokenizer, cfg: FinetuneConfig, out: Path) -> None:
    """Write the adapter (or full model), the tokenizer and the model config."""
    out.mkdir(parents=True, exist_ok=True)
    record_profile(_base_of(model).config)  # an extended model keeps its base's serving profile
    model.save_pretrained(out, state_dict=state, safe_serialization=True)
    if cfg.method != "full":
        # The config the adapter was trained with (RoPE scaling, S2 settings) travels with it; the 4-bit
        # loading recipe does not (merge dequantizes).
        base_config = copy.deepcopy(_base_of(model).config)
        if hasattr(base_config, "quantization_config"):
            del base_config.quantization_config
        base_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _write_run_record(run: Run, *, status: str) -> None:
    """``longlora_args.json``: the arguments, the resolved settings (RoPE after PI) and the run status.

    Written when the model config is final (after PI, before the first step) and again at the end, so
    the record always describes the config being trained.
    """
    run.resolved.update(
        _context_record(
            _base_of(run.accelerator.unwrap_model(run.model)).config,
            run.resolved["context_length"],
            run.resolved["original_context_length"],
        )
    )
    payload = {
        "args": dataclasses.asdict(run.cfg),
        "resolved": run.resolved,
        "status": status,
        "versions": _versions(),
    }
    atomic_write_text(run.out / ARGS_FILE, json.dumps(payload, indent=2, default=str) + "\n")


def _versions() -> dict:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        train(cfg)
    except RunComplete as done:
        print(str(done), file=sys.stderr)
        return 0
    except ValueError as err:  # every InputError (DependencyError too) is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
