"""S2-Attn group by group: each group's causal attention through SDPA (or flash-attn varlen on CUDA).

The kernel behind :func:`longlora.s2attn.s2_attention`'s ``"sdpa"``, ``"flash"`` and (usually) ``"auto"``
backends; the contract and its checks live there. Every token gets a (document, group) id
(:mod:`longlora.s2groups`); groups are contiguous runs of the flattened tokens. A group both head halves
share (a document shorter than G/2) is attended once with every head. Runs of equal-length groups are free
views; the remaining groups are bucketed by length, a bucket padding a group only while that costs less
than one more SDPA call, so packed rows of many short documents cost about what the same documents cost
one by one. Each bucket is one causal SDPA call (a right-padded ``(n, G_b)`` batch: a causal query never
sees the padding). With flash-attn, each head half is one ``flash_attn_varlen_func`` call, unpadded.

With sink tokens (S2 with attention sinks), a group that does not start its document attends to
``[extra keys] ++ [its own tokens]``: the extra keys are the document's first k tokens and, with a stride
s, the tokens at document positions p = s-1, 2s-1, ... (from k on, so that no key comes twice); the group
part is causal. A key column is visible to a query when its position lies before the group's first token
(keys inside the group come through the group part only) and inside the window. The strided columns of
a group are those before its offset o, so their count grows with o: one SDPA call pads the extra columns
of its groups to the largest offset's count, and a group masks the columns at or past its own start. A
document's first group holds every key it may see already and is attended as in plain S2.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longlora.s2groups import Batch, document_layout, groups, plan_batches, regular_groups, split_shared

# ----------------------------------------------------------------------------- attention on groups

# Fixed cost of one more SDPA call (forward + backward, autograd bookkeeping), in causal query-key pairs
# times heads that the same time would compute: about 1 ms on 2 busy CPU cores, a fraction of that on 16
# (where padding is cheap too, so the CPU value is the low, safe one). On an H200 (SDPA, no flash-attn)
# host-side overhead dominates: values from 2^18 to 2^30 measured alike.
_CALL_COST_PAIR_HEADS = {"cpu": 1 << 15, "cuda": 1 << 22}


def _flash_attn_varlen():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _sdpa(q, k, v, scaling, dropout, window, softcap=None, mask=None):
    """Causal SDPA over a batch of groups, q (n, h, L, D), k/v (n, hk, L, D); ``window`` (or None) limits
    query i to keys j with i - j < window, transformers' sliding-window convention. ``softcap`` (Gemma 2's
    ``attn_logit_softcapping``) caps the scores as ``softcap * tanh(s / softcap)`` before the softmax.
    ``mask`` (boolean (n or 1, 1, L, Lk), True = attend) replaces the causal mask and the window: groups
    with sink keys in front, k/v (n, hk, Lk, D)."""
    length = q.shape[2]
    if mask is None and window is not None and window < length:
        i = torch.arange(length, device=q.device)
        mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)  # (L, L)
    if softcap:
        if mask is None:
            mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        return softcapped_attention(q, k, v, mask, scaling, dropout, softcap)
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout,
        is_causal=mask is None,
        scale=scaling,
        enable_gqa=k.shape[1] != q.shape[1],
    )


def softcapped_attention(q, k, v, mask, scaling, dropout, softcap):
    """Attention with soft-capped scores, which SDPA cannot express: q (n, h, Lq, D), k/v (n, hk, Lk, D),
    ``mask`` boolean (..., Lq, Lk), True where a query may see a key. Returns (n, h, Lq, D)."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scale = q.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (n, h, Lq, Lk)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, v)


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


