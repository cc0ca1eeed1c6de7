"""Sequence parallelism for fine-tuning: DeepSpeed Ulysses with S2-Attn as the core attention.

``--sequence-parallel N`` (``python -m longlora.finetune`` under ``torchrun`` or ``deepspeed``) splits every
training row over N processes (DeepSpeed-Ulysses, Jacobs et al. 2023, through DeepSpeed's
``UlyssesSPAttentionHF``): each process runs the model on T/N consecutive tokens of the row, and in every
attention layer an all-to-all gives each process all T tokens for H/N of the query heads; it attends and a
second all-to-all hands every process its own tokens back with all heads. Activations per process shrink
about N-fold; the weights stay whole on every process (DDP averages their gradients).

The core attention is the model's own: ``"s2_attention"`` (S2 or short) or, for ``--attention full``,
``"sp_full_attention"`` (:func:`full_attention_forward`: the same kernel with one group per document).
Ulysses hands it neither of two things it needs:

* which heads it holds: process r holds heads ``[r H/N, (r+1) H/N)``, and S2 shifts the model's second
  half of the heads, so the shift is decided by the global head index (:func:`head_slice`, read from
  DeepSpeed's sequence-parallel group, becomes :func:`longlora.s2attn.s2_attention`'s ``head_offset``);
* where documents start: Ulysses drops attention masks and passes the row's gathered ``position_ids``,
  from which packed documents (positions restarting at 0) are read.

Sliding windows and soft-capping are S2's own arguments and pass through unchanged.

The loss (:func:`sequence_parallel_loss`): labels are shifted before a row is cut (the last token of one
shard predicts the first token of the next), every process sums its tokens' cross-entropy and divides by
the label tokens of the whole row (all-reduced over the group) and multiplies by N. DDP averages gradients
over processes, so a step follows the gradient of (sum of every token's loss) / (label tokens of the row),
the single-process loss, and not a mean of per-process means, which would weigh a shard with few label
tokens (an SFT prompt) as much as a full one.

Refused, with the fix (:func:`check_sequence_parallel`): N not dividing the number of processes or the
query heads, key/value heads that N neither divides nor is a multiple of (DeepSpeed splits or replicates
them), pre-training rows (``--context-length``) that are not a multiple of N (SFT rows are padded to
one), and a missing deepspeed package.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from data_tools.errors import DependencyError, InputError
from longlora.s2attn import ATTN_NAME, s2_attention
from longlora.s2groups import cu_seqlens_from_position_ids

__all__ = [
    "FULL_ATTN_NAME",
    "SequenceParallel",
    "check_sequence_parallel",
    "enable_sequence_parallel",
    "full_attention_forward",
    "head_slice",
    "sequence_parallel_loss",
    "shard_batch",
    "valid_sizes",
]

FULL_ATTN_NAME = "sp_full_attention"
IGNORE_INDEX = -100
_MPU = "deepspeed.runtime.sequence_parallel.parallel_state_sp"  # DeepSpeed's sequence-parallel groups


@dataclass(frozen=True)
class SequenceParallel:
    """This process's place in its sequence-parallel group: ``size`` processes share a row, this one holds
    its tokens ``[rank T/size, (rank+1) T/size)``; ``group`` is the torch.distributed group."""

    size: int
    rank: int
    group: Any = None


# ----------------------------------------------------------------------------- checks


def _kv_ok(kv_heads: int, size: int) -> bool:
    return kv_heads % size == 0 or size % kv_heads == 0


def valid_sizes(heads: int, kv_heads: int, processes: int) -> list[int]:
    """The N above 1 that the model's heads and the process count allow."""
    return [
        n for n in range(2, processes + 1) if processes % n == 0 and heads % n == 0 and _kv_ok(kv_heads, n)
    ]


