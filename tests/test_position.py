"""Position Interpolation: the factor, composition with existing RoPE settings, and the rotation property."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model

from longlora.position import (
    apply_position_interpolation,
    context_window,
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


def test_linear_config_without_a_record_reads_max_position_embeddings_as_the_window():
    """A linear factor beside max_position_embeddings (Gemma 3: 131072 at factor 8) is a baked window;
    extending composes by ratio instead of multiplying the window by the factor again."""
    cfg = tiny_config(
        "llama", max_position_embeddings=512, rope_parameters={"rope_type": "linear", "factor": 8.0}
    )
    assert context_window(cfg) == 512 and original_context_length(cfg) == 64
    assert apply_position_interpolation(cfg, 512)["factor"] == 8.0  # already covered
    assert cfg.max_position_embeddings == 512
    assert apply_position_interpolation(cfg, 1024)["factor"] == 16.0
    assert cfg.max_position_embeddings == 1024 and context_window(cfg) == 1024


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


def test_dynamic_window_is_max_position_embeddings_and_extension_is_refused():
    """Dynamic NTK rescales at run time against max_position_embeddings: a fine-tuned longer window cannot
    be recorded, so extending with it is refused (the old code trained at 1024 and left 256 in the config)."""
    cfg = tiny_config("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    assert context_window(cfg) == 256  # old rule: max(256, 256 x 2) = 512
    apply_position_interpolation(cfg, 256)  # covered: nothing to do
    with pytest.raises(ValueError, match="dynamic.*--rope-type linear"):
        apply_position_interpolation(cfg, 1024, rope_type="dynamic")
    with pytest.raises(ValueError, match="dynamic"):
        apply_position_interpolation(tiny_config("llama"), 1024, rope_type="dynamic")
    assert cfg.max_position_embeddings == 256


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


# ----------------------------------------------------------------------------- real checkpoint configs
# Copied from the families' config.json (rope settings and window); the rest stays tiny.

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}


def llama3_config(factor: float):
    """Llama-3.1 (factor 8) / Llama-3.2 (factor 32): max_position_embeddings 131072, original 8192."""
    rope = {**LLAMA3_ROPE, "factor": factor, "original_max_position_embeddings": 8192}
    return tiny_config("llama", max_position_embeddings=131072, rope_parameters=rope)


def test_llama_3_2_window_is_max_position_embeddings():
    cfg = llama3_config(32.0)
    assert context_window(cfg) == 131072  # the old max() rule said 8192 x 32 = 262144
    assert current_context_length(cfg) == 131072
    assert original_context_length(cfg) == 8192
    # 200k is beyond the window: PI must apply (the old code saw it "covered" and changed nothing)
    new = apply_position_interpolation(cfg, 200_000)
    assert cfg.max_position_embeddings >= 200_000 and context_window(cfg) == cfg.max_position_embeddings
    assert new["factor"] == 49.0 and cfg.max_position_embeddings == 131072 * 49 // 32  # same window/factor
    assert new["original_max_position_embeddings"] == 8192 and new["low_freq_factor"] == 1.0


def test_llama_3_1_composes_by_the_ratio_it_ships_with():
    """Meta ships factor 8 for a 131072 window; doubling the window doubles the factor (old: ceil(N/8192))."""
    cfg = llama3_config(8.0)
    assert context_window(cfg) == 131072
    apply_position_interpolation(cfg, 100_000)
    assert cfg.rope_parameters["factor"] == 8.0 and cfg.max_position_embeddings == 131072
    new = apply_position_interpolation(cfg, 262_144)
    assert new["factor"] == 16.0 and cfg.max_position_embeddings == 262_144
    base = llama3_config(8.0)
    # low-frequency bands (wavelength beyond 8192) divide positions by the extra factor 2; the
    # high-frequency ones are untouched, as the llama3 scheme intends
    inv_old = rope_inv_freq(base)
    inv_new = rope_inv_freq(cfg)
    wavelen = 2 * torch.pi / rope_inv_freq(base, unscaled=True)
    low = wavelen > 8192
    torch.testing.assert_close(inv_new[low], inv_old[low] / 2)
    torch.testing.assert_close(inv_new[wavelen < 8192 / 4], inv_old[wavelen < 8192 / 4])


def rope_inv_freq(config, unscaled: bool = False) -> torch.Tensor:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if unscaled:  # plain RoPE of the tiny config's head_dim 8
        return 1.0 / (500_000.0 ** (torch.arange(0, 8, 2).float() / 8))
    inv_freq, _ = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu")
    return inv_freq


def test_qwen2_5_yarn_recipe_window_is_original_times_factor():
    """Qwen2.5's long-context recipe adds yarn factor 4 over 32768 and leaves max_position_embeddings at
    32768; transformers reads the factor as window / original, so the window is 131072."""
    cfg = tiny_config(
        "qwen2",
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 1_000_000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
    )
    from longlora.eval.common import check_addressable

    assert context_window(cfg) == 131072
    check_addressable(cfg, 100_000, what="--seq-len")  # the old check used 32768 and refused
    apply_position_interpolation(cfg, 100_000, rope_type="yarn")
    assert cfg.max_position_embeddings == 131072 and cfg.rope_parameters["factor"] == 4.0  # baked, same RoPE
    new = apply_position_interpolation(cfg, 262_144, rope_type="yarn")
    assert new["factor"] == 8.0 and cfg.max_position_embeddings == 262_144


def test_phi3_longrope_stretches_its_long_factors():
    from transformers import AutoModelForCausalLM, Phi3Config

    half = 8  # head_dim 16 -> 8 frequencies
    rope = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "long_factor": [1.0 + i / 4 for i in range(half)],
        "short_factor": [1.0] * half,
    }
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    kw.update(num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    cfg = Phi3Config(
        max_position_embeddings=4096, original_max_position_embeddings=256, rope_parameters=rope, **kw
    )
    before = AutoModelForCausalLM.from_config(Phi3Config(**cfg.to_dict())).model.rotary_emb
    assert context_window(cfg) == 4096 and original_context_length(cfg) == 256
    apply_position_interpolation(cfg, 8192)  # the old code refused: "already uses 'longrope'"
    assert cfg.max_position_embeddings == 8192
    assert cfg.rope_parameters["short_factor"] == [1.0] * half
    after = AutoModelForCausalLM.from_config(cfg).model.rotary_emb
    # past the original length, position x now rotates like position x / 2 did, with the same temperature
    x = torch.zeros(1)
    positions = torch.arange(300, 8000, 97)[None]
    cos_a, sin_a = after(x, positions.float())
    cos_b, sin_b = before(x, positions.float() / 2)
    torch.testing.assert_close(cos_a, cos_b, rtol=0, atol=1e-4)
    torch.testing.assert_close(sin_a, sin_b, rtol=0, atol=1e-4)


def test_gemma3_scales_only_its_global_layers():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
        },
    )
    assert context_window(cfg) == 512
    apply_position_interpolation(cfg, 1024)
    assert cfg.rope_parameters["full_attention"]["factor"] == 16.0
    assert cfg.rope_parameters["sliding_attention"]["rope_type"] == "default"  # local layers untouched
    assert cfg.max_position_embeddings == 1024
