"""Tiny models that copy the settings real checkpoints ship (tests/families/*.json).

``family_config(name)`` keeps everything that changes behaviour (model type, RoPE type and factors,
sliding windows and which layers use them, soft-capping, qk-norm, tied embeddings, attention biases,
the q/kv head ratio) and shrinks only sizes: hidden width, layer count, vocabulary, and every position
count divided by one factor, so a window, an original context and a RoPE factor keep their ratios.
``family_tokenizer(name)`` is a character tokenizer with the family's special tokens, bos/eos and real
chat template, so SFT rendering and QA prompts go through the template the real model uses.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

FAMILY_DIR = Path(__file__).parent / "families"
FAMILIES = sorted(p.stem for p in FAMILY_DIR.glob("*.json"))
TINY_ORIGINAL = 64  # every family's original (pre-extension) context becomes 64 tokens
_POSITION_KEYS = ("max_position_embeddings", "original_max_position_embeddings", "sliding_window")


@cache
def family_spec(name: str) -> dict:
    return json.loads((FAMILY_DIR / f"{name}.json").read_text())


def original_context(cfg: dict) -> int:
    """The context the real model was pre-trained at (before any RoPE extension it ships)."""
    rope = cfg.get("rope_scaling") or {}
    if rope.get("original_max_position_embeddings"):
        return rope["original_max_position_embeddings"]
    if cfg.get("original_max_position_embeddings"):
        return cfg["original_max_position_embeddings"]
    if rope.get("factor") and (rope.get("rope_type") or rope.get("type")) == "linear":
        return int(cfg["max_position_embeddings"] / rope["factor"])
    return cfg["max_position_embeddings"]


def position_scale(name: str) -> int:
    return original_context(family_spec(name)["config"]) // TINY_ORIGINAL


def family_config_dict(name: str, vocab_size: int) -> dict:
    spec = family_spec(name)
    cfg = json.loads(json.dumps(spec["config"]))
    scale = position_scale(name)
    for key in _POSITION_KEYS:
        if cfg.get(key):
            cfg[key] = max(4, cfg[key] // scale)
    rope = cfg.get("rope_scaling")
    if rope and rope.get("original_max_position_embeddings"):
        rope["original_max_position_embeddings"] //= scale
    heads = 6 if cfg["num_key_value_heads"] < cfg["num_attention_heads"] else 4
    kv = 2 if heads == 6 else 4
    head_dim = 8
    if rope and "short_factor" in rope:  # longrope: one factor per rotary frequency (head_dim / 2)
        step = len(rope["short_factor"]) // (head_dim // 2)
        rope["short_factor"] = rope["short_factor"][::step][: head_dim // 2]
        rope["long_factor"] = rope["long_factor"][::step][: head_dim // 2]
    cfg.update(
        hidden_size=heads * head_dim,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab_size,
    )
    if "head_dim" in cfg or cfg["model_type"] in ("gemma2", "gemma3_text", "qwen3"):
        cfg["head_dim"] = head_dim
    if "query_pre_attn_scalar" in cfg:
        cfg["query_pre_attn_scalar"] = head_dim
    if cfg["model_type"] == "gemma3_text":
        # The real pattern is 5 sliding layers then 1 global; two layers keep one of each.
        cfg["layer_types"] = ["sliding_attention", "full_attention"]
        cfg.pop("sliding_window_pattern", None)
    if cfg["model_type"] == "qwen2" or cfg["model_type"] == "qwen3":
        cfg["max_window_layers"] = 2
    return cfg


def family_tokenizer(name: str):
    from conftest import build_char_tokenizer

    spec = family_spec(name)
    return build_char_tokenizer(
        ["<pad>", "<unk>", *spec["special_tokens"]],
        spec["chat_template"],
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token=spec["bos_token"],
        eos_token=spec["eos_token"],
        additional_special_tokens=spec["special_tokens"],
        model_max_length=1 << 20,
    )


def family_config(name: str):
    from transformers import AutoConfig

    tok = family_tokenizer(name)
    cfg = family_config_dict(name, vocab_size=len(tok) + 4)
    cfg.pop("architectures", None)
    model_type = cfg.pop("model_type")
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if tok.bos_token_id is not None:
        ids["bos_token_id"] = tok.bos_token_id
    return AutoConfig.for_model(model_type, **cfg, **ids)


def save_family_model(name: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random model of the family plus its tokenizer to ``out`` (a normal model folder)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(name)).float()
    model.save_pretrained(out)
    family_tokenizer(name).save_pretrained(out)
    return out
