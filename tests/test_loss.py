"""Chunked linear + cross-entropy: same loss and gradients as the plain logits path, without the logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from longlora.lora import prepare_model, trainable_parameters
from longlora.loss import causal_lm_loss, chunk_size_for, linear_cross_entropy

N, H, V = 37, 16, 101  # chunk sizes below do not divide N


def plain_ce(hidden, weight, labels, bias=None, softcap=None, num_items=None):
    """The obviously correct reference: the whole (N, V) logits matrix, like transformers' loss."""
    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if num_items is None:
        return F.cross_entropy(logits, labels, ignore_index=-100)
    return F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") / num_items


def leaves(dtype=torch.float32, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[0, 5, 6, 20, 36]] = -100
    return hidden, weight, b, labels


def grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def assert_close_report(actual, expected, **tol):
    for a, e in zip(actual, expected):
        diff = (a.float() - e.float()).abs()
        torch.testing.assert_close(
            a.float(), e.float(), **tol, msg=lambda m, d=diff: f"{m}\nmax {d.max():.3g} mean {d.mean():.3g}"
        )


@pytest.mark.parametrize("chunk", [1, 8, 10, 37, 1000])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_loss_and_gradients_match_the_plain_path_fp32(chunk, softcap):
    hidden, weight, bias, labels = leaves()
    ref = plain_ce(hidden, weight, labels, bias, softcap)
    out = linear_cross_entropy(hidden, weight, labels, bias=bias, softcap=softcap, chunk_size=chunk)
    torch.testing.assert_close(out, ref)
    assert_close_report(grads(out, hidden, weight, bias), grads(ref, hidden, weight, bias))


def test_num_items_in_batch_divides_the_sum():
    hidden, weight, _, labels = leaves(bias=False)
    ref = plain_ce(hidden, weight, labels, num_items=100)
    out = linear_cross_entropy(hidden, weight, labels, num_items_in_batch=torch.tensor(100), chunk_size=7)
    torch.testing.assert_close(out, ref)
    assert_close_report(grads(out, hidden, weight), grads(ref, hidden, weight))


def test_all_ignored_is_nan_like_cross_entropy():
    hidden, weight, _, labels = leaves(bias=False)
    labels[:] = -100
    assert torch.isnan(linear_cross_entropy(hidden, weight, labels, chunk_size=8))
    assert torch.isnan(plain_ce(hidden, weight, labels))


def test_bf16_within_twice_the_error_of_the_plain_bf16_path():
    """flash-attn's rule: the bf16 result is at most 2x as far from fp32 as the naive bf16 computation."""
    h32, w32, b32, labels = leaves()
    exact = plain_ce(h32, w32, labels, b32)
    exact_g = grads(exact, h32, w32, b32)
    h, w, b, _ = leaves(torch.bfloat16)
    naive = plain_ce(h, w, labels, b)
    naive_g = grads(naive, h, w, b)
    ours = linear_cross_entropy(h, w, labels, bias=b, chunk_size=10)
    ours_g = grads(ours, h, w, b)
    assert ours.dtype == torch.float32
    assert (ours - exact).abs() <= 2 * (naive - exact).abs() + 1e-4
    for o, n, e in zip(ours_g, naive_g, exact_g):
        assert (o.float() - e).abs().max() <= 2 * (n.float() - e).abs().max() + 1e-4


def test_fp32_weight_with_bf16_hidden_runs_in_bf16_and_returns_fp32_grads():
    """LoRA+ under bf16: the tied trainable embedding copy is fp32, the hidden states bf16."""
    h, w, _, labels = leaves(torch.bfloat16, bias=False)
    w32 = w.detach().float().requires_grad_()
    out = linear_cross_entropy(h, w32, labels, chunk_size=9)
    ref = linear_cross_entropy(h, w, labels, chunk_size=9)
    torch.testing.assert_close(out, ref)
    gw32 = grads(out, w32)[0]
    assert gw32.dtype == torch.float32
    torch.testing.assert_close(gw32, grads(ref, w)[0].float(), atol=1e-2, rtol=1e-2)


def test_nothing_of_size_tokens_x_vocab_is_saved_for_backward():
    """The memory property: the largest tensor kept for backward is far below the (N, V) logits."""
    n, vocab, chunk = 512, 1000, 64
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(n, H, generator=g, requires_grad=True)
    weight = torch.randn(vocab, H, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (n,), generator=g)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_cross_entropy(hidden, weight, labels, chunk_size=chunk).backward()
    assert max(saved) <= max(vocab * H, n * H, chunk * vocab) < n * vocab
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        plain_ce(hidden, weight, labels)
    assert max(saved) >= n * vocab  # the reference does hold the logits


def test_default_chunk_keeps_a_logits_block_near_128_mb():
    assert chunk_size_for(49152) == 682
    assert chunk_size_for(128256) * 128256 * 4 <= 2**27


