"""Random-weights models for the memory and speed benchmarks: an architecture by name or ``config.json``,
its weights drawn once and saved, so a GPU check needs no download and no weights carried to it.

Random weights train, attend and allocate exactly like trained ones of the same shape, which is all that
peak memory, tokens/s and the longest context that fits depend on. They have no tokenizer: the
benchmarks feed them UTF-8 bytes of real text (ids below 256, within any vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

QUICK_CONFIG = dict(  # a tiny Llama for --quick smoke runs
    model_type="llama",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)

PRESETS = {  # architectures by name: random weights need no download
    "llama-3.1-8b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
    "quick": QUICK_CONFIG,
}


def read_config(spec: str) -> dict:
    """A preset name (``llama-3.1-8b``, ``quick``) or the path of a transformers ``config.json``."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(
            f"error: --config-json {spec}: no such file; give a config.json or one of {', '.join(PRESETS)}"
        )
    return json.loads(path.read_text())


def random_model_dir(config: dict, workdir: Path, device: str = "cpu") -> Path:
    """Save random bf16 weights for ``config`` once (keyed by its content); return the folder.

    ``device="cuda"`` draws them on the GPU (an 8B model in seconds instead of a minute of CPU time).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(workdir) / f"random-{config.get('model_type', 'model')}-{key}"
    if (out / "config.json").is_file():
        return out
    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, out)  # a half-written folder is never mistaken for a finished one
    return out


def utf8_token_ids(text: str, vocab_size: int):
    """The text as UTF-8 byte values (``int64``), wrapped into the vocabulary: a random model's tokens."""
    import numpy as np

    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) % vocab_size
