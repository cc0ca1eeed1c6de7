"""S2-Attn: shifted sparse attention (LongLoRA, section 3.2), without future-token leakage.

Contract of :func:`s2_attention` (shapes like ``torch.nn.functional.scaled_dot_product_attention``):

* query ``(B, H, T, D)``, key/value ``(B, H_kv, T, D)`` with ``H % H_kv == 0`` (GQA kv is never required
  to be repeated by the caller); returns ``(B, H, T, D)``.
* Heads ``[0, H//2)`` attend causally inside groups ``[0, G), [G, 2G), ...``.
* Heads ``[H//2, H)`` attend causally inside groups shifted by ``G//2``: ``[0, G/2), [G/2, 3G/2), ...``.
* The halves are those of the model's heads: a call given a slice of them (sequence parallelism, where
  each rank attends over the whole sequence with ``H / N`` heads) passes ``head_offset`` and
  ``total_heads``, and local head ``i`` is shifted iff ``head_offset + i >= total_heads // 2``.
  The paper's Algorithm 1 implements the shift with ``roll(-G/2)``, which wraps the first G/2 tokens
  into the last group so that early tokens see the end of the sequence. Here the shifted groups are
  built as index ranges instead: the first and last shifted groups are simply short, and the output at
  position t depends only on tokens <= t.
* Any T (the last group may be short), any H (odd too).
* Padding (2-D ``(B, T)`` keep-mask, or a 4-D ``(B, 1, T, T)`` bool/additive mask as transformers builds
  it for SDPA) and packed sequences (``cu_seqlens`` over the flattened ``B*T`` tokens, or the
  block-diagonal 4-D mask transformers builds from restarting ``position_ids``): groups are counted from
  each document's first token; padding tokens get a zero output.

* A sliding window (``sliding_window``, Mistral / Gemma / Qwen sliding layers) is intersected with every
  group: query i sees key j iff same document, same group, j <= i and i - j < window.
* ``sink_tokens=k > 0`` is S2 with attention sinks (``--attention s2-sink``, after SinkLoRA's SF-Attn):
  every query also sees the first k tokens of its own document. Query i sees key j iff same document,
  j <= i, i - j < window (if any) and (same group or j is among the document's first k tokens). A key in
  the query's own group is one key, never counted twice; ``sink_tokens=0`` is plain S2.
* ``sink_stride=s >= 2`` adds strided keys to S2 with attention sinks: every query also sees every s-th
  earlier token of its document, those at document positions p with ``p % s == s - 1``. With pi, pj the
  document positions of query i and key j, and o the position of the first token of i's group, i sees j
  iff same document, pj <= pi, i - j < window (if any) and (same group or pj < k or pj % s == s - 1); a
  strided or sink key inside the query's own group comes through the group only (the extra keys of a
  group are those before o). Why: on the small Table 1 protocol (a 4x extension, held-out perplexity with
  full attention) first-k sinks alone closed about half of S2's gap to full attention, strided keys most
  of it, more with s = 8 than with s = 16 (one seed; the figures go to the docs with their results file).
  The models put little attention on the first token and S2's deficit grows with the distance into the
  row: what S2 misses at small scale is training on long distances, which strided keys provide, at a
  cost of up to T/s more keys per query. ``sink_stride=0`` (the default) adds none.

Kernels: :mod:`longlora.s2sdpa` attends group by group (SDPA buckets of groups, or flash-attn varlen on
CUDA), the default; :mod:`longlora.s2flex` runs the whole row as one ``flex_attention`` call whose block
mask is S2 (``backend="flex"``). Both take their per-token (document, group) layout from
:mod:`longlora.s2groups`.

S2 is a training-time approximation: at inference LongLoRA uses full attention. The transformers adapter
(:func:`s2_attention_forward`, registered as ``"s2_attention"``) therefore falls back to SDPA in eval
mode and while decoding with a KV cache, unless ``config.s2_in_eval`` is set (the paper's "test with S2"
ablation, Table 6).
"""

from __future__ import annotations

import math

import torch

from longlora.s2flex import check_flex, s2_flex_attention
from longlora.s2groups import cu_seqlens_from_position_ids
from longlora.s2sdpa import grouped_s2_attention, softcapped_attention

__all__ = [
    "ATTN_NAME",
    "s2_attention",
    "s2_attention_forward",
    "register_s2_attention",
    "enable_s2_attention",
    "disable_s2_attention",
    "group_size_for",
]

