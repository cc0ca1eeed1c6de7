"""Every shipped recipe loads into a valid FinetuneConfig; DeepSpeed configs are valid JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longlora.training.config import parse_args

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
DEEPSPEED = sorted((CONFIGS / "deepspeed").glob("*.json"))


def test_the_expected_recipes_ship():
    names = {p.stem for p in RECIPES}
    assert {"tiny-cpu-debug", "smollm2-135m-16k", "smollm2-135m-32k"} <= names
    assert {"llama2-7b-8k", "llama2-7b-32k", "llama2-7b-100k"} <= names
    assert {p.name for p in DEEPSPEED} >= {"zero2.json", "zero3.json"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_says_how_to_run_it(recipe, tmp_path, monkeypatch):
    header = recipe.read_text().splitlines()
    assert header[0].startswith("#")
    assert any(
        "python -m longlora.finetune" in line or "torchrun" in line for line in header if line.startswith("#")
    )
    monkeypatch.chdir(tmp_path)  # DeepSpeed paths must resolve from anywhere
    cfg = parse_args(["--config", str(recipe), "--data", "x.txt", "--output-dir", str(tmp_path / "o")])
    assert cfg.method in ("lora+", "qlora", "lora", "full")
    assert cfg.context_length and cfg.context_length >= 8192
    if cfg.deepspeed:
        assert Path(cfg.deepspeed).is_file(), cfg.deepspeed
    if recipe.stem.startswith("llama2-7b") and cfg.mode == "pretrain":
        # the paper's recipe (Sec. 4.1)
        assert (cfg.learning_rate, cfg.warmup_steps, cfg.weight_decay, cfg.max_steps) == (2e-5, 20, 0.0, 1000)
        assert (cfg.per_device_batch_size, cfg.gradient_accumulation_steps, cfg.attention) == (1, 8, "s2")


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_configs_are_valid(path):
    ds = json.loads(path.read_text())
    stage = ds["zero_optimization"]["stage"]
    assert stage == int(path.stem[-1])
    if stage == 3:
        # LoRA, embedding and norm weights must come out whole when saving under ZeRO-3
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