def check_sequence_parallel(
    size: int, *, processes: int, heads: int, kv_heads: int, context_length: int | None = None
) -> None:
    """Raise ``InputError`` naming the fix when ``--sequence-parallel size`` cannot run: ``processes``
    launched, the model's query and key/value ``heads``, the pre-training row length ``context_length``
    (None for SFT, whose rows are padded to a multiple of ``size``)."""
    if size <= 1:
        return
    flag = f"--sequence-parallel {size}"
    if processes % size:
        raise InputError(
            f"{flag} splits each row over {size} processes but {processes} "
            f"{'was' if processes == 1 else 'were'} launched: start a multiple of {size}, e.g. "
            f"torchrun --nproc-per-node {size} -m longlora.finetune ..."
        )
    others = valid_sizes(heads, kv_heads, processes)
    hint = f"use --sequence-parallel {' or '.join(map(str, others))}" if others else "use DDP (no flag)"
    if heads % size:
        raise InputError(
            f"{flag} must divide the model's {heads} query heads (each process attends with heads / N of "
            f"them); {hint}"
        )
    if not _kv_ok(kv_heads, size):
        raise InputError(
            f"{flag} and the model's {kv_heads} key/value heads: DeepSpeed Ulysses needs one to divide the "
            f"other (it splits or replicates them); {hint}"
        )
    if context_length is not None and context_length % size:
        down, up = context_length // size * size, -(-context_length // size) * size
        raise InputError(
            f"--context-length {context_length} is not a multiple of {flag} (each process holds "
            f"context-length / N tokens of a row): use --context-length {down or up} or {up}"
        )


def require_deepspeed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise DependencyError(
            "--sequence-parallel needs deepspeed: pip install deepspeed (pure Python, no CUDA needed for it; "
            "requirements-dev.txt and requirements-gpu.txt list it)"
        )


# ----------------------------------------------------------------------------- attention


def head_slice(local_heads: int, total_heads: int) -> tuple[int, int]:
    """``(head_offset, total_heads)`` of an attention call given ``local_heads`` of the model's
    ``total_heads``: under DeepSpeed's sequence-parallel group, rank r holds heads from ``r * local_heads``.
    Outside one, ``(0, local_heads)``: the call's heads are all there is."""
    mpu = sys.modules.get(_MPU)
    if mpu is None or getattr(mpu, "_SEQUENCE_PARALLEL_GROUP", None) is None:
        return 0, local_heads
    size, rank = mpu.get_sequence_parallel_world_size(), mpu.get_sequence_parallel_rank()
    if local_heads * size != total_heads:
        raise RuntimeError(
            f"attention got {local_heads} query heads on each of {size} sequence-parallel ranks, but the model "
            f"has {total_heads}: the heads are not split evenly"
        )
    return rank * local_heads, total_heads


def full_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``AttentionInterface`` adapter for ``--attention full`` under sequence parallelism: full causal
    attention inside each document of the row, as :func:`s2_attention` with one unshifted group per document
    (G = T). Ulysses drops the mask, and SDPA's ``is_causal`` alone would let packed documents see each
    other, so documents come from the gathered ``position_ids``. query (B, H, T, D), key/value
    (B, H_kv, T, D); returns (B, T, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    seq_len = query.shape[2]
    if key.shape[2] != seq_len or seq_len < 2:  # decoding with a KV cache
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    position_ids = kwargs.get("position_ids")
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if attention_mask is None and cu_seqlens is None and position_ids is not None:
        cu_seqlens = cu_seqlens_from_position_ids(position_ids.expand(query.shape[0], -1))
    out = s2_attention(
        query,
        key,
        value,
        seq_len,  # one group: a whole document
        scaling=scaling,
        attention_mask=attention_mask,
        cu_seqlens=cu_seqlens,
        shift=False,
        sliding_window=kwargs.get("sliding_window"),
        softcap=kwargs.get("softcap"),
        dropout=dropout if module.training else 0.0,
    )
    return out.transpose(1, 2), None


def _register_full_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FULL_ATTN_NAME, full_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FULL_ATTN_NAME, sdpa_mask)


