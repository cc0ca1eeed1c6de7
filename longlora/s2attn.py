"""S2-Attn: shifted sparse attention (LongLoRA, section 3.2), without future-token leakage.

Contract of :func:`s2_attention` (shapes like ``torch.nn.functional.scaled_dot_product_attention``):

* query ``(B, H, T, D)``, key/value ``(B, H_kv, T, D)`` with ``H % H_kv == 0`` (GQA kv is never required
  to be repeated by the caller); returns ``(B, H, T, D)``.
* Heads ``[0, H//2)`` attend causally inside groups ``[0, G), [G, 2G), ...``.
* Heads ``[H//2, H)`` attend causally inside groups shifted by ``G//2``: ``[0, G/2), [G/2, 3G/2), ...``.
  The paper's Algorithm 1 implements the shift with ``roll(-G/2)``, which wraps the first G/2 tokens
  into the last group so that early tokens see the end of the sequence. Here the shifted groups are
  built as index ranges instead: the first and last shifted groups are simply short, and the output at
  position t depends only on tokens <= t.
* Any T (the last group may be short), any H (odd too).
* Padding (2-D ``(B, T)`` keep-mask, or a 4-D ``(B, 1, T, T)`` bool/additive mask as transformers builds
  it for SDPA) and packed sequences (``cu_seqlens`` over the flattened ``B*T`` tokens, or the
  block-diagonal 4-D mask transformers builds from restarting ``position_ids``): groups are counted from
  each document's first token; padding tokens get a zero output.

How: every token gets a (document, group) id; the groups are contiguous runs of the flattened tokens, so
they are gathered into a ``(num_groups, G)`` right-padded batch and run through causal SDPA in one call
per head half (a causal query never sees the right padding of its group). On CUDA with ``flash-attn``
installed, the groups go to ``flash_attn_varlen_func`` unpadded instead.

S2 is a training-time approximation: at inference LongLoRA uses full attention. The transformers adapter
(:func:`s2_attention_forward`, registered as ``"s2_attention"``) therefore falls back to SDPA in eval
mode and while decoding with a KV cache, unless ``config.s2_in_eval`` is set (the paper's "test with S2"
ablation, Table 6).
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

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
DEFAULT_GROUP_SIZE_RATIO = 0.25  # paper default: G = N / 4


# ----------------------------------------------------------------------------- token -> group layout


def _document_layout(batch: int, seq_len: int, attention_mask, cu_seqlens, device):
    """Per flattened token: document id (-1 for padding) and position inside its document. Shapes (B*T,)."""
    n = batch * seq_len
    flat = torch.arange(n, device=device)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=device, dtype=torch.long)
        if cu.ndim != 1 or cu[0].item() != 0 or cu[-1].item() > n or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(
                f"cu_seqlens must be a 1-D increasing tensor starting at 0 and ending at <= B*T={n}, "
                f"got {cu.tolist()[:8]}..."
            )
        doc = torch.searchsorted(cu, flat, right=True) - 1  # (B*T,)
        real = flat < cu[-1]
        if batch > 1:  # a document must not cross a row boundary
            row_starts = torch.arange(0, n, seq_len, device=device)
            if not bool(torch.isin(row_starts, cu).all()):
                raise ValueError("cu_seqlens must put a document boundary at the start of every batch row")
        start = cu[doc.clamp(max=len(cu) - 2)]
        pos = flat - start
        return torch.where(real, doc, -1), pos

    if attention_mask is None:
        doc = flat // seq_len
        pos = flat % seq_len
        return doc, pos

    if attention_mask.ndim == 2:
        keep = attention_mask.to(device=device).bool()  # (B, T)
        if keep.shape != (batch, seq_len):
            raise ValueError(
                f"2-D attention_mask must be (B, T)=({batch}, {seq_len}), got {tuple(keep.shape)}"
            )
        prev = torch.cat([keep.new_zeros(batch, 1), keep[:, :-1]], dim=1)
        starts = keep & ~prev
        if bool((starts.sum(dim=1) > 1).any()):
            raise ValueError(
                "2-D attention_mask has holes (more than one run of 1s in a row); pass packed documents with "
                "cu_seqlens or restarting position_ids instead"
            )
    elif attention_mask.ndim == 4:
        if attention_mask.shape[-1] != seq_len or attention_mask.shape[-2] != seq_len:
            raise ValueError(
                f"4-D attention_mask must end in (T, T)=({seq_len}, {seq_len}), got {tuple(attention_mask.shape)}"
            )
        m = attention_mask[:, 0].to(device)
        allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2  # (B, T, T)
        allowed = allowed.expand(batch, seq_len, seq_len)
        keep = torch.diagonal(allowed, dim1=1, dim2=2)  # token attends to itself -> it is real
        sees_prev = torch.diagonal(allowed, offset=-1, dim1=1, dim2=2)  # (B, T-1): i attends i-1
        sees_prev = torch.cat([sees_prev.new_zeros(batch, 1), sees_prev], dim=1)
        prev_keep = torch.cat([keep.new_zeros(batch, 1), keep[:, :-1]], dim=1)
        starts = keep & ~(sees_prev & prev_keep)
    else:
        raise ValueError(
            f"attention_mask must be 2-D (B, T) or 4-D (B, 1, T, T), got {attention_mask.ndim}-D"
        )

    starts = starts.reshape(n)
    keep = keep.reshape(n)
    doc = torch.cumsum(starts.long(), 0) - 1
    # position inside the document = distance to the last start at or before the token
    start_idx = torch.where(starts, flat, torch.zeros_like(flat))
    start_idx = torch.cummax(start_idx, dim=0).values
    pos = flat - start_idx
    return torch.where(keep, doc, -1), pos


def _groups(doc, pos, group_size: int, offset: int):
    """Contiguous groups of real tokens as (first flat token, length) pairs, each ``(n_groups,)``.

    Group id = (document, (pos + shift) // G) with shift = (G - offset) % G, so that with offset=G//2 the
    groups are [0, G/2), [G/2, 3G/2), ... inside every document.
    """
    real = doc >= 0
    shift = (group_size - offset) % group_size
    gid = (pos + shift) // group_size
    key = torch.where(real, doc * (int(pos.max().item()) // group_size + 2) + gid, torch.full_like(doc, -1))
    flat = torch.arange(doc.numel(), device=doc.device)
    prev = torch.cat([key.new_full((1,), -2), key[:-1]])
    is_start = real & (key != prev)
    starts = flat[is_start]  # (n_groups,)
    ends = torch.cat([starts[1:], starts.new_tensor([doc.numel()])])
    # a group ends at the next group start or at the first padding token
    real_count = torch.cumsum(real.long(), 0)
    lengths = real_count[ends - 1] - torch.cat([real_count.new_zeros(1), real_count])[starts]
    return starts, lengths


# ----------------------------------------------------------------------------- attention on groups


def _flash_attn_varlen():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _plan(starts, lengths):
    """Split groups into contiguous runs of equal-length groups (served by a free view) and leftovers.

    Returns ``(runs, rest)``: runs are ``(first_token, n_groups, length)`` tuples with at least two groups;
    ``rest`` indexes the remaining groups (short half-groups, document tails), which are gathered into one
    right-padded batch.
    """
    s, ln = starts.tolist(), lengths.tolist()
    runs, rest, i = [], [], 0
    while i < len(s):
        j = i + 1
        while j < len(s) and ln[j] == ln[i] and s[j] == s[j - 1] + ln[i]:
            j += 1
        if j - i >= 2:
            runs.append((s[i], j - i, ln[i]))
        else:
            rest.append(i)
        i = j
    return runs, rest


def _sdpa(q, k, v, scaling, dropout):
    """Causal SDPA over a batch of groups: q (n, h, L, D), k/v (n, hk, L, D)."""
    return F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=k.shape[1] != q.shape[1]
    )


def _attend_groups(out, heads, q, k, v, starts, lengths, plan, scaling, dropout, use_flash):
    """Write into ``out[:, heads]`` (N, h, D) the grouped causal attention of q (N, h, D) over k/v (N, hk, D)."""
    if use_flash:
        flash = _flash_attn_varlen()
        slot = torch.arange(int(lengths.max().item()), device=q.device)
        valid = slot[None, :] < lengths[:, None]
        sel = (starts[:, None] + slot[None, :])[valid]  # flat token ids in group order
        cu = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        max_len = int(lengths.max().item())
        o = flash(
            q[sel],
            k[sel],
            v[sel],
            cu,
            cu,
            max_len,
            max_len,
            dropout_p=dropout,
            softmax_scale=scaling,
            causal=True,
        )
        out[sel, heads] = o.to(out.dtype)
        return
    runs, rest = plan
    for first, n_groups, length in runs:
        span = slice(first, first + n_groups * length)

        def groups(x, n_groups=n_groups, length=length, span=span):  # (n*L, h, D) -> (n, h, L, D), a view
            return x[span].view(n_groups, length, x.shape[1], x.shape[2]).transpose(1, 2)

        o = _sdpa(groups(q), groups(k), groups(v), scaling, dropout)  # (n, h, L, D)
        out[span, heads] = o.transpose(1, 2).reshape(n_groups * length, q.shape[1], q.shape[2])
    if rest:
        rest = torch.tensor(rest, device=q.device)
        r_starts, r_lengths = starts[rest], lengths[rest]
        slot = torch.arange(int(r_lengths.max().item()), device=q.device)
        valid = slot[None, :] < r_lengths[:, None]  # (n_rest, L)
        # padded slots repeat the group's first token; they sit after every valid slot, so a causal query
        # never attends to them
        index = torch.where(valid, r_starts[:, None] + slot[None, :], r_starts[:, None])
        og = _sdpa(
            q[index].transpose(1, 2), k[index].transpose(1, 2), v[index].transpose(1, 2), scaling, dropout
        )
        # under autocast SDPA may answer in a lower precision than the buffer; index_put needs equal dtypes
        out[index[valid], heads] = og.transpose(1, 2)[valid].to(out.dtype)


def _head_blocks(head_lo: int, head_hi: int, n_rep: int):
    """Split query heads [head_lo, head_hi) into blocks that each map onto a contiguous kv-head slice with
    a uniform ratio, so SDPA's GQA handles them without repeating kv (e.g. 9 q / 3 kv heads, heads [0, 4)
    -> [0, 3) on kv [0, 1) and [3, 4) on kv [1, 2))."""
    blocks, h = [], head_lo
    while h < head_hi:
        kv = h // n_rep
        if h % n_rep == 0 and head_hi >= h + n_rep:
            end = h + (head_hi - h) // n_rep * n_rep  # whole kv groups: ratio n_rep
            blocks.append((h, end, kv, end // n_rep))
        else:
            end = min(head_hi, (kv + 1) * n_rep)  # part of one kv group: all on one kv head
            blocks.append((h, end, kv, kv + 1))
        h = end
    return blocks


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
            ``"sdpa"`` or ``"flash"``.

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
    if backend not in ("auto", "sdpa", "flash"):
        raise ValueError(f"backend must be 'auto', 'sdpa' or 'flash', got {backend!r}")
    flash_ok = (
        query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _flash_attn_varlen() is not None
    )
    if backend == "flash" and not flash_ok:
        raise RuntimeError(
            "backend='flash' needs a CUDA device, fp16/bf16 tensors and flash-attn "
            "(pip install flash-attn --no-build-isolation; see requirements-gpu.txt)"
        )
    use_flash = flash_ok and backend != "sdpa"
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(dim)

    n = batch * seq_len
    q = query.transpose(1, 2).reshape(n, heads, dim)  # (B*T, H, D)
    k = key.transpose(1, 2).reshape(n, kv_heads, dim)  # (B*T, H_kv, D)
    v = value.transpose(1, 2).reshape(n, kv_heads, dim)
    n_rep = heads // kv_heads

    doc, pos = _document_layout(batch, seq_len, attention_mask, cu_seqlens, query.device)
    if not bool((doc >= 0).any()):
        return query.new_zeros(query.shape)
    split = heads // 2 if shift else heads
    halves = [(0, split, 0)]
    if split < heads:
        halves.append((split, heads, group_size // 2))
    out = q.new_zeros(n, heads, dim)  # (B*T, H, D); padding tokens stay zero
    for lo, hi, offset in halves:
        starts, lengths = _groups(doc, pos, group_size, offset)
        plan = None if use_flash else _plan(starts, lengths)
        for h0, h1, kv0, kv1 in _head_blocks(lo, hi, n_rep):
            _attend_groups(
                out,
                slice(h0, h1),
                q[:, h0:h1],
                k[:, kv0:kv1],
                v[:, kv0:kv1],
                starts,
                lengths,
                plan,
                scaling,
                dropout,
                use_flash,
            )
    return out.reshape(batch, seq_len, heads, dim).transpose(1, 2)


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
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    config = module.config
    seq_len = query.shape[2]
    use_s2 = (
        (module.training or getattr(config, "s2_in_eval", False)) and key.shape[2] == seq_len and seq_len > 1
    )
    if not use_s2:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    out = s2_attention(
        query,
        key,
        value,
        group_size_for(config, seq_len),
        scaling=scaling,
        attention_mask=attention_mask,
        cu_seqlens=kwargs.get("cu_seq_lens_q"),
        shift=getattr(config, "s2_shift", True),
        dropout=dropout if module.training else 0.0,
    )
    return out.transpose(1, 2), None  # (B, T, H, D) as transformers expects


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
):
    """Switch a model to S2-Attn and record the settings in its config (they are saved with the model).

    Give ``group_size`` (tokens) or ``group_size_ratio`` (fraction of the training length; default 0.25),
    not both. ``shift=False`` is the paper's "short attention" ablation; ``in_eval=True`` keeps S2 on in
    eval mode (the paper's "test with S2" ablation).
    """
    if group_size is not None and group_size_ratio is not None:
        raise ValueError("give s2 group_size or group_size_ratio, not both")
    if group_size is not None and int(group_size) < 2:
        raise ValueError(f"s2 group_size must be >= 2 tokens, got {group_size}")
    if group_size_ratio is not None and not 0 < group_size_ratio <= 1:
        raise ValueError(f"s2 group_size_ratio must be in (0, 1], got {group_size_ratio}")
    register_s2_attention()
    base = _base(model)
    config = base.config
    config.s2_group_size = int(group_size) if group_size is not None else None
    config.s2_group_size_ratio = (
        None if group_size is not None else (group_size_ratio or DEFAULT_GROUP_SIZE_RATIO)
    )
    config.s2_shift = bool(shift)
    config.s2_in_eval = bool(in_eval)
    base.set_attn_implementation(ATTN_NAME)
    return model


def disable_s2_attention(model, implementation: str = "sdpa"):
    """Back to full attention (``"sdpa"`` by default); the S2 settings stay in the config for reference."""
    _base(model).set_attn_implementation(implementation)
    return model
