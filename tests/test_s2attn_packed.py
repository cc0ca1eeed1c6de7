"""S2-Attn on packed and ragged rows: parity with the slow reference, no leaks across tokens or documents,
and the batching plan (every group attended exactly once, padding waste bounded)."""

from __future__ import annotations

import pytest
import torch
from reference import s2_attention_masked_ref, s2_attention_ref

from longlora.s2attn import s2_attention
from longlora.s2groups import document_layout, groups, plan_batches, regular_groups, split_shared


def _packed(lengths, heads=9, kv_heads=3, dim=8, seed=0, dtype=torch.float32, requires_grad=False):
    """One packed row of the given document lengths: q (1, H, T, D), k/v (1, H_kv, T, D), cu_seqlens, docs."""
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, generator=g).to(dtype)
    k = torch.randn(1, kv_heads, total, dim, generator=g).to(dtype)
    v = torch.randn(1, kv_heads, total, dim, generator=g).to(dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    bounds = torch.tensor([0, *lengths]).cumsum(0)
    docs = [[(int(a), n) for a, n in zip(bounds[:-1], lengths)]]
    return q, k, v, bounds, docs


def _assert_close(actual, expected, atol, what=""):
    diff = (actual.double() - expected.double()).abs()
    assert diff.max().item() <= atol, f"{what} max diff {diff.max().item():.3e} mean {diff.mean().item():.3e}"


MIXES = {
    # lengths, G
    "many-short": ([5, 3, 12, 1, 7, 9, 2, 11, 4, 6, 8, 10, 3, 5, 1, 2], 16),  # all shorter than G/2
    "long+tiny": ([70] + [1, 4, 2, 6, 3, 5, 2, 1, 6, 4, 3, 2], 16),  # one long document + tiny ones
    "ragged": ([23, 8, 31, 16, 17, 4], 16),  # exact multiples, tails, half-groups of equal length
}


def test_masked_reference_equals_the_loop_reference():
    # the one-mask-per-head-half reference used below is checked against the per-token loop once
    lengths, group = [9, 1, 14, 6], 8
    q, k, v, _, docs = _packed(lengths, heads=6, kv_heads=2, seed=5)
    for window in (None, 3):
        _assert_close(
            s2_attention_masked_ref(q, k, v, group, docs=docs[0], window=window),
            s2_attention_ref(q, k, v, group, docs=docs, window=window),
            1e-6,
            f"window {window}",
        )


@pytest.mark.parametrize("mix", MIXES, ids=str)
def test_packed_row_matches_reference_forward_and_gradients(mix):
    lengths, group = MIXES[mix]
    q, k, v, cu, docs = _packed(lengths, requires_grad=True)
    out = s2_attention(q, k, v, group, cu_seqlens=cu)
    ref = s2_attention_masked_ref(q, k, v, group, docs=docs[0])
    _assert_close(out, ref, 1e-5, "forward")
    grad = torch.randn_like(out)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    ):
        _assert_close(a, b, 1e-4, f"d{name}")


@pytest.mark.parametrize("mix", ["many-short", "long+tiny"])
def test_packed_bf16_error_within_twice_naive_bf16_error(mix):
    # flash-attention's rule, forward and gradients: error of ours in bf16 at most 2x the error of a naive
    # implementation in the same precision, both measured against the fp64 reference on the same inputs.
    lengths, group = MIXES[mix]
    q, k, v, cu, docs = _packed(lengths, dim=16, seed=1, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).bfloat16()
    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    exact = s2_attention_masked_ref(*leaves, group, docs=docs[0])
    exact_grads = torch.autograd.grad(exact, leaves, grad.double())
    ours = s2_attention(q, k, v, group, cu_seqlens=cu)
    naive = s2_attention_masked_ref(q, k, v, group, docs=docs[0], upcast=False)  # plain bf16 attention
    pairs = [("forward", ours, naive, exact)]
    ours_g = torch.autograd.grad(ours, (q, k, v), grad)
    naive_g = torch.autograd.grad(naive, (q, k, v), grad)
    pairs += [(f"d{n}", a, b, c) for n, a, b, c in zip("qkv", ours_g, naive_g, exact_grads)]
    for what, a, b, exact_t in pairs:
        err_ours = (a.double() - exact_t).abs().max().item()
        err_naive = (b.double() - exact_t).abs().max().item()
        assert err_ours <= 2 * err_naive + 1e-3, (what, err_ours, err_naive)