def _attend_batch(
    qb, kb, vb, b: Batch, heads: tuple[int, int], n_rep, scaling, dropout, window, softcap=None, sinks=None
):
    """Causal SDPA of one :class:`Batch` laid out as ``n`` groups of ``b.length`` slots: qb (n*L, h, D)
    for query heads ``heads``, kb/vb (n*L, h_kv, D) for their kv heads. Returns (n*L, h, D).

    ``sinks``: (extra keys, extra values, mask) from :func:`_sink_inputs`, keys/values (n*E, h_kv, D) put
    in front of each group's keys, mask (n or 1, 1, L, E + L), or None when every query sees every extra
    key (no window, no soft-capping, every extra key before the group): then :func:`_prefix_causal`, which
    keeps SDPA's causal kernel; a mask makes it compute every score (at G = T/4 with strided keys every
    8th token, about 1.5x the work).

    Head blocks are cut with ``split`` (whose backward is one concatenation), not with slices (whose
    backward writes each block's gradient into a zero-filled copy of the whole batch)."""
    lo, hi = heads

    def grouped(x):  # (n*L, h, D) -> (n, h, L, D), a view
        return x.view(b.n, b.length, x.shape[1], x.shape[2]).transpose(1, 2)

    if sinks is not None and sinks[2] is None:  # every extra key visible to every query
        # the half's heads in one call, each query head with its own copy of its key/value head: the CPU
        # kernel's GQA backward runs one task per (group, key/value head), since query heads sharing one
        # write the same key gradients, so a lone group of one key/value head ran on one core (measured
        # at 8k: S2 with sinks and strided keys 1.8x S2's forward+backward with head blocks, 1.5x so)
        first = lo - (lo // n_rep) * n_rep  # the half's first query head among its key/value heads' copies

        def per_query_head(x, rows):  # (n*rows, h_kv, D) -> (n, hi - lo, rows, D), each query head's kv head
            x = x.view(b.n, rows, x.shape[1], x.shape[2]).repeat_interleave(n_rep, dim=2)
            return x[:, :, first : first + hi - lo].transpose(1, 2)

        extra = sinks[0].shape[0] // b.n
        kx, vx = (
            torch.cat([per_query_head(s, extra), per_query_head(x, b.length)], dim=2)
            for s, x in ((sinks[0], kb), (sinks[1], vb))
        )
        o = _prefix_causal(grouped(qb), kx, vx, scaling, dropout).transpose(1, 2)
        return o.reshape(b.n * b.length, hi - lo, qb.shape[2])
    spec = _head_blocks(lo, hi, n_rep)
    kv_parts = (kb, vb) if sinks is None else (kb, vb, sinks[0], sinks[1])
    if len(spec) == 1:
        parts = [(qb, *kv_parts)]
    else:  # consecutive blocks: query heads and kv heads each split exactly
        q_sizes, kv_sizes = [h1 - h0 for h0, h1, _, _ in spec], [k1 - k0 for _, _, k0, k1 in spec]
        parts = zip(qb.split(q_sizes, dim=1), *(x.split(kv_sizes, dim=1) for x in kv_parts))
    blocks = []
    for qx, kx, vx, *sink_kv in parts:
        mask = None
        kx, vx = grouped(kx), grouped(vx)
        if sinks is not None:  # [extra keys ++ group] keys: (n, h_kv, E + L, D)
            kx, vx = (
                torch.cat([s.view(b.n, -1, s.shape[1], s.shape[2]).transpose(1, 2), x], dim=2)
                for s, x in zip(sink_kv, (kx, vx))
            )
            mask = sinks[2]
        blocks.append(_sdpa(grouped(qx), kx, vx, scaling, dropout, window, softcap, mask).transpose(1, 2))
    # blocks: each (n, L, h_block, D)
    o = torch.cat(blocks, dim=2) if len(blocks) > 1 else blocks[0]
    return o.reshape(b.n * b.length, hi - lo, qb.shape[2])


def _prefix_causal(q, k, v, scaling, dropout):
    """Attention of q (n, h, L, D) to k/v (n, h, E + L, D) whose first E keys every query sees and whose
    last L are causal: E zero queries in front make it one square causal SDPA call, exactly [all E extra
    keys ++ the group's causal keys] for the real queries (the zero queries' outputs are dropped, so they
    get no gradient; they cost E^2/2 scores)."""
    extra = k.shape[2] - q.shape[2]
    padded = torch.cat([q.new_zeros(q.shape[0], q.shape[1], extra, q.shape[3]), q], dim=2)
    return F.scaled_dot_product_attention(padded, k, v, dropout_p=dropout, is_causal=True, scale=scaling)[
        :, :, extra:
    ]


def _token_views(x, spans: list[tuple[int, int]]):
    """Views ``x[a:b]`` for disjoint ``spans`` (sorted), cut with one ``split`` so that backward is one
    concatenation rather than one zero-filled full-size gradient per view."""
    if len(spans) == 1 and spans[0] == (0, x.shape[0]):
        return [x]
    sizes, at, keep = [], 0, []
    for a, b in spans:
        sizes += [a - at, b - a]
        keep.append(len(sizes) - 1)
        at = b
    pieces = x.split(sizes + [x.shape[0] - at])
    return [pieces[i] for i in keep]


@dataclass(frozen=True)
class Sinks:
    """Extra keys of the groups of one pass (S2 with attention sinks): each document's first ``tokens`` (k)
    tokens and, with ``stride`` s > 0, its tokens at positions p >= k with p % s == s - 1. ``offset``: each
    group's position in its document by the group's first flat token (every group here starts after its
    document's first token)."""

    tokens: int
    offset: dict[int, int]
    stride: int = 0

    def columns(self, before: int) -> torch.Tensor:
        """Document positions of the extra key columns of groups starting at document positions up to
        ``before``, sorted (E,): the k sinks, then the strided positions in [k, before)."""
        cols = torch.arange(self.tokens)
        if self.stride:
            s = self.stride
            first = self.tokens // s  # before may fall among the sinks: then no strided column
            cols = torch.cat([cols, torch.arange(first, max(before // s, first)) * s + s - 1])
        return cols


def _sink_mask(offsets: torch.Tensor, cols: torch.Tensor, length: int, window: int | None, device=None):
    """(n or 1, 1, L, E + L) bool mask of groups of ``length`` slots starting at document positions
    ``offsets`` (n,), with extra key columns at document positions ``cols`` (E,) in front: a query sees
    column c iff ``cols[c]`` is before the group (the group's own tokens are its causal part) and inside
    the window. Built on ``device``: with strided keys it grows with the context, too big to copy there."""
    slot = torch.arange(length, device=device)
    causal = slot[:, None] >= slot[None, :]  # (L, L)
    if window is not None:
        causal &= slot[:, None] - slot[None, :] < window
    if window is None and int(offsets.min()) > int(cols.max()):  # every column visible to every query
        extra = torch.ones(1, length, cols.numel(), dtype=torch.bool, device=device)
    else:
        off = offsets.to(device)[:, None, None]  # (n, 1, 1)
        col = cols.to(device)[None, None, :]  # (1, 1, E)
        extra = col < off  # columns at or after the group's start are in the group
        if window is not None:
            extra = extra & (off + slot[None, :, None] - col < window)  # query position - key position
        extra = extra.expand(len(offsets), length, cols.numel())
    return torch.cat([extra, causal.expand(extra.shape[0], length, length)], dim=2)[:, None]


def _sink_inputs(kh, vh, batches: list[Batch], sinks: Sinks, window, softcap=None):
    """Per batch: the extra keys and values of its groups, (n*E, h_kv, D) each, all gathered in one
    ``index_select`` (backward: one scatter), and the batch's mask (:func:`_sink_mask`), or no mask where
    SDPA's causal kernel can serve it (every extra key seen by every query, no window, no soft-capping);
    None for a batch whose groups have no extra key (no sink tokens and every group before the first
    strided one)."""
    index, sizes, masks = [], [], []
    for b in batches:
        starts = torch.tensor(b.starts) if b.first is None else b.first + b.length * torch.arange(b.n)
        offsets = torch.tensor([sinks.offset[s] for s in starts.tolist()])  # (n,)
        cols = sinks.columns(int(offsets.max()))  # (E,)
        if not cols.numel():
            sizes.append(0)
            masks.append(None)
            continue
        # a column at or after the group's start is masked: any token of the document will do, the last one
        # before the group
        at = torch.minimum(cols[None, :], offsets[:, None] - 1)  # (n, E)
        index.append(((starts - offsets)[:, None] + at).reshape(-1))
        sizes.append(index[-1].numel())
        if window is None and not softcap and int(offsets.min()) > int(cols.max()):  # all seen by all
            masks.append(None)
        else:
            masks.append(_sink_mask(offsets, cols, b.length, window, kh.device))
    if not index:
        return [None] * len(batches)
    index = torch.cat(index).to(kh.device)
    keys, values = kh.index_select(0, index).split(sizes), vh.index_select(0, index).split(sizes)
    return [None if size == 0 else (sk, sv, m) for size, sk, sv, m in zip(sizes, keys, values, masks)]


def _attend_pass(
    qh,
    kh,
    vh,
    batches: list[Batch],
    heads: tuple[int, int],
    n_rep,
    scaling,
    dropout,
    window,
    softcap=None,
    sinks: Sinks | None = None,
):
    """Grouped causal attention of ``batches`` for query heads ``heads = (lo, hi)``; qh (N, hi - lo, D) is
    q for those heads, kh/vh (N, h_kv, D) k/v for their kv heads (``lo // n_rep`` onwards). Returns pieces
    (token id per slot (S,), -1 for padded slots; output (S, hi - lo, D)). With ``sinks`` every group also
    attends to the extra keys of its document (:class:`Sinks`) that lie before it.

    Contiguous batches (runs of equal groups, single groups) are views of q/k/v, all cut by one ``split``
    (nothing is copied; backward is one concatenation). Padded buckets of short groups are gathered in one
    ``index_select`` and cut apart with one ``split``, whose backward is a single concatenation as well.
    """
    args = dict(heads=heads, n_rep=n_rep, scaling=scaling, dropout=dropout, window=window, softcap=softcap)
    views = sorted((b for b in batches if b.first is not None), key=lambda b: b.first)
    rest = [b for b in batches if b.first is None]
    sink_parts = [None] * len(batches)
    if sinks is not None:
        sink_parts = _sink_inputs(kh, vh, views + rest, sinks, window, softcap)
    pieces = []
    if views:
        spans = [(b.first, b.first + b.n * b.length) for b in views]
        cut = [_token_views(x, spans) for x in (qh, kh, vh)]
        for b, (a, z), qb, kb, vb, sink in zip(views, spans, *cut, sink_parts):
            # token ids as a range, not a tensor
            pieces.append((range(a, z), _attend_batch(qb, kb, vb, b, **args, sinks=sink)))
    if not rest:
        return pieces
    index, valid = [], []
    # built on the CPU and moved in one copy: on CUDA, one small host-to-device copy per batch adds up
    for b in rest:
        starts = torch.tensor(b.starts)
        slot = torch.arange(b.length)
        ok = slot[None, :] < torch.tensor(b.lengths)[:, None]  # (n, L)
        # padded slots repeat the group's first token; they sit after every valid slot, so a causal
        # query never attends to them
        index.append(torch.where(ok, starts[:, None] + slot[None, :], starts[:, None]).reshape(-1))
        valid.append(ok.reshape(-1))
    index, valid = torch.cat(index).to(qh.device), torch.cat(valid).to(qh.device)
    sizes = [b.n * b.length for b in rest]
    qs = qh.index_select(0, index).split(sizes)  # each (n*L, h, D)
    ks = kh.index_select(0, index).split(sizes)
    vs = vh.index_select(0, index).split(sizes)
    slot_tokens = torch.where(valid, index, -1).split(sizes)
    # one piece per batch: the caller concatenates every piece once, in _scatter_back
    pieces += [
        (t, _attend_batch(qb, kb, vb, b, **args, sinks=sink))
        for t, b, qb, kb, vb, sink in zip(slot_tokens, rest, qs, ks, vs, sink_parts[len(views) :])
    ]
    return pieces


def _attend_flash(q, k, v, starts, lengths, heads, n_rep, scaling, dropout, window, softcap=None):
    """All groups of one head half in one ``flash_attn_varlen_func`` call per head block, unpadded."""
    flash = _flash_attn_varlen()
    max_len = max(lengths)
    starts_t = torch.tensor(starts, device=q.device)
    lengths_t = torch.tensor(lengths, device=q.device)
    slot = torch.arange(max_len, device=q.device)
    valid = slot[None, :] < lengths_t[:, None]
    sel = (starts_t[:, None] + slot[None, :])[valid]  # flat token ids in group order
    cu = F.pad(torch.cumsum(lengths_t, 0), (1, 0)).to(torch.int32)
    extra = {} if window is None else {"window_size": (window - 1, 0)}
    if softcap:
        extra["softcap"] = softcap
    outs = []
    for h0, h1, kv0, kv1 in _head_blocks(heads[0], heads[1], n_rep):
        o = flash(
            q[sel, h0:h1],
            k[sel, kv0:kv1],
            v[sel, kv0:kv1],
            cu,
            cu,
            max_len,
            max_len,
            dropout_p=dropout,
            softmax_scale=scaling,
            causal=True,
            **extra,
        )
        outs.append(o)
    return sel, torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def _scatter_back(pieces, n_tokens: int, heads: int, like):
    """Token order from pieces of (token id per slot: a ``range`` or an (S,) tensor with -1 for padding;
    output (S, h, D)) whose valid slots cover every real token once: one gather instead of one in-place
    write per piece (each of which would copy the whole output in backward). Tokens in no piece (padding)
    get zeros. Returns (N, h, D)."""
    if all(isinstance(t, range) for t, _ in pieces):  # views of q: in token order once sorted?
        ordered = sorted(pieces, key=lambda p: p[0].start)
        bounds = [0] + [t.stop for t, _ in ordered]
        if [t.start for t, _ in ordered] == bounds[:-1] and bounds[-1] == n_tokens:
            outs = [o.to(like.dtype) for _, o in ordered]
            return torch.cat(outs) if len(outs) > 1 else outs[0]  # one document: nothing to reorder
    tokens = torch.cat(
        [torch.arange(t.start, t.stop, device=like.device) if isinstance(t, range) else t for t, _ in pieces]
    )
    real = tokens >= 0
    n_real = int(real.sum().item())
    # a zero row for padding tokens only when there are some (packed rows usually have none)
    pad = [like.new_zeros(1, heads, like.shape[-1])] if n_real < n_tokens else []
    rows = torch.cat([o.to(like.dtype) for _, o in pieces] + pad)
    where = torch.full((n_tokens,), rows.shape[0] - 1, dtype=torch.long, device=like.device)
    where[tokens[real]] = torch.arange(tokens.numel(), device=like.device)[real]
    return rows.index_select(0, where)


def _use_flash(query, backend: str) -> bool:
    flash_ok = (
        query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and _flash_attn_varlen() is not None
    )
    if backend == "flash" and not flash_ok:
        raise RuntimeError(
            "backend='flash' needs a CUDA device, fp16/bf16 tensors and flash-attn "
            "(pip install flash-attn --no-build-isolation; see requirements-gpu.txt)"
        )
    return flash_ok and backend != "sdpa"


def _head_ranges_and_groups(
    query, group_size: int, split: int, attention_mask, cu_seqlens, with_offsets: bool = False
):
    """The head halves (heads ``[0, split)`` unshifted, ``[split, H)`` shifted) as (first head, end, group
    offset), each half's groups as (starts, lengths) lists
    over the flattened tokens (None when every token is padding), and with ``with_offsets`` each group's
    position in its document as a {start: position} dict per half (else None)."""
    batch, heads, seq_len, _ = query.shape
    ranges = [(lo, hi, off) for lo, hi, off in ((0, split, 0), (split, heads, group_size // 2)) if lo < hi]
    if attention_mask is None and cu_seqlens is None:  # one document per row, no padding
        halves = [regular_groups(batch, seq_len, group_size, off) for _, _, off in ranges]
        if not with_offsets:
            return ranges, halves, None
        return ranges, halves, [{s: s % seq_len for s in starts} for starts, _ in halves]
    doc, pos = document_layout(batch, seq_len, attention_mask, cu_seqlens, query.device)
    if not bool((doc >= 0).any()):
        return ranges, None, None
    halves = [groups(doc, pos, group_size, off) for _, _, off in ranges]
    offsets = None
    if with_offsets:
        offsets = [dict(zip(starts.tolist(), pos[starts].tolist())) for starts, _ in halves]
    return ranges, [[x.tolist() for x in half] for half in halves], offsets


def grouped_s2_attention(
    query,
    key,
    value,
    group_size: int,
    *,
    scaling,
    attention_mask,
    cu_seqlens,
    split,
    dropout,
    backend,
    window,
    softcap,
    sink_tokens: int = 0,
    sink_stride: int = 0,
):
    """S2-Attn of :func:`longlora.s2attn.s2_attention`'s contract (arguments checked there, ``window``
    already dropped when it changes nothing) group by group (query heads ``[0, split)``
    unshifted, ``[split, H)`` shifted), with ``sink_tokens`` attention sinks and
    ``sink_stride`` strided keys. Returns (B, H, T, D); padding rows are zero."""
    extra_keys = sink_tokens > 0 or sink_stride > 0
    batch, heads, seq_len, dim = query.shape
    kv_heads = key.shape[1]
    use_flash = _use_flash(query, backend) and not extra_keys  # flash-attn: one key range per group

    n = batch * seq_len
    q = query.transpose(1, 2).reshape(n, heads, dim)  # (B*T, H, D)
    k = key.transpose(1, 2).reshape(n, kv_heads, dim)  # (B*T, H_kv, D)
    v = value.transpose(1, 2).reshape(n, kv_heads, dim)

    ranges, own, offsets = _head_ranges_and_groups(
        query, group_size, split, attention_mask, cu_seqlens, with_offsets=extra_keys
    )
    if own is None:  # nothing but padding
        return query.new_zeros(query.shape)
    shared = ([], [])
    if len(ranges) == 2 and not use_flash:
        # a group both head halves share (a document shorter than G/2) is attended once with every head;
        # it starts its document, so it holds every key it may see already
        shared, own[0], own[1] = split_shared(own[0], own[1])
    call_cost = _CALL_COST_PAIR_HEADS["cuda" if query.is_cuda else "cpu"]  # // heads: pairs per head
    attend = dict(n_rep=heads // kv_heads, scaling=scaling, dropout=dropout, window=window, softcap=softcap)
    if shared[0] and not any(starts for starts, _ in own):
        # every group is shared (all documents shorter than G/2): one pass and one scatter over all heads
        out = _scatter_back(
            _attend_pass(q, k, v, plan_batches(*shared, call_cost // heads), (0, heads), **attend),
            n,
            heads,
            q,
        )
        return out.reshape(batch, seq_len, heads, dim).transpose(1, 2)
    pieces = [[] for _ in ranges]  # per head range: (token ids, output) covering every real token once
    widths = [hi - lo for lo, hi, _ in ranges]
    if shared[0]:
        for tokens, o in _attend_pass(
            q, k, v, plan_batches(*shared, call_cost // heads), (0, heads), **attend
        ):
            for piece, o_half in zip(pieces, o.split(widths, dim=1)):
                piece.append((tokens, o_half))
    # each half's query heads by one split (backward: one concatenation, not a zero-filled copy per half)
    q_halves = q.split(widths, dim=1) if len(ranges) == 2 else [q]
    for half, (piece, (lo, hi, _), (starts, lengths), qh) in enumerate(zip(pieces, ranges, own, q_halves)):
        if not starts:  # every group of this half is shared
            continue
        if use_flash:
            piece.append(_attend_flash(q, k, v, starts, lengths, (lo, hi), **attend))
            continue
        kv = slice(lo // attend["n_rep"], (hi - 1) // attend["n_rep"] + 1)
        kh, vh = (k, v) if kv == slice(0, kv_heads) else (k[:, kv], v[:, kv])
        cost = call_cost // (hi - lo)
        if not extra_keys:
            piece.extend(_attend_pass(qh, kh, vh, plan_batches(starts, lengths, cost), (lo, hi), **attend))
            continue
        # a document's first group holds its extra keys: plain S2; every later group gets them in front,
        # batched with the groups at the same place in their documents (the same extra keys: none padded,
        # none masked, so without a window SDPA's causal kernel serves them; see _attend_batch)
        at = offsets[half]
        first = [(s, n) for s, n in zip(starts, lengths) if at[s] == 0]
        later = {}
        for start, length in zip(starts, lengths):
            if at[start] > 0:
                later.setdefault(at[start], []).append((start, length))
        extra = Sinks(sink_tokens, at, sink_stride)
        for part, sinks in ((first, None), *((part, extra) for part in later.values())):
            if part:
                batches = plan_batches([s for s, _ in part], [n for _, n in part], cost)
                piece.extend(_attend_pass(qh, kh, vh, batches, (lo, hi), **attend, sinks=sinks))
    out = torch.cat([_scatter_back(p, n, hi - lo, q) for p, (lo, hi, _) in zip(pieces, ranges)], dim=1)
    return out.reshape(batch, seq_len, heads, dim).transpose(1, 2)  # padding tokens are zero
