"""Tiled MLP (``longlora.tiled_mlp``, ``--tiled-mlp``): the same outputs and gradients as the plain MLP,
unchanged parameter names (peft targeting, saving, merging), the forward's autocast in the backward
recomputation, clear errors, and a finetune smoke run that trains exactly like the untiled one."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import EMMA, make_char_tokenizer, tiny_model

from data_tools.errors import DependencyError
from longlora.finetune import main
from longlora.lora import prepare_model
from longlora.tiled_mlp import TiledMLP, auto_shards, disable_tiled_mlp, enable_tiled_mlp
from longlora.training.config import FinetuneConfig

pytest.importorskip("deepspeed", reason="--tiled-mlp runs DeepSpeed's TiledMLP: pip install deepspeed")


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(model, ids, **inputs):
    loss = model(input_ids=ids, labels=ids, **inputs).loss
    loss.backward()
    return loss.detach()


def _assert_same(plain: dict, tiled: dict, atol: float = 1e-6):
    assert plain.keys() == tiled.keys() and plain
    for name in plain:
        diff = (plain[name] - tiled[name]).abs()
        assert diff.max() <= atol, f"{name}: max diff {diff.max():.3g}, mean {diff.mean():.3g}"


@pytest.mark.parametrize("shards", [None, 1, 7, 64])
def test_every_parameter_gets_the_gradient_of_the_plain_mlp(shards):
    """Full fine-tuning (the MLP weights train too), fp32, 100 tokens: auto is ceil(100 / 48) = 3 slices;
    7 and 64 do not divide 100; a batch of two rows."""
    plain, tiled = tiny_model("llama", intermediate_size=96), tiny_model("llama", intermediate_size=96)
    assert enable_tiled_mlp(tiled, shards) == 2
    ids = torch.randint(3, 128, (2, 100), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tiled(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(_step(tiled, ids), _step(plain, ids), rtol=0, atol=1e-6)
    _assert_same(_grads(plain), _grads(tiled))
    assert auto_shards(100, 48) == 3


def test_lora_plus_with_gradient_checkpointing_trains_as_without_tiling():
    """The finetune set-up: LoRA+ (frozen MLP, so only the input gradient flows through TiledMLP), S2 and
    non-reentrant gradient checkpointing, tiling applied to the peft model."""
    from longlora.s2attn import enable_s2_attention

    def model(tile):
        m = tiny_model("llama")
        enable_s2_attention(m, group_size_ratio=0.25)
        m = prepare_model(m, "lora+", gradient_checkpointing=True).train()
        for name, p in m.named_parameters():  # non-identity LoRA B so every LoRA weight has a gradient
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
        if tile:
            enable_tiled_mlp(m, shards=5)
        return m

    plain, tiled = model(False), model(True)
    assert list(plain.state_dict()) == list(tiled.state_dict())  # names unchanged: saving sees no wrapper
    ids = torch.randint(3, 128, (1, 128), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_step(tiled, ids), _step(plain, ids), rtol=0, atol=1e-6)
    grads = _grads(plain)
    assert any("embed_tokens" in n for n in grads) and any("lora_A" in n for n in grads)
    _assert_same(grads, _grads(tiled))


def test_backward_recomputes_the_slices_under_the_forward_autocast():
    """fp32 weights under bf16 autocast (``--method full --dtype bf16``): backward runs outside autocast,
    so TiledMLP's recomputation must restore it, or it recomputes in fp32 what the forward did in bf16."""
    model = tiny_model("llama")
    enable_tiled_mlp(model, shards=4)
    seen = []
    for layer in model.model.layers:
        layer.mlp.gate_proj.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    ids = torch.randint(3, 128, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    forward_calls = len(seen)
    loss.backward()
    assert forward_calls == 2 * 4 and len(seen) == 2 * forward_calls  # every slice again in backward
    assert set(seen) == {torch.bfloat16}, seen


def test_peft_on_the_mlp_merge_and_unwrap_keep_the_model():
    """LoRA on gate_proj added after tiling lands in the original MLP too (shared submodules); logits are
    equal tiled and plain, before and after merging, and after unwrapping the originals are back."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    enable_tiled_mlp(model, shards=3)
    config = LoraConfig(r=4, target_modules=["gate_proj", "q_proj"], init_lora_weights=False)
    model = get_peft_model(model, config).eval()
    layer = model.base_model.model.model.layers[0]
    assert isinstance(layer.mlp, TiledMLP) and layer.mlp.original.gate_proj is layer.mlp.gate_proj
    assert "base_model.model.model.layers.0.mlp.gate_proj.lora_A.default.weight" in model.state_dict()
    ids = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tiled = model(input_ids=ids).logits
        merged = model.merge_and_unload()
        after_merge = merged(input_ids=ids).logits
        assert disable_tiled_mlp(merged) == 2
        plain = merged(input_ids=ids).logits
    assert type(merged.model.layers[0].mlp).__name__ == "LlamaMLP"
    torch.testing.assert_close(after_merge, tiled, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain, tiled, rtol=0, atol=1e-5)


def test_missing_deepspeed_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.sequence_parallel.ulysses_sp", None)
    with pytest.raises(DependencyError, match="--tiled-mlp needs deepspeed: pip install deepspeed"):
        enable_tiled_mlp(tiny_model("llama"))


def test_bad_settings_say_what_to_fix():
    with pytest.raises(ValueError, match="--tiled-mlp-shards must be at least 1"):
        enable_tiled_mlp(tiny_model("llama"), shards=0)
    with pytest.raises(ValueError, match="applies only with --tiled-mlp; add --tiled-mlp"):
        FinetuneConfig(data=["x.txt"], output_dir="out", tiled_mlp_shards=4)
    with pytest.raises(ValueError, match="no decoder layers with an `mlp`"):
        enable_tiled_mlp(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    mlp_with_dropout = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    with pytest.raises(ValueError, match="cannot replay its dropout"):
        TiledMLP(mlp_with_dropout)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_model("llama").save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    data = out.parent / "emma.txt"
    data.write_text(EMMA.read_text()[:6_000])
    return out


def _finetune(base_dir, out, *extra) -> int:
    args = ["--model", str(base_dir), "--data", str(base_dir.parent / "emma.txt"), "--output-dir", str(out)]
    args += ["--dtype", "fp32", "--learning-rate", "5e-3", "--warmup-steps", "0"]
    args += ["--gradient-accumulation-steps", "1", "--context-length", "512", "--max-steps", "2"]
    return main(args + list(extra))


def test_finetune_with_tiled_mlp_trains_like_without(base_dir, tmp_path):
    """Two LoRA+ steps at 512 tokens (auto: 11 slices of the 48-wide tiny model): the same losses and the
    same adapter as the untiled run, whose weights load into a plain model."""
    from safetensors.torch import load_file

    assert _finetune(base_dir, tmp_path / "plain") == 0
    assert _finetune(base_dir, tmp_path / "tiled", "--tiled-mlp") == 0
    logs = [
        [json.loads(line)["loss"] for line in (tmp_path / run / "train_log.jsonl").read_text().splitlines()]
        for run in ("plain", "tiled")
    ]
    assert len(logs[1]) == 2 and logs[1] == pytest.approx(logs[0], abs=1e-5)
    record = json.loads((tmp_path / "tiled" / "longlora_args.json").read_text())
    assert record["args"]["tiled_mlp"] is True and record["resolved"]["tiled_mlp_layers"] == 2
    plain, tiled = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("plain", "tiled"))
    assert plain.keys() == tiled.keys()
    for name in plain:
        torch.testing.assert_close(tiled[name], plain[name], rtol=0, atol=1e-5)


def test_finetune_full_method_with_tiled_mlp_shards(base_dir, tmp_path):
    """--method full trains the MLP weights through TiledMLP; the saved model loads in plain transformers."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    assert _finetune(base_dir, out, "--method", "full", "--tiled-mlp", "--tiled-mlp-shards", "3") == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model.model.layers[0].mlp).__name__ == "LlamaMLP"
    before = tiny_model("llama").model.layers[0].mlp.up_proj.weight
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, before)


def test_finetune_without_deepspeed_fails_before_loading(base_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.sequence_parallel.ulysses_sp", None)
    assert _finetune(base_dir, tmp_path / "run", "--tiled-mlp") == 2
    assert "--tiled-mlp needs deepspeed: pip install deepspeed" in capsys.readouterr().err