def test_packed_row_equals_documents_one_by_one_with_padding_and_batch_rows():
    # two rows of packed documents given as one cu_seqlens over the B*T tokens (the filler at the end of row
    # 0 is a document of its own, as flash-attn's convention has it)
    lengths, group, seq_len = [9, 30, 4], 12, 48
    q, k, v, _, _ = _packed(lengths, seed=3)
    rows = torch.zeros(2, 9, seq_len, 8), torch.zeros(2, 3, seq_len, 8), torch.zeros(2, 3, seq_len, 8)
    for dst, src in zip(rows, (q, k, v)):
        dst[0, :, :43] = src[0]
        dst[1, :, :34] = src[0, :, 9:]  # row 1: the last two documents, then padding
    cu = torch.tensor([0, 9, 39, 43, 48, 48 + 30, 48 + 34])
    out = s2_attention(*rows, group, cu_seqlens=cu)
    bounds = [(0, 9), (9, 30), (39, 4)]
    for start, n in bounds:
        alone = s2_attention(
            q[:, :, start : start + n], k[:, :, start : start + n], v[:, :, start : start + n], group
        )
        _assert_close(out[0:1, :, start : start + n], alone, 1e-6, f"row 0 doc at {start}")
        if start:
            _assert_close(out[1:2, :, start - 9 : start - 9 + n], alone, 1e-6, f"row 1 doc at {start - 9}")


def test_no_leak_from_later_tokens_or_other_documents():
    lengths, group = MIXES["long+tiny"]
    q, k, v, cu, docs = _packed(lengths, seed=4)
    base = s2_attention(q, k, v, group, cu_seqlens=cu)
    total = q.shape[2]
    for t in (0, 9, 40, 69, 75, total - 2):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 5
        out = s2_attention(q2, k2, v2, group, cu_seqlens=cu)
        _assert_close(out[:, :, : t + 1], base[:, :, : t + 1], 0, f"positions <= {t}")
    # changing one tiny document changes nothing outside it
    a, n = docs[0][3]
    k2, v2 = k.clone(), v.clone()
    k2[:, :, a : a + n] += 3.0
    v2[:, :, a : a + n] += 3.0
    out = s2_attention(q, k2, v2, group, cu_seqlens=cu)
    outside = torch.ones(total, dtype=torch.bool)
    outside[a : a + n] = False
    _assert_close(out[:, :, outside], base[:, :, outside], 0, "other documents")
    assert (out[:, :, a : a + n] - base[:, :, a : a + n]).abs().max() > 1e-3


