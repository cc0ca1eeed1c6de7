"""S2-Attn as one ``flex_attention`` call: the CUDA kernel for packed rows.

The SDPA path of :func:`longlora.s2attn.s2_attention` attends group by group. On a CPU that is the fast
way; on CUDA a row packed with many short documents becomes many small kernel launches, which can cost
more than full attention over the whole row. Here the whole row goes through one fused kernel
(:func:`torch.nn.attention.flex_attention.flex_attention`), and S2 is only its mask: query i sees key j iff

* both are real tokens of the same document, and j <= i;
* they fall in the same group of the head's half: ``(pos + s) // G`` equal, with ``s = 0`` for heads
  ``[0, split)`` and ``s = G - G//2`` (groups ``[0, G/2), [G/2, 3G/2), ...``) for heads ``[split, H)``;
* with a sliding window, ``i - j < window``;
* with ``sink_tokens=k``, the group condition is relaxed to "same group, or j is among the document's first
  k tokens" (S2 with attention sinks), and with ``sink_stride=s`` further to "... or j's document position
  p has ``p % s == s - 1``" (strided keys).

Soft-capping is a ``score_mod``; GQA is the kernel's own (``enable_gqa``, kv is never repeated). The block
mask, which lets the kernel skip every 128x128 tile no query of it may see (about 3/4 of causal attention's
tiles at G = T/4), is built for the two head patterns only and shared by all heads of a pattern; it is
cached, so the layers of one step build it once. The compiled kernel is reused for every call of the same
shapes (training rows have one length, so it compiles once).

On a CPU, torch has no flex_attention backward: this path serves there only as a forward reference
(tests compare it with the SDPA path), uncompiled. It has not been timed on a GPU yet
(``benchmarks/gpu_check.sh`` does that), so ``backend="auto"`` does not choose it: ask for it with
``backend="flex"`` (``--s2-backend flex`` in ``longlora.finetune``).
"""

from __future__ import annotations

import functools

import torch

from longlora.s2groups import document_layout

BLOCK = 128  # flex_attention's tile


def flex_available() -> bool:
    """flex_attention exists in this torch (2.5+)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def check_flex(query, key, value, dropout: float) -> None:
    if not flex_available():
        raise RuntimeError("backend='flex' needs torch >= 2.5 (torch.nn.attention.flex_attention)")
    if dropout:
        raise ValueError("backend='flex' has no attention dropout: pass dropout=0 or use backend='sdpa'")
    if not query.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise RuntimeError(
            "backend='flex' has no backward on a CPU in torch (flex_attention trains on CUDA only): use "
            "backend='sdpa' to train on a CPU, or run without gradients"
        )


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=False: rows of one training length compile once; another length compiles its own kernel
    return torch.compile(flex_attention, dynamic=False)


def _mask_mod(
    doc, pos, split, group_size: int, window: int | None, sink_tokens: int = 0, sink_stride: int = 0
):
    """The S2 rule over a row's per-token document ids and positions (B, T)."""
    shifted = group_size - group_size // 2

    def mask_mod(b, h, q, k):
        dq, dk = doc[b, q], doc[b, k]
        s = (h >= split).to(pos.dtype) * shifted
        seen = (pos[b, q] + s) // group_size == (pos[b, k] + s) // group_size
        if sink_tokens:
            seen = seen | (pos[b, k] < sink_tokens)
        if sink_stride:
            seen = seen | (pos[b, k] % sink_stride == sink_stride - 1)
        ok = (dq == dk) & (dq >= 0) & (k <= q) & seen
        if window is not None:
            ok = ok & (q - k < window)
        return ok

    return mask_mod


_cache: dict = {}


def s2_block_mask(
    doc,
    pos,
    heads: int,
    split: int,
    group_size: int,
    window: int | None,
    sink_tokens: int = 0,
    sink_stride: int = 0,
):
    """The ``BlockMask`` of S2 over ``heads`` heads (``doc``/``pos`` (B, T)); the last one is cached and
    reused when the layout, heads and settings are the same (every layer of a step)."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    key = (tuple(doc.shape), str(doc.device), heads, split, group_size, window, sink_tokens, sink_stride)
    hit = _cache.get("mask")
    if hit is not None and hit[0] == key and torch.equal(hit[1], doc) and torch.equal(hit[2], pos):
        return hit[3]
    batch, seq_len = doc.shape
    # two head patterns (unshifted, shifted) evaluated once each, then spread over the heads of each half
    two = create_block_mask(
        _mask_mod(doc, pos, 1, group_size, window, sink_tokens, sink_stride),
        batch,
        2,
        seq_len,
        seq_len,
        device=doc.device,
        BLOCK_SIZE=BLOCK,
    )
    pattern = torch.tensor([0] * split + [1] * (heads - split), device=doc.device)
    full = None if two.full_kv_num_blocks is None else two.full_kv_num_blocks[:, pattern]
    full_idx = None if two.full_kv_indices is None else two.full_kv_indices[:, pattern]
    mask = BlockMask.from_kv_blocks(
        two.kv_num_blocks[:, pattern],
        two.kv_indices[:, pattern],
        full,
        full_idx,
        BLOCK_SIZE=BLOCK,
        mask_mod=_mask_mod(doc, pos, split, group_size, window, sink_tokens, sink_stride),
        seq_lengths=(seq_len, seq_len),
    )
    _cache["mask"] = (key, doc.clone(), pos.clone(), mask)
    return mask


def s2_flex_attention(
    query,
    key,
    value,
    group_size: int,
    *,
    scaling,
    attention_mask,
    cu_seqlens,
    split,
    window,
    softcap,
    sink_tokens: int = 0,
    sink_stride: int = 0,
):
    """S2-Attn of :func:`longlora.s2attn.s2_attention`'s contract (checked there) in one flex_attention
    call; query heads ``[0, split)`` are unshifted, ``[split, H)`` shifted. Returns (B, H, T, D); padding
    tokens get zeros."""
    batch, heads, seq_len, _ = query.shape
    doc, pos = document_layout(batch, seq_len, attention_mask, cu_seqlens, query.device)
    doc, pos = doc.view(batch, seq_len), pos.view(batch, seq_len)
    mask = s2_block_mask(doc, pos, heads, split, group_size, window, sink_tokens, sink_stride)
    score_mod = None
    if softcap:

        def score_mod(score, b, h, q, k):
            return softcap * torch.tanh(score / softcap)

    if query.is_cuda:
        attend = _compiled_flex()
    else:  # forward reference only (no CPU backward in torch); eager is exact and needs no compiler
        from torch.nn.attention.flex_attention import flex_attention as attend
    out = attend(
        query,
        key,
        value,
        score_mod=score_mod,
        block_mask=mask,
        scale=scaling,
        enable_gqa=key.shape[1] != heads,
    )
    return out
