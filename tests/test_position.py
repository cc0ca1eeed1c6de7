"""Position Interpolation: the factor, composition with existing RoPE settings, and the rotation property."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model

from longlora.position import (
    apply_position_interpolation,
    current_context_length,
    original_context_length,
    pi_factor,
)


def rotary_tables(config, positions: torch.Tensor):
    """(cos, sin) of the model's rotary embedding at (possibly fractional) positions."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    rotary = model.model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    return rotary(x, positions[None, :].float())


def test_pi_factor_is_ceil():
    assert pi_factor(32768, 4096) == 8
    assert pi_factor(5000, 4096) == 2
    assert pi_factor(4096, 4096) == 1
    assert pi_factor(100_000, 4096) == 25
    with pytest.raises(ValueError, match="positive"):
        pi_factor(10, 0)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_linear_position_x_rotates_like_x_over_factor(arch):
    base = tiny_config(arch)
    scaled = tiny_config(arch)
    apply_position_interpolation(scaled, 1000)  # 1000 / 256 -> factor 4
    assert scaled.rope_parameters["factor"] == 4.0
    positions = torch.arange(0, 1000, 7)
    cos_s, sin_s = rotary_tables(scaled, positions)
    cos_b, sin_b = rotary_tables(base, positions / 4.0)
    torch.testing.assert_close(cos_s, cos_b, rtol=0, atol=1e-5)
    torch.testing.assert_close(sin_s, sin_b, rtol=0, atol=1e-5)
    # and it really differs from the unscaled model at the same integer positions
    cos_u, _ = rotary_tables(base, positions.float())
    assert (cos_s - cos_u).abs().max() > 0.1


def test_linear_sets_lengths_and_keeps_theta_and_partial_rotary():
    cfg = tiny_config("llama", rope_parameters={"rope_type": "default", "rope_theta": 500_000.0})
    cfg.rope_parameters["partial_rotary_factor"] = 0.5
    new = apply_position_interpolation(cfg, 600)
    assert new == {
        "rope_type": "linear",
        "factor": 3.0,
        "rope_theta": 500_000.0,
        "partial_rotary_factor": 0.5,
    }
    assert cfg.max_position_embeddings == 768
    assert cfg.original_max_position_embeddings == 256
    assert original_context_length(cfg) == 256
    assert current_context_length(cfg) == 768


def test_equal_length_is_accepted_and_changes_nothing():
    cfg = tiny_config("llama")
    before = cfg.to_dict()
    new = apply_position_interpolation(cfg, 256)
    assert new["rope_type"] == "default"
    assert cfg.to_dict() == before


def test_below_original_is_refused_with_the_fix():
    cfg = tiny_config("llama")
    with pytest.raises(ValueError, match=r"below the model's original context 256.*--context-length 256"):
        apply_position_interpolation(cfg, 128)


def test_unknown_rope_type():
    with pytest.raises(ValueError, match="unknown rope_type 'ntk'"):
        apply_position_interpolation(tiny_config("llama"), 512, rope_type="ntk")


def test_extending_twice_composes_relative_to_pretraining():
    once = tiny_config("llama")
    apply_position_interpolation(once, 512)  # factor 2
    apply_position_interpolation(once, 2048)  # 2048 / 256 -> factor 8, not 2 * 8
    direct = tiny_config("llama")
    apply_position_interpolation(direct, 2048)
    assert once.rope_parameters == direct.rope_parameters
    assert once.max_position_embeddings == direct.max_position_embeddings == 2048
    # asking for what the model already covers is a no-op
    assert apply_position_interpolation(once, 1500)["factor"] == 8.0


def test_survives_save_and_reload(tmp_path):
    from transformers import AutoConfig

    cfg = tiny_config("qwen2")
    apply_position_interpolation(cfg, 1024)
    cfg.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert again.rope_parameters["rope_type"] == "linear"
    assert again.rope_parameters["factor"] == 4.0
    assert original_context_length(again) == 256
    assert current_context_length(again) == 1024


def test_original_longlora_release_convention():
    """LongLoRA's released configs keep max_position_embeddings at the base length (4096, factor 8)."""
    cfg = tiny_config(
        "llama", max_position_embeddings=64, rope_parameters={"rope_type": "linear", "factor": 8.0}
    )
    assert original_context_length(cfg) == 64
    assert current_context_length(cfg) == 512
    assert apply_position_interpolation(cfg, 512)["factor"] == 8.0  # already covered
    assert apply_position_interpolation(cfg, 1024)["factor"] == 16.0


def test_yarn_records_original_and_differs_from_linear():
    cfg = tiny_config("llama")
    new = apply_position_interpolation(cfg, 1024, rope_type="yarn")
    assert new["rope_type"] == "yarn"
    assert new["factor"] == 4.0
    assert new["original_max_position_embeddings"] == 256
    assert cfg.max_position_embeddings == 1024
    model = tiny_model("llama", rope_parameters=dict(cfg.rope_parameters), max_position_embeddings=1024)
    assert model.model.rotary_emb.attention_scaling > 1.0  # YaRN's attention temperature


def test_yarn_keeps_its_own_knobs_when_extended_again():
    cfg = tiny_config("llama")
    apply_position_interpolation(cfg, 512, rope_type="yarn")
    cfg.rope_parameters["beta_fast"] = 16
    new = apply_position_interpolation(cfg, 2048, rope_type="yarn")
    assert new["factor"] == 8.0 and new["beta_fast"] == 16 and new["original_max_position_embeddings"] == 256


def test_dynamic_leaves_max_position_embeddings():
    cfg = tiny_config("llama")
    new = apply_position_interpolation(cfg, 1024, rope_type="dynamic")
    assert new["rope_type"] == "dynamic" and new["factor"] == 4.0
    assert cfg.max_position_embeddings == 256  # dynamic NTK reads it as the pretraining length
    assert current_context_length(cfg) == 1024


def test_switching_scheme_is_refused():
    cfg = tiny_config("llama")
    apply_position_interpolation(cfg, 512, rope_type="yarn")
    with pytest.raises(ValueError, match="already uses 'yarn'.*--rope-type yarn"):
        apply_position_interpolation(cfg, 2048, rope_type="linear")


def test_llama3_scaling_grows_its_factor():
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500_000.0,
        "factor": 2.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 128,
    }
    cfg = tiny_config("llama", rope_parameters=rope, max_position_embeddings=256)
    assert original_context_length(cfg) == 128
    new = apply_position_interpolation(cfg, 1024)
    assert new["rope_type"] == "llama3" and new["factor"] == 8.0 and new["low_freq_factor"] == 1.0
    assert cfg.max_position_embeddings == 1024


def test_model_without_rope_is_refused():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="no RoPE parameters"):
        apply_position_interpolation(GPT2Config(), 4096)
