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