ATTN_NAME = "s2_attention"
BACKENDS = ("auto", "sdpa", "flash", "flex")
DEFAULT_GROUP_SIZE_RATIO = 0.25  # paper default: G = N / 4


def s2_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    group_size: int,
    *,
    scaling: float | None = None,
    attention_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    shift: bool = True,
    dropout: float = 0.0,
    backend: str = "auto",
    sliding_window: int | None = None,
    softcap: float | None = None,
    sink_tokens: int = 0,
    sink_stride: int = 0,
    head_offset: int = 0,
    total_heads: int | None = None,
) -> torch.Tensor:
    """Shifted sparse attention (LongLoRA S2-Attn) with causal groups and no future-token leakage.

    Args:
        query: ``(B, H, T, D)``.
        key, value: ``(B, H_kv, T, D)``, ``H % H_kv == 0``.
        group_size: G in tokens (>= 2; a document shorter than G is one group).
        scaling: softmax scale, default ``1/sqrt(D)``.
        attention_mask: optional padding/packing mask, 2-D ``(B, T)`` (1 = keep) or 4-D ``(B, 1, T, T)``
            (bool True = attend, or additive float).
        cu_seqlens: optional ``(n_docs + 1,)`` cumulative document lengths over the flattened ``B*T``
            tokens (flash-attn's varlen convention) for packed sequences.
        shift: False gives the paper's "short attention without shift" ablation (all heads unshifted).
        dropout: attention dropout probability.
        backend: ``"auto"`` (flash-attn varlen on CUDA when installed and dtype is fp16/bf16, else SDPA),
            ``"sdpa"`` (group by group), ``"flash"`` or ``"flex"`` (one fused flex_attention call whose mask
            is S2, :mod:`longlora.s2flex`, meant for CUDA; on a CPU forward only). ``"auto"`` does not pick
            ``"flex"`` until GPU timings show it faster (``benchmarks/gpu_check.sh``).
        sliding_window: the layer's attention window (Mistral, Gemma 2/3, Qwen 2/3 sliding layers), in
            transformers' convention: query i sees key j only if ``i - j < sliding_window``. Each group's
            causal attention is intersected with it, so training never attends farther than inference.
        softcap: attention-logit soft-capping (Gemma 2: ``softcap * tanh(score / softcap)``), or None.
        sink_tokens: k >= 0; every query also attends to the first k tokens of its document (causally and
            inside the window), besides its group: S2 with attention sinks. 0 (the default) is plain S2.
            Not with ``backend="flash"``; ``"auto"`` runs it group by group through SDPA.
        sink_stride: s = 0 (the default: none) or >= 2; every query also attends to the earlier tokens of
            its document at positions p with ``p % s == s - 1`` (causally and inside the window), besides
            its group and its sinks. With or without ``sink_tokens``; not with ``backend="flash"``.
        head_offset, total_heads: ``query`` holds the model's heads ``[head_offset, head_offset + H)`` of
            ``total_heads`` (default: all of them, ``0`` and ``H``). The shift follows the global head
            index, so the slices of one call compute exactly what the whole call computes.

    Returns:
        ``(B, H, T, D)``; rows of padding tokens are zero.
    """
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            f"query/key/value must be 4-D (B, H, T, D); got {query.ndim}-D, {key.ndim}-D, {value.ndim}-D"
        )
    batch, heads, seq_len, dim = query.shape
    kv_heads = key.shape[1]
    if key.shape != value.shape or key.shape[0] != batch or key.shape[2] != seq_len or key.shape[3] != dim:
        raise ValueError(
            f"key/value must be (B, H_kv, T, D) = ({batch}, H_kv, {seq_len}, {dim}); "
            f"got key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if heads % kv_heads != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
    group_size = int(group_size)
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 tokens, got {group_size}")
    if sliding_window is not None and int(sliding_window) < 1:
        raise ValueError(f"sliding_window must be >= 1 token or None, got {sliding_window}")
    if int(sink_tokens) != sink_tokens or sink_tokens < 0:
        raise ValueError(f"sink_tokens must be an integer >= 0 (0: plain S2), got {sink_tokens}")
    sink_tokens = int(sink_tokens)
    _check_sink_stride(sink_stride, "sink_stride")
    sink_stride = int(sink_stride)
    extra_keys = sink_tokens > 0 or sink_stride > 0
    # a window not below the group changes nothing inside a group, but sinks can lie farther back
    keep_window = sliding_window is not None and (sliding_window < group_size or extra_keys)
    window = int(sliding_window) if keep_window else None
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "flash" and extra_keys:
        raise ValueError(
            "backend='flash' cannot attend to sink tokens or strided keys (flash-attn varlen takes one key "
            "range per group): use backend='sdpa' or 'flex' with sink_tokens/sink_stride, or set both to 0"
        )
    total_heads = heads if total_heads is None else int(total_heads)
    if head_offset < 0 or head_offset + heads > total_heads:
        raise ValueError(
            f"query holds heads [{head_offset}, {head_offset + heads}), which are not heads of a model with "
            f"total_heads={total_heads}: pass head_offset >= 0 and total_heads >= head_offset + {heads}"
        )
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(dim)
    # local heads [0, split) are unshifted: the global first half, which this slice may hold all, part or none of
    split = min(max(total_heads // 2 - head_offset, 0), heads) if shift else heads
    common = dict(
        scaling=scaling,
        attention_mask=attention_mask,
        cu_seqlens=cu_seqlens,
        split=split,
        window=window,
        softcap=softcap,
        sink_tokens=sink_tokens,
        sink_stride=sink_stride,
    )
    if backend == "flex":
        check_flex(query, key, value, dropout)
        return s2_flex_attention(query, key, value, group_size, **common)
    return grouped_s2_attention(query, key, value, group_size, dropout=dropout, backend=backend, **common)


def _check_sink_stride(stride, name: str) -> None:
    if int(stride) != stride or stride < 0 or stride == 1:
        raise ValueError(
            f"{name} must be 0 (no strided keys) or an integer >= 2, got {stride} (a stride of 1 would be "
            "every earlier token: full attention)"
        )


# ----------------------------------------------------------------------------- transformers adapter


def group_size_for(config, seq_len: int) -> int:
    """Group size in tokens from the model config: ``s2_group_size`` if set, else ``s2_group_size_ratio * T``."""
    fixed = getattr(config, "s2_group_size", None)
    if fixed:
        return max(2, int(fixed))
    ratio = getattr(config, "s2_group_size_ratio", None) or DEFAULT_GROUP_SIZE_RATIO
    return max(2, int(seq_len * ratio))


def s2_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """``AttentionInterface`` adapter: S2-Attn while training, full SDPA attention otherwise.

    Full attention is used in eval mode (unless ``config.s2_in_eval``) and whenever the keys are longer
    than the queries (decoding with a KV cache), as the paper prescribes for inference.

    Under sequence parallelism (DeepSpeed Ulysses, :mod:`longlora.sequence_parallel`) this is the core
    attention: ``query`` holds all tokens but only this rank's slice of the heads, whose place among the
    model's heads is read from the sequence-parallel group, and no mask arrives (Ulysses drops it), so
    packed documents are read from the row's gathered ``position_ids``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    config = module.config
    seq_len = query.shape[2]
    use_s2 = (
        (module.training or getattr(config, "s2_in_eval", False)) and key.shape[2] == seq_len and seq_len > 1
    )
    softcap = kwargs.get("softcap")
    if not use_s2 and softcap:  # SDPA has no soft-capping: Gemma 2 at inference
        return _softcapped_full_attention(query, key, value, attention_mask, scaling, softcap, kwargs), None
    if not use_s2:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    if attention_mask is None and cu_seqlens is None and position_ids is not None:
        # no mask for packed rows: sequence parallelism dropped it (alone, transformers builds one)
        cu_seqlens = cu_seqlens_from_position_ids(position_ids.expand(query.shape[0], -1))
    offset, total_heads = 0, query.shape[1]
    if query.shape[1] != getattr(config, "num_attention_heads", total_heads):  # a slice of the heads
        from longlora.sequence_parallel import head_slice

        offset, total_heads = head_slice(query.shape[1], config.num_attention_heads)
    out = s2_attention(
        query,
        key,
        value,
        group_size_for(config, seq_len),
        scaling=scaling,
        attention_mask=attention_mask,
        cu_seqlens=cu_seqlens,
        shift=getattr(config, "s2_shift", True),
        head_offset=offset,
        total_heads=total_heads,
        # per layer: Mistral passes config.sliding_window to every layer; Gemma 2/3 and Qwen 2/3 pass it only
        # to their "sliding_attention" layers (config.layer_types) and None to full-attention layers
        sliding_window=kwargs.get("sliding_window"),
        softcap=softcap,
        dropout=dropout if module.training else 0.0,
        backend=getattr(config, "s2_backend", None) or "auto",
        sink_tokens=getattr(config, "s2_sink_tokens", None) or 0,
        sink_stride=getattr(config, "s2_sink_stride", None) or 0,  # configs saved before strides: none
    )
    return out.transpose(1, 2), None  # (B, T, H, D) as transformers expects


def _softcapped_full_attention(query, key, value, attention_mask, scaling, softcap, kwargs):
    """Full attention with soft-capped scores (the S2 backend outside training, for Gemma 2): query
    (B, H, Tq, D), key/value (B, H_kv, Tk, D). Returns (B, Tq, H, D)."""
    tq, tk = query.shape[2], key.shape[2]
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        mask = attention_mask[..., :tk]
    elif attention_mask is not None:  # additive float mask
        mask = attention_mask[..., :tk] > torch.finfo(attention_mask.dtype).min / 2
    else:  # the mask function left a plain causal (maybe windowed) mask to is_causal: build it
        i = torch.arange(tq, device=query.device)[:, None] + (tk - tq)
        j = torch.arange(tk, device=query.device)[None, :]
        mask = j <= i
        if kwargs.get("sliding_window"):
            mask &= i - j < kwargs["sliding_window"]
    return softcapped_attention(query, key, value, mask, scaling, 0.0, softcap).transpose(1, 2)


def register_s2_attention() -> None:
    """Register ``"s2_attention"`` with transformers (idempotent). The SDPA mask function is reused, so
    padding and packed-sequence masks reach the backend in the 4-D form :func:`s2_attention` reads."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, s2_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


def _base(model):
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def enable_s2_attention(
    model,
    *,
    group_size: int | None = None,
    group_size_ratio: float | None = None,
    shift: bool = True,
    in_eval: bool = False,
    backend: str = "auto",
    sink_tokens: int = 0,
    sink_stride: int = 0,
):
    """Switch a model to S2-Attn and record the settings in its config (they are saved with the model).

    Give ``group_size`` (tokens) or ``group_size_ratio`` (fraction of the training length; default 0.25),
    not both. ``shift=False`` is the paper's "short attention" ablation; ``in_eval=True`` keeps S2 on in
    eval mode (the paper's "test with S2" ablation). ``backend``, ``sink_tokens`` (S2 with attention
    sinks, ``config.s2_sink_tokens``) and ``sink_stride`` (strided keys, ``config.s2_sink_stride``) are
    :func:`s2_attention`'s.
    """
    if group_size is not None and group_size_ratio is not None:
        raise ValueError("give s2 group_size or group_size_ratio, not both")
    if group_size is not None and int(group_size) < 2:
        raise ValueError(f"s2 group_size must be >= 2 tokens, got {group_size}")
    if group_size_ratio is not None and not 0 < group_size_ratio <= 1:
        raise ValueError(f"s2 group_size_ratio must be in (0, 1], got {group_size_ratio}")
    if backend not in BACKENDS:
        raise ValueError(f"s2 backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if int(sink_tokens) != sink_tokens or sink_tokens < 0:
        raise ValueError(f"s2 sink_tokens must be an integer >= 0 (0: plain S2), got {sink_tokens}")
    if sink_tokens and group_size is not None and sink_tokens >= int(group_size):
        raise ValueError(
            f"s2 sink_tokens ({sink_tokens}) must be below the group size ({group_size}): the sinks are a few "
            "tokens at the start of each document; lower sink_tokens or raise group_size"
        )
    _check_sink_stride(sink_stride, "s2 sink_stride")
    if (sink_tokens or sink_stride) and backend == "flash":
        raise ValueError(
            "s2 backend 'flash' cannot attend to sink tokens or strided keys; use 'auto', 'sdpa' or 'flex'"
        )
    register_s2_attention()
    base = _base(model)
    config = base.config
    config.s2_group_size = int(group_size) if group_size is not None else None
    config.s2_group_size_ratio = (
        None if group_size is not None else (group_size_ratio or DEFAULT_GROUP_SIZE_RATIO)
    )
    config.s2_shift = bool(shift)
    config.s2_in_eval = bool(in_eval)
    config.s2_backend = backend
    config.s2_sink_tokens = int(sink_tokens)
    config.s2_sink_stride = int(sink_stride)
    base.set_attn_implementation(ATTN_NAME)
    return model


def disable_s2_attention(model, implementation: str = "sdpa"):
    """Back to full attention (``"sdpa"`` by default); the S2 settings stay in the config for reference."""
    _base(model).set_attn_implementation(implementation)
    return model


register_s2_attention()  # importing this module makes attn_implementation="s2_attention" available
