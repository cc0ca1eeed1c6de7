"""Slow, obviously-correct reference implementations used by the tests."""

from __future__ import annotations

import math

import torch


def s2_groups_ref(doc_len: int, group_size: int, shifted: bool) -> list[range]:
    """Group ranges of one document, written straight from the definition (LongLoRA section 3.2)."""
    if not shifted:
        return [range(s, min(s + group_size, doc_len)) for s in range(0, doc_len, group_size)]
    half = group_size // 2
    groups = [range(0, min(half, doc_len))]
    groups += [range(s, min(s + group_size, doc_len)) for s in range(half, doc_len, group_size)]
    return [g for g in groups if len(g)]


def s2_attention_ref(
    query, key, value, group_size, *, docs=None, scaling=None, shift=True, window=None, sinks=0, stride=0
):
    """Per row, per document, per head, per group: plain masked softmax attention in fp64.

    query (B, H, T, D), key/value (B, H_kv, T, D). ``docs``: per batch row, a list of (start, length)
    documents (default: the whole row). Tokens outside every document get zeros. ``window``: a sliding
    window, query t sees key s only if t - s < window (transformers' convention). ``sinks``: query t also
    sees the document's first ``sinks`` tokens s <= t (S2 with attention sinks), and with ``stride`` every
    document token s <= t with s % stride == stride - 1 (strided keys), each key once.
    """
    batch, heads, seq_len, dim = query.shape
    n_rep = heads // key.shape[1]
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(dim)
    q, k, v = query.double(), key.double(), value.double()
    out = torch.zeros_like(q)
    docs = docs or [[(0, seq_len)] for _ in range(batch)]
    split = heads // 2 if shift else heads
    for b in range(batch):
        for start, length in docs[b]:
            for h in range(heads):
                kv = h // n_rep
                for g in s2_groups_ref(length, group_size, shifted=h >= split):
                    for t in g:
                        i = start + t
                        seen = set(g) | set(range(min(sinks, length)))  # a set: no key twice
                        if stride:
                            seen |= set(range(stride - 1, length, stride))
                        keys = [
                            start + s for s in sorted(seen) if s <= t and (window is None or t - s < window)
                        ]
                        scores = torch.stack([(q[b, h, i] * k[b, kv, j]).sum() * scaling for j in keys])
                        p = torch.softmax(scores, dim=0)
                        out[b, h, i] = sum(p[n] * v[b, kv, j] for n, j in enumerate(keys))
    return out.to(query.dtype)


def naive_roll_s2(query, key, value, group_size):
    """The paper's Algorithm 1 (roll by -G/2, reshape into groups, explicit softmax) — it leaks the end of
    the sequence into the first tokens; kept for the benchmark and the leak test. Needs T % G == 0."""
    batch, heads, seq_len, dim = query.shape
    n_rep = heads // key.shape[1]
    key = key.repeat_interleave(n_rep, dim=1)
    value = value.repeat_interleave(n_rep, dim=1)
    half = heads // 2

    def shift(x):
        return torch.cat([x[:, :half], x[:, half:].roll(-group_size // 2, dims=2)], dim=1)

    q, k, v = shift(query), shift(key), shift(value)
    n_groups = seq_len // group_size

    def split(x):  # (B, H, T, D) -> (B, H, n, G, D)
        return x.reshape(batch, heads, n_groups, group_size, dim)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim)
    causal = torch.ones(group_size, group_size, dtype=torch.bool, device=query.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = (scores.softmax(-1) @ split(v)).reshape(batch, heads, seq_len, dim)
    return torch.cat([out[:, :half], out[:, half:].roll(group_size // 2, dims=2)], dim=1)


def s2_mask_ref(seq_len, group_size, *, docs=None, shifted=False, window=None, sinks=0, stride=0):
    """(T, T) bool: query i may see key j, from the same definition as :func:`s2_attention_ref` (same
    document, same group or j among the document's first ``sinks`` tokens or j's document position p has
    p % stride == stride - 1, j <= i, and i - j < window when a window is given). ``docs``: (start, length)
    pairs of one row (default: the whole row)."""
    allowed = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for start, length in docs or [(0, seq_len)]:
        for g in s2_groups_ref(length, group_size, shifted):
            idx = torch.tensor([start + t for t in g])
            allowed[idx[:, None], idx[None, :]] = True
        doc = slice(start, start + length)
        allowed[doc, start : start + min(sinks, length)] = True
        if stride:
            allowed[doc, start + stride - 1 : start + length : stride] = True
    i = torch.arange(seq_len)
    allowed &= i[:, None] >= i[None, :]
    if window is not None:
        allowed &= i[:, None] - i[None, :] < window
    return allowed


def s2_attention_masked_ref(
    query, key, value, group_size, *, docs=None, shift=True, window=None, upcast=True, sinks=0, stride=0
):
    """S2 as one masked softmax attention per head half, for batch 1: q (1, H, T, D), k/v (1, H_kv, T, D).

    ``upcast=True`` computes in fp64 (a fast stand-in for :func:`s2_attention_ref`); ``upcast=False``
    computes op by op in the input precision, the "naive same-precision implementation" of flash-attn's
    bf16 rule (its ``attention_ref(upcast=False)``). Tokens outside every document get zeros."""
    heads, seq_len, dim = query.shape[1], query.shape[2], query.shape[3]
    n_rep = heads // key.shape[1]
    dtype = torch.float64 if upcast else query.dtype
    q, k, v = (
        x.to(dtype) for x in (query, key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1))
    )
    split = heads // 2 if shift else heads
    masks = [
        s2_mask_ref(seq_len, group_size, docs=docs, shifted=s, window=window, sinks=sinks, stride=stride)
        for s in (False, True)
    ]
    mask = torch.stack([masks[int(h >= split)] for h in range(heads)])[None]  # (1, H, T, T)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(dim))
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)  # rows of padding: all -inf
    return (p @ v).to(query.dtype)
