"""S2-Attn through one flex_attention call (the CUDA path for packed rows): the same output as the slow
reference on packed, padded, windowed, soft-capped and GQA rows. On a CPU torch runs flex_attention forward
only, so gradients are checked on CUDA alone."""

from __future__ import annotations

import pytest
import torch
from reference import s2_attention_masked_ref, s2_attention_ref

from longlora import s2flex
from longlora.s2attn import s2_attention

pytestmark = pytest.mark.skipif(not s2flex.flex_available(), reason="torch has no flex_attention")

MIXES = {
    "many-short": ([5, 3, 12, 1, 7, 9, 2, 11, 4, 6, 8, 10, 3, 5, 1, 2], 16),
    "long+tiny": ([70] + [1, 4, 2, 6, 3, 5, 2, 1, 6, 4, 3, 2], 16),
    "ragged": ([23, 8, 31, 16, 17, 4], 16),
    "past-one-tile": ([150, 40, 77, 9], 64),  # more than one 128-token tile of the block mask
}


def _row(lengths, heads=9, kv_heads=3, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, generator=g)
    k = torch.randn(1, kv_heads, total, dim, generator=g)
    v = torch.randn(1, kv_heads, total, dim, generator=g)
    bounds = torch.tensor([0, *lengths]).cumsum(0)
    return q, k, v, bounds, [(int(a), n) for a, n in zip(bounds[:-1], lengths)]


def _close(a, b, atol, what=""):
    diff = (a.double() - b.double()).abs().max().item()
    assert diff <= atol, f"{what} max diff {diff:.3e}"


@pytest.mark.parametrize("mix", MIXES, ids=str)
@pytest.mark.parametrize("window", [None, 5])
def test_packed_row_matches_the_reference(mix, window):
    lengths, group = MIXES[mix]
    q, k, v, cu, docs = _row(lengths)
    out = s2_attention(q, k, v, group, cu_seqlens=cu, sliding_window=window, backend="flex")
    _close(out, s2_attention_masked_ref(q, k, v, group, docs=docs, window=window), 1e-5, mix)


@pytest.mark.parametrize("heads,kv_heads", [(7, 7), (9, 3), (4, 1), (1, 1)])
@pytest.mark.parametrize("shift", [True, False])
def test_plain_rows_any_heads_with_and_without_shift(heads, kv_heads, shift):
    q, k, v, _, _ = _row([50], heads=heads, kv_heads=kv_heads, seed=3)
    q2, k2, v2, _, _ = _row([50], heads=heads, kv_heads=kv_heads, seed=4)
    q, k, v = torch.cat([q, q2]), torch.cat([k, k2]), torch.cat([v, v2])  # two rows
    out = s2_attention(q, k, v, 12, shift=shift, backend="flex")
    _close(out, s2_attention_ref(q, k, v, 12, shift=shift), 1e-5)


def test_padded_rows_equal_sequences_one_by_one_and_padding_is_zero():
    q, k, v, _, _ = _row([40], seed=5)
    q, k, v = (torch.cat([x, x]) for x in (q, k, v))
    keep = torch.ones(2, 40, dtype=torch.long)
    keep[1, 29:] = 0  # second row: 29 real tokens, right padding
    out = s2_attention(q, k, v, 8, attention_mask=keep, backend="flex")
    _close(out[0], s2_attention_ref(q[:1], k[:1], v[:1], 8)[0], 1e-5, "row 0")
    alone = s2_attention_ref(q[1:, :, :29], k[1:, :, :29], v[1:, :, :29], 8)[0]
    _close(out[1, :, :29], alone, 1e-5, "row 1")
    assert out[1, :, 29:].abs().max().item() == 0


def test_softcap_matches_the_group_by_group_path():
    q, k, v, cu, _ = _row([30, 11, 23], seed=6)
    q = q * 4  # large scores, so that the cap matters
    flex = s2_attention(q, k, v, 8, cu_seqlens=cu, softcap=2.0, backend="flex")
    sdpa = s2_attention(q, k, v, 8, cu_seqlens=cu, softcap=2.0, backend="sdpa")
    _close(flex, sdpa, 1e-5)
    assert (flex - s2_attention(q, k, v, 8, cu_seqlens=cu, backend="flex")).abs().max() > 1e-2


