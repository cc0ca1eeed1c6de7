"""Trainable sets of each method (names and counts), tied embeddings, and frozen weights staying frozen."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import tiny_model

from longlora.lora import (
    count_parameters,
    has_tied_embeddings,
    lora_config,
    norm_module_names,
    prepare_model,
    trainable_parameters,
)

HIDDEN, KV, R, VOCAB, LAYERS = 48, 16, 8, 128, 2  # tiny_config: 6 heads x 8, 2 kv heads x 8
# bitsandbytes' CPU 4-bit kernels need output sizes in multiples of 32 (k/v: 2 kv heads x 16)
QLORA_DIMS = dict(
    hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128
)


def lora_count(r=R, hidden=HIDDEN, kv=KV, layers=LAYERS):
    # A: r x in, B: out x r; q,o are hidden->hidden, k,v hidden->kv
    per_layer = r * (hidden + hidden) * 2 + r * (hidden + kv) * 2
    return per_layer * layers


def short_names(model) -> set[str]:
    """Trainable names without the peft prefix and adapter name, e.g. 'layers.0.self_attn.q_proj.lora_A'."""
    out = set()
    for name in trainable_parameters(model):
        name = name.removeprefix("base_model.model.").removeprefix("model.")
        name = re.sub(r"\.default(\.weight)?$", "", name).replace(".modules_to_save", "")
        out.add(name.removesuffix(".weight"))
    return out


def expected_lora_names(layers=LAYERS):
    return {
        f"layers.{i}.self_attn.{p}.{ab}"
        for i in range(layers)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
        for ab in ("lora_A", "lora_B")
    }


def expected_embed_norm_names(layers=LAYERS):
    norms = {
        f"layers.{i}.{n}" for i in range(layers) for n in ("input_layernorm", "post_attention_layernorm")
    }
    return {"embed_tokens", "norm", *norms}


def test_norm_names_come_from_module_classes():
    assert norm_module_names(tiny_model("llama")) == ["input_layernorm", "norm", "post_attention_layernorm"]


def test_lora_plus_trains_exactly_lora_embedding_and_norms():
    model = prepare_model(tiny_model("llama"), "lora+", gradient_checkpointing=False)
    assert short_names(model) == expected_lora_names() | expected_embed_norm_names()
    trainable, total = count_parameters(model)
    norms = (2 * LAYERS + 1) * HIDDEN
    assert trainable == lora_count() + VOCAB * HIDDEN + norms
    assert all(p.dtype == torch.float32 for p in trainable_parameters(model).values())
    assert total > trainable


def test_plain_lora_trains_only_lora():
    model = prepare_model(tiny_model("llama"), "lora", gradient_checkpointing=False)
    assert short_names(model) == expected_lora_names()
    assert count_parameters(model)[0] == lora_count()


def expected_norm_names(layers=LAYERS):
    return expected_embed_norm_names(layers) - {"embed_tokens"}


# Table 2's rows: LoRA, + norms, + embedding, + both (LoRA+)
TABLE2 = {
    "lora": (set(), 0),
    "lora+norm": (expected_norm_names(), (2 * LAYERS + 1) * HIDDEN),
    "lora+embed": ({"embed_tokens"}, VOCAB * HIDDEN),
    "lora+": (expected_embed_norm_names(), VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN),
}


@pytest.mark.parametrize("arch", ["llama", "mistral"], ids=["tied", "untied"])
@pytest.mark.parametrize("method", TABLE2)
def test_table2_methods_train_exactly_their_modules(method, arch):
    base = tiny_model(arch)
    assert has_tied_embeddings(base) is (arch == "llama")
    model = prepare_model(base, method, gradient_checkpointing=False)
    extra_names, extra_count = TABLE2[method]
    names = short_names(model)
    assert names == expected_lora_names() | extra_names
    assert not any("lm_head" in n for n in names)  # a tied head follows the embedding; an untied one stays
    assert count_parameters(model)[0] == lora_count() + extra_count
    assert all(p.dtype == torch.float32 for p in trainable_parameters(model).values())


def test_lora_embed_ties_the_lm_head_to_the_trained_embedding_and_lora_norm_keeps_the_base_tie():
    ids = torch.randint(3, VOCAB, (1, 12))
    model = prepare_model(tiny_model("llama"), "lora+embed", gradient_checkpointing=False).eval()
    trained = model.get_input_embeddings().modules_to_save["default"].weight
    assert model.base_model.model.lm_head.modules_to_save["default"].weight is trained
    with torch.no_grad():
        trained.add_(torch.randn_like(trained))
        hidden = model.base_model.model.model(ids).last_hidden_state
        torch.testing.assert_close(model(ids).logits, hidden @ trained.T)
    model = prepare_model(tiny_model("llama"), "lora+norm", gradient_checkpointing=False)
    base = model.base_model.model
    assert base.lm_head.weight is base.model.embed_tokens.weight and not base.lm_head.weight.requires_grad


def test_full_trains_everything():
    model = prepare_model(tiny_model("llama"), "full", gradient_checkpointing=False)
    trainable, total = count_parameters(model)
    assert trainable == total == sum(p.numel() for p in tiny_model("llama").parameters())


def test_untied_model_trains_embedding_but_not_lm_head():
    model = prepare_model(tiny_model("mistral"), "lora+", gradient_checkpointing=False)
    names = short_names(model)
    assert names == expected_lora_names() | expected_embed_norm_names()
    assert not any("lm_head" in n for n in names)


def test_qwen2_biases_stay_frozen():
    model = prepare_model(tiny_model("qwen2"), "lora+", gradient_checkpointing=False)
    assert not any("bias" in n for n in short_names(model))
    assert count_parameters(model)[0] == lora_count() + VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN


def test_rank_and_alpha_reach_peft():
    cfg = lora_config(tiny_model("llama"), "lora+", r=4, alpha=32, dropout=0.1)
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (4, 32, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert cfg.ensure_weight_tying is True
    model = prepare_model(tiny_model("llama"), "lora", r=4, gradient_checkpointing=False)
    assert count_parameters(model)[0] == lora_count(r=4)


def test_tied_lm_head_uses_the_trained_embedding():
    base = tiny_model("llama")
    assert has_tied_embeddings(base)
    model = prepare_model(base, "lora+", gradient_checkpointing=False).eval()
    emb = model.get_input_embeddings()
    trained = emb.modules_to_save["default"].weight
    head = model.base_model.model.lm_head
    assert head.modules_to_save["default"].weight is trained
    with torch.no_grad():
        trained.add_(torch.randn_like(trained))
        ids = torch.randint(3, VOCAB, (1, 12))
        hidden = model.base_model.model.model(ids).last_hidden_state
        torch.testing.assert_close(model(ids).logits, hidden @ trained.T)


def test_a_few_steps_lower_the_loss_and_leave_frozen_weights_alone():
    torch.manual_seed(0)
    model = prepare_model(tiny_model("llama"), "lora+", gradient_checkpointing=True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained0 = {n: p.detach().clone() for n, p in trainable_parameters(model).items()}
    opt = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-2, betas=(0.9, 0.95))
    ids = torch.randint(3, VOCAB, (2, 40))
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    assert all(
        not torch.equal(p, trained0[n]) for n, p in trainable_parameters(model).items() if "lora_A" not in n
    )


def test_qlora_trains_lora_plus_on_a_4bit_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_model("llama", **QLORA_DIMS).save_pretrained(tmp_path)
    q = AutoModelForCausalLM.from_pretrained(
        tmp_path,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
        device_map={"": "cpu"},
    )
    model = prepare_model(q, "qlora", gradient_checkpointing=False)
    assert short_names(model) == expected_lora_names() | expected_embed_norm_names()
    assert count_parameters(model)[0] == lora_count(hidden=64, kv=32) + VOCAB * 64 + (2 * LAYERS + 1) * 64
    ids = torch.randint(3, VOCAB, (1, 16))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    grads = {n: p.grad for n, p in trainable_parameters(model).items()}
    assert all(g is not None for n, g in grads.items() if "lora_A" not in n)


def test_bad_method_and_missing_targets():
    with pytest.raises(ValueError, match="unknown method 'adapter'"):
        prepare_model(tiny_model("llama"), "adapter")
    with pytest.raises(ValueError, match="needs a base model loaded in 4 bits"):
        prepare_model(tiny_model("llama"), "qlora", gradient_checkpointing=False)
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="has no q_proj"):
        lora_config(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)), "lora")


# ----------------------------------------------------------------------------- compute dtype


def _record_attention_dtypes(model) -> list:
    """Switch ``model`` to an SDPA attention that records the dtypes of q, k, v at every call."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    seen = []

    def recording(module, query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype))
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)

    AttentionInterface.register("record_dtypes", recording)
    ALL_MASK_ATTENTION_FUNCTIONS.register("record_dtypes", sdpa_mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation("record_dtypes")
    return seen


def _bf16_base(method, tmp_path):
    """The base model as longlora.finetune loads it under --dtype bf16 (full: fp32 weights + autocast)."""
    if method == "full":
        return tiny_model("llama", **QLORA_DIMS)
    if method != "qlora":
        return tiny_model("llama", **QLORA_DIMS).to(torch.bfloat16)
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tiny_model("llama", **QLORA_DIMS).save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(
        tmp_path,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16),
        device_map={"": "cpu"},
    )


