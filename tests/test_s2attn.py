"""S2-Attn: parity with a slow reference, causality, padding/packing, and the transformers backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from reference import naive_roll_s2, s2_attention_ref, s2_groups_ref

import longlora  # noqa: F401  (registers the backend)
from longlora.s2attn import (
    disable_s2_attention,
    enable_s2_attention,
    group_size_for,
    s2_attention,
)
from longlora.s2groups import document_layout, groups


def _qkv(batch, heads, kv_heads, seq_len, dim=8, seed=0, requires_grad=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_len, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, seq_len, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, seq_len, dim, generator=g, dtype=dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def _assert_close(actual, expected, atol=1e-5, what=""):
    diff = (actual - expected).abs()
    assert diff.max().item() <= atol, f"{what} max diff {diff.max().item():.3e} mean {diff.mean().item():.3e}"


SHAPES = [
    # (B, H, H_kv, T, G)
    (1, 6, 2, 32, 8),  # T divisible by G, GQA
    (2, 9, 3, 37, 10),  # the default model's head layout, T % G != 0, odd H
    (1, 5, 5, 23, 6),  # odd H, MHA
    (2, 4, 1, 7, 16),  # one group shorter than G (MQA)
    (1, 8, 2, 50, 5),  # odd G: shift G//2 = 2
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}kv{}T{}G{}".format(*s))
def test_forward_and_gradients_match_reference(shape):
    batch, heads, kv_heads, seq_len, group = shape
    q, k, v = _qkv(batch, heads, kv_heads, seq_len, requires_grad=True)
    out = s2_attention(q, k, v, group)
    ref = s2_attention_ref(q, k, v, group)
    _assert_close(out, ref, what="forward")

    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(ref, (q, k, v), grad_out)
    for name, a, b in zip("qkv", got, want):
        _assert_close(a, b, atol=1e-4, what=f"d{name}")


def test_short_attention_without_shift_matches_reference():
    q, k, v = _qkv(2, 6, 2, 29, seed=1)
    _assert_close(s2_attention(q, k, v, 8, shift=False), s2_attention_ref(q, k, v, 8, shift=False))


def test_bf16_error_within_twice_naive_bf16_error():
    # flash-attention's rule: error of the bf16 kernel at most 2x that of a naive same-precision version.
    q, k, v = _qkv(1, 6, 2, 64, dim=16, seed=2)
    ref = s2_attention_ref(q, k, v, 16).float()
    ours = s2_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 16).float()
    naive = s2_attention_ref(q.bfloat16(), k.bfloat16(), v.bfloat16(), 16).float()
    err_ours = (ours - ref).abs().max().item()
    err_naive = (naive - ref).abs().max().item()
    assert err_ours <= 2 * err_naive + 1e-3, (err_ours, err_naive)


def test_mixed_precision_autocast_trains_like_the_reference():
    """Under CPU/GPU autocast a Llama layer hands S2 fp32 q/k (RoPE in fp32) and a bf16 v; SDPA answers in
    bf16. Every code path (equal-group runs and the gathered leftovers) must accept that and agree with the
    reference under the same autocast."""
    q, k, v = _qkv(2, 6, 2, 37, dim=16, seed=3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vb = v.bfloat16()
        out = s2_attention(q, k, vb, 8)  # T % G != 0: runs and leftovers both used
        ref = s2_attention_ref(q, k, vb, 8)
    _assert_close(out.float(), ref.float(), atol=3e-2, what="autocast forward")
    out.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_group_ranges_follow_the_definition():
    # G=8 over T=21: unshifted [0,8) [8,16) [16,21); shifted [0,4) [4,12) [12,20) [20,21)
    doc, pos = document_layout(1, 21, None, None, "cpu")
    for offset, shifted in ((0, False), (4, True)):
        starts, lengths = groups(doc, pos, 8, offset)
        got = [list(range(s, s + n)) for s, n in zip(starts.tolist(), lengths.tolist())]
        assert got == [list(r) for r in s2_groups_ref(21, 8, shifted)]


def test_every_token_is_in_exactly_one_group_shift_unshift_identity():
    # gather into groups + scatter back must be a permutation: an attention that returns each token's own
    # value gives back the input. One-hot q = k with a huge scale makes softmax pick the token itself.
    seq_len, heads = 37, 6
    eye = torch.eye(seq_len) * 30.0  # (T, D=T)
    q = eye.expand(1, heads, seq_len, seq_len).clone()
    k = eye.expand(1, 2, seq_len, seq_len).clone()
    v = torch.randn(1, 2, seq_len, seq_len)
    out = s2_attention(q, k, v, 10)
    _assert_close(out, v.repeat_interleave(3, dim=1), atol=1e-4, what="identity attention")


def test_one_group_without_shift_is_sdpa_causal():
    q, k, v = _qkv(2, 6, 2, 24)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    _assert_close(s2_attention(q, k, v, 24, shift=False), want, what="G=T")
    _assert_close(s2_attention(q, k, v, 100, shift=False), want, what="G>T")


@pytest.mark.parametrize("group", [4, 7, 16])
def test_no_future_token_leakage(group):
    seq_len = 32
    q, k, v = _qkv(1, 6, 2, seq_len, seed=3)
    base = s2_attention(q, k, v, group)
    for t in (0, 3, 15, 30):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 5
        out = s2_attention(q2, k2, v2, group)
        _assert_close(out[:, :, : t + 1], base[:, :, : t + 1], atol=0, what=f"positions <= {t}")


def test_paper_roll_pseudocode_leaks_and_ours_does_not():
    # The reason the roll-based Algorithm 1 is not used: its last shifted group wraps around to the start.
    q, k, v = _qkv(1, 4, 4, 32, seed=4)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    k2[:, :, -1] += 3.0
    v2[:, :, -1] += 3.0
    roll_diff = (naive_roll_s2(q2, k2, v2, 8) - naive_roll_s2(q, k, v, 8))[:, :, :4].abs().max().item()
    ours_diff = (s2_attention(q2, k2, v2, 8) - s2_attention(q, k, v, 8))[:, :, :31].abs().max().item()
    assert roll_diff > 1e-3  # the first tokens saw the last one
    assert ours_diff == 0.0


@pytest.mark.parametrize("mask_kind", ["2d", "4d-bool", "4d-float"])
def test_padded_batch_equals_sequences_one_by_one(mask_kind):
    lengths, seq_len, group = [19, 32, 11], 32, 8
    rows = [_qkv(1, 6, 2, n, seed=10 + i) for i, n in enumerate(lengths)]
    q = torch.zeros(3, 6, seq_len, 8)
    k = torch.zeros(3, 2, seq_len, 8)
    v = torch.zeros(3, 2, seq_len, 8)
    keep = torch.zeros(3, seq_len, dtype=torch.bool)
    spans = []
    for b, (n, (qi, ki, vi)) in enumerate(zip(lengths, rows)):
        start = 0 if b != 2 else seq_len - n  # rows 0, 1 right-padded; row 2 left-padded
        q[b, :, start : start + n], k[b, :, start : start + n], v[b, :, start : start + n] = (
            qi[0],
            ki[0],
            vi[0],
        )
        keep[b, start : start + n] = True
        spans.append((start, n))
    if mask_kind == "2d":
        mask = keep.long()
    else:
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
        mask = (causal[None] & keep[:, None, :])[:, None]  # (B, 1, T, T), like transformers' sdpa_mask
        if mask_kind == "4d-float":
            mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    out = s2_attention(q, k, v, group, attention_mask=mask)
    for b, ((start, n), (qi, ki, vi)) in enumerate(zip(spans, rows)):
        _assert_close(out[b : b + 1, :, start : start + n], s2_attention(qi, ki, vi, group), what=f"row {b}")
        pad = torch.ones(seq_len, dtype=torch.bool)
        pad[start : start + n] = False
        assert out[b, :, pad].abs().max().item() == 0 if pad.any() else True


def test_packed_documents_equal_separate_documents():
    lengths, group = [13, 20, 7], 8
    docs = [_qkv(1, 6, 2, n, seed=20 + i) for i, n in enumerate(lengths)]
    q, k, v = (torch.cat([d[j] for d in docs], dim=2) for j in range(3))
    total = sum(lengths)
    cu = torch.tensor([0, 13, 33, 40])
    out_cu = s2_attention(q, k, v, group, cu_seqlens=cu)
    # the same packing as transformers' block-diagonal mask from restarting position_ids
    doc_id = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths))
    block = (doc_id[:, None] == doc_id[None, :]) & torch.ones(total, total, dtype=torch.bool).tril()
    out_mask = s2_attention(q, k, v, group, attention_mask=block[None, None])
    ref = s2_attention_ref(q, k, v, group, docs=[[(0, 13), (13, 20), (33, 7)]])
    start = 0
    for n, (qi, ki, vi) in zip(lengths, docs):
        alone = s2_attention(qi, ki, vi, group)
        _assert_close(out_cu[:, :, start : start + n], alone, what="cu_seqlens")
        _assert_close(out_mask[:, :, start : start + n], alone, what="4-D block mask")
        start += n
    _assert_close(out_cu, ref, what="reference")


def test_bad_arguments_say_what_is_wrong():
    q, k, v = _qkv(1, 6, 4, 8)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of key/value heads \(4\)"):
        s2_attention(q, k, v, 4)
    q, k, v = _qkv(1, 6, 2, 8)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        s2_attention(q, k, v, 1)
    with pytest.raises(ValueError, match="holes"):
        s2_attention(q, k, v, 4, attention_mask=torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="not both"):
        enable_s2_attention(tiny_model(), group_size=8, group_size_ratio=0.25)


# ----------------------------------------------------------------------------- the transformers backend


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_backend_active_in_training_and_inactive_in_eval(arch):
    torch.manual_seed(0)
    ids = torch.randint(6, 100, (2, 40))
    full = tiny_model(arch)
    s2 = tiny_model(arch, attn_implementation="s2_attention")
    s2.config.s2_group_size = 8
    assert s2.config._attn_implementation == "s2_attention"
    full.train()
    s2.train()
    train_diff = (s2(ids).logits - full(ids).logits).abs()
    assert train_diff.max() > 1e-3  # S2 really runs when T > G
    assert train_diff[:, :4].max() < 1e-5  # inside the first half-group S2 and full attention agree
    full.eval()
    s2.eval()
    assert torch.equal(s2(ids).logits, full(ids).logits)  # inference: full attention
    g1 = s2.generate(ids[:1, :10], max_new_tokens=6, do_sample=False)
    g2 = full.generate(ids[:1, :10], max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)


def test_in_eval_switch_keeps_s2_for_the_ablation():
    torch.manual_seed(0)
    ids = torch.randint(6, 100, (1, 40))
    m = enable_s2_attention(tiny_model(), group_size=8, in_eval=True).eval()
    full = tiny_model().eval()
    assert (m(ids).logits - full(ids).logits).abs().max() > 1e-3
    disable_s2_attention(m)
    assert torch.equal(m(ids).logits, full(ids).logits)


def test_whole_model_in_training_mode_is_causal():
    m = enable_s2_attention(tiny_model("qwen2"), group_size=8).train()
    ids = torch.randint(6, 100, (1, 36))
    base = m(ids).logits
    ids2 = ids.clone()
    ids2[:, 20:] = torch.randint(6, 100, (1, 16))
    _assert_close(m(ids2).logits[:, :20], base[:, :20], atol=0, what="model causality")


def test_model_padded_batch_and_packed_rows_match_single_sequences():
    torch.manual_seed(0)
    m = enable_s2_attention(tiny_model(), group_size=8).train()
    a, b = torch.randint(6, 100, (1, 40)), torch.randint(6, 100, (1, 30))
    # left-padded batch through the model's own 2-D attention_mask
    batch = torch.zeros(2, 40, dtype=torch.long)
    mask = torch.zeros(2, 40, dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, 10:], mask[1, 10:] = b[0], 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = m(batch, attention_mask=mask, position_ids=pos).logits
    _assert_close(out[0], m(a).logits[0], what="row 0")
    _assert_close(out[1, 10:], m(b).logits[0], what="left-padded row 1")
    # packed row: position_ids restart per document (transformers builds the block mask when use_cache=False)
    packed = torch.cat([a[:, :25], b[:, :15]], dim=1)
    pid = torch.cat([torch.arange(25), torch.arange(15)])[None]
    out = m(packed, position_ids=pid, use_cache=False).logits
    _assert_close(out[0, :25], m(a[:, :25]).logits[0], what="packed doc 1")
    _assert_close(out[0, 25:], m(b[:, :15]).logits[0], what="packed doc 2")


def test_group_size_comes_from_config_and_is_saved(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    m = enable_s2_attention(tiny_model(), group_size_ratio=0.5)
    assert group_size_for(m.config, 64) == 32
    m.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.s2_group_size_ratio == 0.5 and cfg.s2_shift is True
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="s2_attention")
    assert group_size_for(reloaded.config, 64) == 32
    enable_s2_attention(m, group_size=12)
    assert group_size_for(m.config, 64) == 12


def test_gradients_flow_through_the_backend():
    m = enable_s2_attention(tiny_model(), group_size=8).train()
    ids = torch.randint(6, 100, (2, 33))
    loss = m(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if "q_proj" in n]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.real_model
def test_backend_on_the_bundled_default_model():
    from longlora.models import load_model

    model, tok = load_model("default", dtype="float32", device="cpu")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    ids = tok("It is a truth universally acknowledged, " * 20, return_tensors="pt").input_ids[:, :160]
    with torch.no_grad():
        full = model(ids).logits
        enable_s2_attention(model, group_size=64).train()
        s2 = model(ids).logits
        model.eval()
        s2_eval = model(ids).logits
    disable_s2_attention(model)
    assert (s2 - full).abs().max() > 1e-3  # groups of 64 over 160 tokens change the result in training
    _assert_close(s2[:, :32], full[:, :32], atol=1e-4, what="first half-group")
    _assert_close(s2_eval, full, atol=0, what="eval falls back to full attention")