def test_no_leak_from_later_tokens_or_other_documents():
    q, k, v, cu, _ = _row([20, 30, 14], seed=7)
    base = s2_attention(q, k, v, 8, cu_seqlens=cu, backend="flex")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 35:], v2[:, :, 35:] = torch.randn_like(k2[:, :, 35:]), torch.randn_like(v2[:, :, 35:])
    k2[:, :, :20], v2[:, :, :20] = torch.randn_like(k2[:, :, :20]), torch.randn_like(v2[:, :, :20])
    changed = s2_attention(q, k2, v2, 8, cu_seqlens=cu, backend="flex")
    _close(changed[:, :, 20:35], base[:, :, 20:35], 0, "tokens 20-34 of document 2")
    assert (changed[:, :, 35:] - base[:, :, 35:]).abs().max() > 0


def test_the_block_mask_is_built_once_per_layout():
    q, k, v, cu, _ = _row([30, 50], seed=8)
    s2_attention(q, k, v, 16, cu_seqlens=cu, backend="flex")
    first = s2flex._cache["mask"][3]
    s2_attention(q, k, v, 16, cu_seqlens=cu.clone(), backend="flex")  # next layer: same layout
    assert s2flex._cache["mask"][3] is first
    s2_attention(q, k, v, 16, cu_seqlens=torch.tensor([0, 31, 80]), backend="flex")
    assert s2flex._cache["mask"][3] is not first
    mask = s2flex._cache["mask"][3]
    assert mask.kv_num_blocks.shape[:2] == (1, 9)  # one entry per head, from two patterns


def test_flex_refuses_what_it_cannot_do():
    q, k, v, cu, _ = _row([30, 20])
    with pytest.raises(ValueError, match="dropout"):
        s2_attention(q, k, v, 8, cu_seqlens=cu, dropout=0.1, backend="flex")
    leaf = q.clone().requires_grad_(True)
    if not q.is_cuda:
        with pytest.raises(RuntimeError, match="no backward on a CPU"):
            s2_attention(leaf, k, v, 8, cu_seqlens=cu, backend="flex")
    # auto does not pick flex: it trains on a CPU
    out = s2_attention(leaf, k, v, 8, cu_seqlens=cu)
    out.sum().backward()
    assert leaf.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mix", MIXES, ids=str)
@pytest.mark.parametrize("window", [None, 5])
def test_cuda_forward_and_gradients_match_the_reference(mix, window):
    lengths, group = MIXES[mix]
    q, k, v, cu, docs = _row(lengths, seed=9)
    leaves = [x.cuda().requires_grad_(True) for x in (q, k, v)]
    out = s2_attention(*leaves, group, cu_seqlens=cu.cuda(), sliding_window=window, backend="flex")
    ref_leaves = [x.double().requires_grad_(True) for x in (q, k, v)]
    ref = s2_attention_masked_ref(*ref_leaves, group, docs=docs, window=window)
    _close(out.cpu(), ref, 1e-4, "forward")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    got = torch.autograd.grad(out, leaves, grad.cuda())
    want = torch.autograd.grad(ref, ref_leaves, grad.double())
    for name, a, b in zip("qkv", got, want):
        _close(a.cpu(), b, 1e-3, f"d{name}")


def test_the_model_backend_runs_the_flex_kernel_when_asked():
    """enable_s2_attention(backend="flex") reaches the kernel through the transformers backend: the same
    logits as the group-by-group kernel (forward only on a CPU; S2 kept in eval for the comparison)."""
    from conftest import tiny_model

    from longlora.s2attn import enable_s2_attention

    torch.manual_seed(0)
    ids = torch.randint(6, 100, (2, 40))
    logits = {}
    for backend in ("sdpa", "flex"):
        model = tiny_model("llama")
        enable_s2_attention(model, group_size=8, in_eval=True, backend=backend)
        assert model.config.s2_backend == backend
        with torch.no_grad():
            logits[backend] = model.eval()(ids).logits
    full = tiny_model("llama").eval()(ids).logits.detach()
    _close(logits["flex"], logits["sdpa"], 1e-4, "flex vs sdpa")
    assert (logits["flex"] - full).abs().max() > 1e-3  # S2 was on: not full attention
    with pytest.raises(ValueError, match="s2 backend must be one of"):
        enable_s2_attention(tiny_model("llama"), backend="fast")
