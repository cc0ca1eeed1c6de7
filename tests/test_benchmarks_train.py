"""benchmarks/train_step.py and benchmarks/max_context.py end to end in their --quick shapes (tiny models).

Speed is never asserted: what is checked is that every configuration runs in its own process through
the real training step and reports its numbers, and that the context search is consistent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import EMMA

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_search_doubles_then_bisects_to_the_granularity():
    search = load_script("max_context").search
    limit = 37_000
    best, trials = search(lambda n: {"fits": n <= limit}, 16384, 4096, 1 << 20)
    assert best == 36864
    assert [t["length"] for t in trials][:3] == [16384, 32768, 65536]
    fit = [t["length"] for t in trials if t["fits"]]
    fail = [t["length"] for t in trials if not t["fits"]]
    assert max(fit) == best < min(fail) and min(fail) - best <= 4096
    best, _ = search(lambda n: {"fits": n <= 5000}, 16384, 4096, 1 << 20)
    assert best == 4096  # the start itself fails: bisect below it
    best, trials = search(lambda n: {"fits": True}, 1024, 1024, 4096)
    assert best == 4096 and len(trials) == 3


@pytest.mark.slow
def test_train_step_quick_runs_each_configuration_in_its_own_process(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "train_step.json"
    argv = ["--quick", "--model", str(tiny_model_dir), "--book", str(EMMA), "--methods", "lora+"]
    argv += ["--attentions", "s2", "full", "--data", "book", "packed", "--steps", "1", "--warmup", "0"]
    assert load_script("train_step").main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dtype bf16" in printed and "CPU, bf16" in printed
    assert "S2/full tokens/s" in printed and "packed/book tokens/s" in printed
    results = json.loads(out.read_text())["results"]
    assert {(r["data"], r["attention"]) for r in results} == {
        ("book", "s2"),
        ("book", "full"),
        ("packed", "s2"),
        ("packed", "full"),
    }
    for r in results:
        assert r["tokens"] == 256 and r["tokens_per_s"] > 0 and r["forward_tokens_per_s"] > 0
        assert r["peak_mb"] > 0 and r["peak_kind"] == "rss" and math.isfinite(r["loss"])
        assert r["train_over_forward"] == pytest.approx(
            r["tokens_per_s"] / r["forward_tokens_per_s"], rel=1e-2
        )
    packed = [r for r in results if r["data"] == "packed"]
    assert all(r["documents"] >= 1 for r in packed)
    # the same tokens and model: S2 and full attention start from the same loss on the book row
    book = {r["attention"]: r["loss"] for r in results if r["data"] == "book"}
    assert book["s2"] == pytest.approx(book["full"], abs=0.05)


@pytest.mark.slow
def test_max_context_quick_and_a_budget_nothing_fits(tmp_path, capsys):
    mc = load_script("max_context")
    out = tmp_path / "mc.json"
    assert mc.main(["--quick", "--workdir", str(tmp_path), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [t["length"] for t in result["trials"]] == [1024, 2048, 4096]
    assert result["max_context"] == 4096 and all(t["fits"] for t in result["trials"])
    assert all(0 < t["peak_mb"] <= 1024 for t in result["trials"])
    assert "(the --max-length cap)" in capsys.readouterr().out
    assert result["capped"] is True and result["max_length"] == 4096  # the limit is above the cap
    assert result["text"][0].endswith(".txt") and result["text_tokens"] > 4096 and not result["text_repeated"]
    assert result["provenance"]["machine"]["cpu_cores"] >= 1
    # a budget below what importing torch takes: the child is killed at the budget, nothing fits
    assert mc.main(["--quick", "--workdir", str(tmp_path), "--budget-gb", "0.05", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["max_context"] == 0
    assert [t["fits"] for t in result["trials"]] == [False]
    assert "over the memory budget" in result["trials"][0]["error"]


def test_table1_cost_passes_the_stage_settings_on_as_finetune_flags(tmp_path):
    """The stage's recorded settings become flags finetune parses back to the same values; only the
    attention differs between the runs."""
    from longlora.training.config import parse_args

    cost = load_script("table1_cost")
    args = {
        "model": str(tmp_path / "pretrained"),
        "data": [str(tmp_path / "book.txt")],
        "mode": "pretrain",
        "method": "full",
        "s2_group_size_ratio": 0.25,
        "context_length": 1024,
        "rope_type": "linear",
        "pack": "document",
        "learning_rate": 0.0005,
        "warmup_steps": 10,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "per_device_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "dtype": "bf16",
        "seed": 0,
        "gradient_checkpointing": False,
        "attention": "s2",
        "max_steps": 60,
    }
    stage = tmp_path / "full-s2-1024"
    stage.mkdir()
    (stage / "longlora_args.json").write_text(json.dumps({"args": args}))
    base = cost.stage_argv(stage)
    for attention in ("s2", "s2-sink", "full"):
        extra = cost.attention_argv(attention, 4, 8)
        cfg = parse_args([*base, *extra, "--output-dir", str(tmp_path / "o")])
        assert cfg.attention == attention and cfg.gradient_checkpointing is False
        for key in cost.PASSED:
            assert getattr(cfg, key) == args[key], key
        if attention == "s2-sink":
            assert (cfg.sink_tokens, cfg.sink_stride) == (4, 8)
    with pytest.raises(SystemExit, match="train Table 1 first"):
        cost.stage_argv(tmp_path / "missing")


def test_rounds_give_per_round_step_time_ratios_to_s2():
    summarise = load_script("train_step").summarise
    results = []
    for rnd, (s2, sink) in enumerate([(100.0, 80.0), (120.0, 100.0), (90.0, 60.0)]):
        for attention, tps in (("s2", s2), ("s2-sink", sink)):
            results.append(
                dict(
                    length=8192,
                    method="lora+",
                    data="book",
                    attention=attention,
                    round=rnd,
                    tokens_per_s=tps,
                    peak_mb=1.0,
                )
            )
    (line,) = [x for x in summarise(results) if "s2-sink/s2" in x]
    # step time ratio = S2's tokens/s over the other's, per round: 1.25, 1.20, 1.50
    assert "median 1.25x (range 1.20-1.50, 3 rounds: 1.25, 1.20, 1.50)" in line