def _base(model):
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def enable_sequence_parallel(model, size: int, *, micro_batch_size: int) -> SequenceParallel:
    """Wrap the model's core attention in DeepSpeed's Ulysses all-to-all over groups of ``size`` processes
    (torch.distributed must be initialised, e.g. by accelerate). The model's attention must be
    ``"s2_attention"`` (S2 or short) or anything else (full attention), which becomes ``"sp_full_attention"``.
    Call once per process, after S2 is enabled and before training."""
    require_deepspeed()
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    base = _base(model)
    if base.config._attn_implementation != ATTN_NAME:
        _register_full_attention()
        base.set_attn_implementation(FULL_ATTN_NAME)
    if get_accelerator().device_name() == "cpu":
        # DeepSpeed's CPU comm layer JIT-compiles a shared-memory all-reduce kernel as it starts (minutes, and
        # a C++ compiler); only its inference all-reduce uses it, Ulysses' collectives go through gloo
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    # deepspeed.comm wraps the process group that is already there (gloo on CPU, NCCL on GPUs)
    deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=base,
        core_attn_implementation=base.config._attn_implementation,
        sequence_parallel_size=size,
        micro_batch_size=micro_batch_size,
        seq_length_is_variable=True,
    )
    return SequenceParallel(
        size=size, rank=mpu.get_sequence_parallel_rank(), group=mpu.get_sequence_parallel_group()
    )


# ----------------------------------------------------------------------------- data and loss


def shard_batch(batch: dict[str, torch.Tensor], sp: SequenceParallel, pad_id: int = 0) -> dict:
    """This process's share of a collated batch of rows ``(B, T)``: tokens ``[rank T/N, (rank+1) T/N)`` of
    ``input_ids`` and ``position_ids`` (``0..T-1`` when the batch has none), and ``shift_labels``: the labels
    shifted left by one *before* the cut, -100 at the row's end.

    Rows whose length is not a multiple of N (SFT records) are right-padded to one (padding carries no
    label). The attention mask is dropped, as Ulysses does: it may only mark right padding, which comes
    after every real token, where causal attention never lets a real token look.
    """
    ids, labels = batch["input_ids"], batch["labels"]
    rows, length = ids.shape
    mask = batch.get("attention_mask")
    if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(
            "sequence parallelism drops the attention mask, so padding must be on the right of each row"
        )
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(length, device=ids.device).expand(rows, length)
    pad = -length % sp.size
    if pad:
        ids = F.pad(ids, (0, pad), value=pad_id)
        labels = F.pad(labels, (0, pad), value=IGNORE_INDEX)
        positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, pad + 1, device=ids.device)], 1)
    shift_labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T): token t predicts t + 1
    chunk = ids.shape[1] // sp.size
    cut = slice(sp.rank * chunk, (sp.rank + 1) * chunk)
    return {
        "input_ids": ids[:, cut],
        "position_ids": positions[:, cut].contiguous(),
        "shift_labels": shift_labels[:, cut],
    }


def sequence_parallel_loss(sp: SequenceParallel):
    """The training step's loss ``(model, sharded batch) -> loss`` for a process of ``sp``: the sum of its
    tokens' cross-entropy * N / (label tokens of the whole row), so that DDP's mean of the N processes'
    gradients is the gradient of the row's token-mean loss, and the mean of the N losses is that loss."""
    import torch.distributed as dist

    def loss(model, batch):
        batch = dict(batch)
        labels = batch.pop("shift_labels")
        logits = model(**batch, use_cache=False).logits  # (B, T/N, V)
        labels = labels.to(logits.device)
        total = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        count = (labels != IGNORE_INDEX).sum().to(total.dtype)
        dist.all_reduce(count, group=sp.group)  # label tokens of the whole row; no gradient flows here
        return total * sp.size / count

    return loss
