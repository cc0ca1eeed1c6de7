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


def s2_attention_ref(query, key, value, group_size, *, docs=None, scaling=None, shift=True):
    """Per row, per document, per head, per group: plain masked softmax attention in fp64.

    query (B, H, T, D), key/value (B, H_kv, T, D). ``docs``: per batch row, a list of (start, length)
    documents (default: the whole row). Tokens outside every document get zeros.
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
                        keys = [start + s for s in g if s <= t]
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
