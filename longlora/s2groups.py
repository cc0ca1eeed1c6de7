"""Token layout for S2-Attn: which document and group every token belongs to, and how groups are batched.

:func:`document_layout` reads padding/packing from a mask or ``cu_seqlens``; :func:`groups` turns it into
contiguous groups (LongLoRA section 3.2: groups of G tokens, or shifted by G/2, counted from each document's
first token); :func:`plan_batches` decides how the groups go to SDPA. Pure index bookkeeping, no attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Batch",
    "cu_seqlens_from_position_ids",
    "document_layout",
    "groups",
    "plan_batches",
    "regular_groups",
    "split_shared",
]


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Packed documents of rows ``(B, T)`` from their restarting ``position_ids``: a document starts at every
    row start and wherever a position is not the previous one plus 1 (the rule of transformers'
    ``find_packed_sequence_indices``). Returns ``cu_seqlens`` ``(n_docs + 1,)`` over the flattened ``B*T``
    tokens, or None when every row is one document."""
    batch, seq_len = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)  # (B, T)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    if not bool(starts[:, 1:].any()):
        return None
    first = starts.reshape(-1).nonzero().squeeze(1)  # (n_docs,)
    return torch.cat([first, first.new_tensor([batch * seq_len])])


def document_layout(batch: int, seq_len: int, attention_mask, cu_seqlens, device):
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


def groups(doc, pos, group_size: int, offset: int):
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


def regular_groups(batch: int, seq_len: int, group_size: int, offset: int) -> tuple[list[int], list[int]]:
    """:func:`groups` for rows without padding, one document each (no mask, no ``cu_seqlens``), as lists,
    computed from the arithmetic instead of from per-token tensors: every layer of a step asks for the
    same layout, and index tensors of the row's length would sit beside the attention's activations."""
    first = offset % group_size or group_size  # group boundaries at positions = offset (mod G), inside (0, T)
    cuts = [0, *range(first, seq_len, group_size), seq_len]
    starts, lengths = [], []
    for row in range(batch):
        starts += [row * seq_len + a for a in cuts[:-1]]
        lengths += [b - a for a, b in zip(cuts[:-1], cuts[1:])]
    return starts, lengths


# ----------------------------------------------------------------------------- batching groups for SDPA


@dataclass(frozen=True)
class Batch:
    """Groups attended in one SDPA call. ``first`` set: ``n`` contiguous groups of ``length`` tokens starting
    at flat token ``first`` (a free view of q/k/v). Else ``starts``/``lengths`` list groups gathered into an
    ``(n, length)`` right-padded batch (``length`` = the longest)."""

    length: int
    n: int
    first: int | None = None
    starts: tuple[int, ...] = ()
    lengths: tuple[int, ...] = ()


def split_shared(a: tuple[list[int], list[int]], b: tuple[list[int], list[int]]):
    """Groups present in both group lists (same start and length: a document shorter than G/2 is one group
    for both head halves) and what is left of each. Lists of ``(starts, lengths)``, each sorted by start."""
    pairs_a, pairs_b = set(zip(*a)), set(zip(*b))
    both = pairs_a & pairs_b

    def unzip(pairs):
        pairs = sorted(pairs)
        return [s for s, _ in pairs], [n for _, n in pairs]

    return unzip(both), unzip(pairs_a - both), unzip(pairs_b - both)


# A group with this many calls' worth of causal pairs gets a call of its own, on a view. Batching groups
# into one call pays more on a CPU than the call count suggests (a 4k row of ~700-token documents ran 20%
# faster bucketed than with one call per group at a threshold of 16), so only groups of about 2k tokens
# and more (CPU call cost, 4-5 heads) go alone, where a padded copy would cost memory at the step's peak.
LARGE_GROUP_CALLS = 256


def plan_batches(starts: list[int], lengths: list[int], call_cost: int) -> list[Batch]:
    """Batches of groups for SDPA with no padding waste beyond one call's fixed cost per group.

    A run of contiguous equal-length groups is one batch (a view, nothing copied). The other groups are
    sorted by length and bucketed: a group joins the current bucket when padding it to the bucket's length
    costs at most ``call_cost`` extra query-key pairs, i.e. less than the fixed cost of one more SDPA call
    (so 170 packed documents of 10-60 tokens take one call, and a 3,856-token tail never pads a 2,048 one).
    A group whose own attention is worth ``LARGE_GROUP_CALLS`` calls or more is never bucketed: it is one call
    on a view (a copy of it would cost memory and time, one more call almost nothing).
    """
    runs, single, i = [], [], 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and lengths[j] == lengths[i] and starts[j] == starts[j - 1] + lengths[i]:
            j += 1
        (runs if j - i >= 2 else single).append((starts[i], j - i, lengths[i]))
        i = j
    plan = [Batch(length=n_tok, n=n, first=first) for first, n, n_tok in runs]
    large = [r for r in single if r[2] * r[2] // 2 >= LARGE_GROUP_CALLS * call_cost]
    plan += [Batch(length=n_tok, n=1, first=first) for first, _, n_tok in large]
    single = [r for r in single if r[2] * r[2] // 2 < LARGE_GROUP_CALLS * call_cost]
    single.sort(key=lambda r: -r[2])
    bucket: list[tuple[int, int, int]] = []
    for group in single + [None]:
        top = bucket[0][2] if bucket else 0
        # causal pairs wasted by padding a group of length l to the bucket's length L: (L^2 - l^2) / 2
        if group is not None and bucket and (top * top - group[2] * group[2]) // 2 <= call_cost:
            bucket.append(group)
            continue
        if len(bucket) == 1:
            plan.append(Batch(length=top, n=1, first=bucket[0][0]))
        elif bucket:
            plan.append(
                Batch(
                    length=top,
                    n=len(bucket),
                    starts=tuple(g[0] for g in bucket),
                    lengths=tuple(g[2] for g in bucket),
                )
            )
        bucket = [group]
    return plan
