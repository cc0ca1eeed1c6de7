"""One window definition end to end: a Llama-3.2-style model fine-tuned past its window is saved with the
window it was trained at, and the perplexity command accepts it at that length."""

from __future__ import annotations

import json

from conftest import EMMA, make_char_tokenizer, tiny_model

from longlora.eval.perplexity import main as perplexity_main
from longlora.finetune import main as finetune_main
from longlora.position import context_window

# Llama-3.2's rope settings scaled down: window 64 (max_position_embeddings) with llama3 factor 32 over
# an original 4, so original x factor (128) overstates the window two-fold, as 8192 x 32 does for 131072.
LLAMA32_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500_000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 4,
}


def test_finetune_past_the_window_saves_the_trained_window_and_eval_accepts_it(tmp_path):
    from transformers import AutoConfig

    base = tmp_path / "llama32"
    tiny_model("llama", max_position_embeddings=64, rope_parameters=dict(LLAMA32_ROPE)).save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    assert context_window(AutoConfig.from_pretrained(base)) == 64
    text = tmp_path / "emma.txt"
    text.write_text(EMMA.read_text()[:6000])

    out = tmp_path / "adapter"
    args = [
        "--model",
        base,
        "--data",
        text,
        "--output-dir",
        out,
        "--context-length",
        "128",
        "--max-steps",
        "1",
    ]
    args += ["--gradient-accumulation-steps", "1", "--warmup-steps", "0", "--dtype", "fp32"]
    assert finetune_main([str(a) for a in args]) == 0
    saved = json.loads((out / "config.json").read_text())
    # the old code called 128 covered (4 x 32) and trained at 128 with a config that still said 64
    assert saved["max_position_embeddings"] == 128
    assert saved["rope_parameters"]["factor"] == 64.0

    result = tmp_path / "ppl.json"
    rc = perplexity_main(
        [
            "--model",
            str(out),
            "--data",
            str(text),
            "--seq-len",
            "128",
            "--max-tokens",
            "300",
            "--dtype",
            "fp32",
        ]
        + ["--output", str(result), "--no-progress"]
    )
    assert rc == 0  # the old eval refused: "--seq-len 128 is above the 64 positions this model can address"
    assert json.loads(result.read_text())["config"]["max_position_embeddings"] == 128
