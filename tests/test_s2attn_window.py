"""S2-Attn with a sliding window: each group's causal attention intersected with the layer's window, so
training never attends farther back than the model does at inference (Mistral, Gemma 3, Qwen 3)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from reference import s2_attention_masked_ref

from longlora.s2attn import enable_s2_attention, s2_attention


def _qkv(heads, kv_heads, seq_len, dim=8, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(1, h, seq_len, dim, generator=g) for h in (heads, kv_heads, kv_heads)]
    return [x.requires_grad_(requires_grad) for x in out]


def _assert_close(actual, expected, atol, what=""):
    diff = (actual.double() - expected.double()).abs()
    assert diff.max().item() <= atol, f"{what} max diff {diff.max().item():.3e} mean {diff.mean().item():.3e}"


@pytest.mark.parametrize("window", [1, 3, 7, 9, 15])
@pytest.mark.parametrize("packed", [False, True], ids=["one-doc", "packed"])
def test_window_inside_groups_matches_reference(window, packed):
    # G = 16: windows below G/2, between G/2 and G, and just under G; 9 q / 3 kv heads
    seq_len, group = 53, 16
    q, k, v = _qkv(9, 3, seq_len, requires_grad=True)
    docs = [(0, 30), (30, 5), (35, 18)] if packed else [(0, seq_len)]
    cu = torch.tensor([0, 30, 35, 53]) if packed else None
    out = s2_attention(q, k, v, group, cu_seqlens=cu, sliding_window=window)
    ref = s2_attention_masked_ref(q, k, v, group, docs=docs, window=window)
    _assert_close(out, ref, 1e-5, "forward")
    grad = torch.randn_like(out)
    for name, a, b in zip(
        "qkv", torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)
    ):
        _assert_close(a, b, 1e-4, f"d{name}")


def test_window_not_smaller_than_the_group_changes_nothing():
    q, k, v = _qkv(6, 2, 40, seed=1)
    plain = s2_attention(q, k, v, 16)
    for window in (16, 17, 4096):
        assert torch.equal(s2_attention(q, k, v, 16, sliding_window=window), plain)


def test_keys_older_than_the_window_are_never_seen():
    seq_len, group, window = 48, 16, 5
    q, k, v = _qkv(6, 2, seq_len, seed=2)
    base = s2_attention(q, k, v, group, sliding_window=window)
    for t in (10, 30, 47):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, : t - window + 1] += 4.0  # every key at distance >= window from query t
        v2[:, :, : t - window + 1] += 4.0
        out = s2_attention(q, k2, v2, group, sliding_window=window)
        _assert_close(out[:, :, t], base[:, :, t], 0, f"query {t}")


def test_bad_window_says_what_is_wrong():
    q, k, v = _qkv(6, 2, 8)
    with pytest.raises(ValueError, match="sliding_window must be >= 1"):
        s2_attention(q, k, v, 4, sliding_window=0)


# ----------------------------------------------------------------------------- through the model


def _one_group(model, seq_len):
    """S2 with G >= 2T: one group for both head halves, so S2 must equal the model's own attention."""
    return enable_s2_attention(model, group_size=2 * seq_len).train()


CONFIGS = {
    # Mistral: one window for every layer, smaller than the group
    "mistral": ("mistral", dict(sliding_window=4)),
    # Qwen 3 with use_sliding_window: layers >= max_window_layers slide, the first one is global
    "qwen3-mixed": (
        "qwen3",
        dict(head_dim=8, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    ),
    # Gemma 3: sliding and full layers alternate (config.layer_types)
    "gemma3-mixed": (
        "gemma3_text",
        dict(head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_model_with_sliding_layers_trains_on_what_it_sees_at_inference(name):
    arch, overrides = CONFIGS[name]
    seq_len = 24
    ids = torch.randint(6, 100, (2, seq_len), generator=torch.Generator().manual_seed(0))
    full = tiny_model(arch, **overrides).train()
    if name != "mistral":  # the mixed configs really mix
        assert set(full.config.layer_types) == {"sliding_attention", "full_attention"}
    s2 = _one_group(tiny_model(arch, **overrides), seq_len)
    # the model's own attention (SDPA with its sliding-window masks) and S2 with one group agree per layer
    _assert_close(s2(ids).logits, full(ids).logits, 1e-5, f"{name} logits")
    # and the window matters at this length: without it the result differs
    no_window = tiny_model(arch, **{**overrides, "sliding_window": 4096}).train()
    assert (no_window(ids).logits - full(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["mistral", "gemma3-mixed"])
def test_model_gradients_with_window_and_shifted_groups(name):
    # G < T with a window < G/2: shifted and unshifted groups both clipped by the window; gradients flow
    arch, overrides = CONFIGS[name]
    m = enable_s2_attention(tiny_model(arch, **overrides), group_size=12).train()
    ids = torch.randint(6, 100, (1, 40), generator=torch.Generator().manual_seed(1))
    m(ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in m.named_parameters() if "q_proj" in n]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