@pytest.mark.parametrize("mix", MIXES, ids=str)
@pytest.mark.parametrize("call_cost", [0, 100, 10**9])
def test_plan_attends_every_group_exactly_once_with_bounded_padding(mix, call_cost):
    lengths, group = MIXES[mix]
    total = sum(lengths)
    doc, pos = document_layout(1, total, None, torch.tensor([0, *lengths]).cumsum(0), "cpu")
    halves = [[x.tolist() for x in groups(doc, pos, group, off)] for off in (0, group // 2)]
    shared, own0, own1 = split_shared(*halves)
    for wanted, parts in ((halves[0], (shared, own0)), (halves[1], (shared, own1))):
        attended = []
        for starts, lens in parts:
            for b in plan_batches(starts, lens, call_cost):
                if b.first is not None:
                    attended += [(b.first + i * b.length, b.length) for i in range(b.n)]
                else:
                    assert b.length == max(b.lengths) and b.n == len(b.starts)
                    # padding a member to the bucket's length wastes at most call_cost causal pairs
                    assert all((b.length**2 - n**2) // 2 <= call_cost for n in b.lengths)
                    attended += list(zip(b.starts, b.lengths))
        assert sorted(attended) == sorted(zip(*wanted))


def test_tiny_documents_share_one_call_and_long_tails_are_not_padded():
    # 170 documents of 10-60 tokens: one gathered batch; a 3,856-token tail and a 2,048-token half-group
    # (the 10,000-token document at G = 4,096) stay apart
    tiny = [(10_000 + 35 * i, 10 + i % 51) for i in range(170)]
    starts = [0, 2048, 6144] + [s for s, _ in tiny]
    lens = [2048, 4096, 3856] + [n for _, n in tiny]
    plan = plan_batches(starts, lens, (1 << 15) // 9)  # the CPU call cost spread over 9 heads
    assert len(plan) == 4
    assert sorted((b.length, b.n) for b in plan) == [(60, 170), (2048, 1), (3856, 1), (4096, 1)]


def test_large_groups_are_attended_in_place_not_copied():
    # the shifted half of one 16k document at G = 4,096: two 2,048-token edge groups of equal length must
    # not be gathered into one padded copy (S2 would then peak above full attention); each is a view
    starts, lens = [0, 2048, 6144, 10240, 14336], [2048, 4096, 4096, 4096, 2048]
    plan = plan_batches(starts, lens, (1 << 15) // 5)
    assert all(b.first is not None for b in plan)
    assert sorted((b.first, b.n, b.length) for b in plan) == [(0, 1, 2048), (2048, 3, 4096), (14336, 1, 2048)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("window", [None, 5])
def test_cuda_packed_row_matches_reference(window):
    # the same bucketing on CUDA (its larger per-call cost merges more groups), with and without a window
    lengths, group = MIXES["long+tiny"]
    q, k, v, cu, docs = _packed(lengths, seed=6)
    leaves = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    out = s2_attention(*leaves, group, cu_seqlens=cu.cuda(), sliding_window=window, backend="sdpa")
    ref_leaves = [x.double().requires_grad_(True) for x in (q, k, v)]
    ref = s2_attention_masked_ref(*ref_leaves, group, docs=docs[0], window=window)
    _assert_close(out.cpu(), ref, 1e-4, "forward")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    got = torch.autograd.grad(out, leaves, grad.cuda())
    want = torch.autograd.grad(ref, ref_leaves, grad.double())
    for name, a, b in zip("qkv", got, want):
        _assert_close(a.cpu(), b, 1e-3, f"d{name}")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq_len", [1, 5, 64, 100, 257])
@pytest.mark.parametrize("group", [2, 7, 16, 64, 300])
def test_regular_groups_equal_the_per_token_layout(batch, seq_len, group):
    # the arithmetic shortcut for rows without a mask equals groups() over document_layout, both halves
    doc, pos = document_layout(batch, seq_len, None, None, "cpu")
    for offset in (0, group // 2):
        expected = [x.tolist() for x in groups(doc, pos, group, offset)]
        assert list(regular_groups(batch, seq_len, group, offset)) == expected


def test_a_plain_row_builds_no_per_token_index_tensors():
    # every layer of a step runs this: with no mask the layout is arithmetic, groups of G/2 tokens and more
    # are attended in place and the output needs no reordering, so nothing of the row's length but the
    # activations themselves is allocated (a 24k row at G = T/4, so that the shifted edge groups are large)
    from torch.utils._python_dispatch import TorchDispatchMode

    t = 24576

    class Watch(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.index_ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for x in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(x, torch.Tensor) and not x.is_floating_point() and x.numel() >= t:
                    self.index_ops.append(str(func))
            return out

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, t, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(1, 2, t, 8, generator=g, requires_grad=True) for _ in range(2))
    with Watch() as watch:
        s2_attention(q, k, v, t // 4).sum().backward()
    assert watch.index_ops == []