def test_bad_input_is_refused_clearly():
    hidden, weight, _, labels = leaves(bias=False)
    with pytest.raises(ValueError, match="do not line up"):
        linear_cross_entropy(hidden, weight, labels[:-1])
    with pytest.raises(ValueError, match="unknown loss backend 'fast'"):
        linear_cross_entropy(hidden, weight, labels, backend="fast")


# ----------------------------------------------------------------------------- whole models


def batch(vocab=128, length=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, length), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100
    labels[1, 10:13] = -100
    return ids, labels


def model_grads(model, loss):
    params = trainable_parameters(model)
    return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize(
    ("arch", "method", "checkpointing"),
    [
        ("llama", "lora+", True),
        ("llama", "lora+", False),
        ("mistral", "lora+", True),
        ("llama", "full", False),
    ],
)
def test_model_loss_and_trainable_gradients_match_model_loss(arch, method, checkpointing):
    """Tied (llama) and untied (mistral) heads, peft-wrapped LoRA+ (modules_to_save) and plain models."""
    torch.manual_seed(0)
    model = prepare_model(tiny_model(arch), method, gradient_checkpointing=checkpointing).train()
    with torch.no_grad():  # non-identity LoRA so its gradients are not trivially equal
        for name, p in trainable_parameters(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids, labels = batch()
    ref, ref_g = model_grads(model, model(input_ids=ids, labels=labels, use_cache=False).loss)
    out, out_g = model_grads(model, causal_lm_loss(model, ids, labels, chunk_size=13))
    torch.testing.assert_close(out, ref)
    assert ref_g.keys() == out_g.keys()
    assert any("lora_A" in n for n in out_g) or method == "full"
    assert any("embed_tokens" in n for n in out_g)
    for name in ref_g:
        torch.testing.assert_close(out_g[name], ref_g[name], msg=name, atol=1e-5, rtol=1e-4)


def test_packed_positions_and_num_items_reach_the_model():
    model = tiny_model("llama").train()
    ids, labels = batch()
    pos = torch.cat([torch.arange(10), torch.arange(19)]).expand(2, -1)
    ref = model(input_ids=ids, labels=labels, position_ids=pos, num_items_in_batch=50, use_cache=False).loss
    out = causal_lm_loss(model, ids, labels, position_ids=pos, num_items_in_batch=50)
    torch.testing.assert_close(out, ref)


def test_gemma2_softcapped_logits():
    model = tiny_model("gemma2", attn_implementation="eager", head_dim=8, final_logit_softcapping=2.0).train()
    ids, labels = batch()
    ref = model(input_ids=ids, labels=labels, use_cache=False).loss
    torch.testing.assert_close(causal_lm_loss(model, ids, labels, chunk_size=11), ref)


def test_bias_on_the_lm_head():
    model = tiny_model("mistral").train()
    model.lm_head.bias = torch.nn.Parameter(torch.randn(128) * 0.5)
    ids, labels = batch()
    ref = F.cross_entropy(
        model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    )
    torch.testing.assert_close(causal_lm_loss(model, ids, labels, chunk_size=11), ref)


def test_a_lora_adapter_on_the_lm_head_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("mistral"), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    ids, labels = batch()
    with pytest.raises(ValueError, match="LM head carries a LoRA adapter"):
        causal_lm_loss(model, ids, labels)


def test_model_loss_saves_no_logits_matrix():
    model = prepare_model(tiny_model("llama", vocab_size=2000), "lora+", gradient_checkpointing=True).train()
    ids = torch.randint(3, 2000, (1, 256))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss(model, ids, ids, chunk_size=32).backward()
    assert max(saved) < 256 * 2000 / 2


def test_the_loss_module_matches_the_function():
    from longlora.loss import CausalLMLoss

    model = prepare_model(tiny_model("llama"), "lora+", gradient_checkpointing=True).train()
    ids, labels = batch()
    step = CausalLMLoss(model, chunk_size=7)
    assert list(step.parameters())  # the wrapped model's parameters: DDP/DeepSpeed see them
    torch.testing.assert_close(
        step(input_ids=ids, labels=labels, use_cache=False), causal_lm_loss(model, ids, labels)
    )


def test_bf16_model_loss_and_gradients_match_the_plain_bf16_path():
    """LoRA+ under bf16 autocast (as training runs): same loss and trainable gradients, bf16 tolerance."""
    model = prepare_model(
        tiny_model("llama").to(torch.bfloat16),
        "lora+",
        gradient_checkpointing=True,
        compute_dtype=torch.bfloat16,
    ).train()
    with torch.no_grad():
        for name, p in trainable_parameters(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids, labels = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, ref_g = model_grads(model, model(input_ids=ids, labels=labels, use_cache=False).loss)
        out, out_g = model_grads(model, causal_lm_loss(model, ids, labels, chunk_size=13))
    torch.testing.assert_close(out, ref.float(), atol=2e-3, rtol=2e-3)
    for name in ref_g:
        scale = ref_g[name].float().abs().max().clamp_min(1e-6)
        err = (out_g[name].float() - ref_g[name].float()).abs().max() / scale
        assert err < 0.02, (name, float(err))