@pytest.mark.parametrize("method", ["lora+", "lora", "full", "qlora"])
def test_bf16_training_runs_attention_and_residual_stream_in_bf16(method, tmp_path):
    """Under --dtype bf16 (autocast, as accelerate runs the step) q, k, v reach attention in bf16 in the
    forward pass and in the checkpointed recomputation, while the trainable weights stay fp32."""
    from longlora.loss import causal_lm_loss

    model = prepare_model(
        _bf16_base(method, tmp_path), method, gradient_checkpointing=True, compute_dtype=torch.bfloat16
    ).train()
    seen = _record_attention_dtypes(model)
    residual = []
    layers = (model.get_base_model() if hasattr(model, "get_base_model") else model).model.layers
    for layer in layers:
        layer.register_forward_pre_hook(lambda m, args: residual.append(args[0].dtype))
    ids = torch.randint(3, VOCAB, (1, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss(model, ids, ids)
        loss.backward()
    assert len(seen) == 2 * LAYERS  # forward + recomputation
    assert set(seen) == {(torch.bfloat16,) * 3}, seen
    assert set(residual) == {torch.bfloat16}, residual
    params = trainable_parameters(model).values()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in params if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_without_compute_dtype_lora_plus_leaks_fp32_into_q_and_k():
    """The reason for compute_dtype: LoRA+'s fp32 embedding/norm copies made q, k fp32 next to bf16 v."""
    model = prepare_model(tiny_model("llama").to(torch.bfloat16), "lora+", gradient_checkpointing=False)
    seen = _record_attention_dtypes(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.randint(3, VOCAB, (1, 8)), use_cache=False)
    assert seen[0] == (torch.float32, torch.float32, torch.bfloat16)
    model = prepare_model(
        tiny_model("llama").to(torch.bfloat16),
        "lora+",
        gradient_checkpointing=False,
        compute_dtype=torch.bfloat16,
    )
    seen = _record_attention_dtypes(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=torch.randint(3, VOCAB, (1, 8)), use_cache=False)
    assert seen[0] == (torch.bfloat16,) * 3


def test_compute_dtype_hooks_can_be_removed_and_do_not_stack():
    from longlora.lora import keep_activations_in

    model = prepare_model(
        tiny_model("llama"), "lora+", gradient_checkpointing=False, compute_dtype=torch.bfloat16
    )
    n = len(model._longlora_cast_hooks)
    assert n == 1 + 2 * (2 * LAYERS + 1)  # the embedding; each norm's frozen original and trained copy
    keep_activations_in(model, torch.bfloat16)
    assert len(model._longlora_cast_hooks) == n
    keep_activations_in(model, None)
    ids = torch.randint(3, VOCAB, (1, 8))
    assert model.base_model.model.model(ids).last_hidden_state.dtype == torch.float32
