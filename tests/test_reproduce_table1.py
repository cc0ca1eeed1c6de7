"""benchmarks/reproduce_table1.py end to end in its --quick shape: real books, real commands, tiny model.

The numbers of a smoke run mean nothing; what is checked is that every stage runs through the project's
commands, that the table/JSON/plot agree with the per-stage result files, that the evaluation really is
on the held-out book with full attention, and that a rerun reuses finished stages.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
from conftest import EMMA, PRIDE_AND_PREJUDICE

ROOT = Path(__file__).resolve().parents[1]
TRAIN, EVAL = EMMA, PRIDE_AND_PREJUDICE


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "reproduce_table1", ROOT / "benchmarks" / "reproduce_table1.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("table1")
    argv = [
        "--quick",
        "--seeds",
        "0",
        "1",
        "--targets",
        "512",
        "--lora-targets",
        "512",
        "--train-book",
        str(TRAIN),
        "--eval-book",
        str(EVAL),
        "--workdir",
        str(tmp / "work"),
        "--output",
        str(tmp / "table1.json"),
        "--plot",
        str(tmp / "table1.png"),
    ]
    started = time.perf_counter()
    assert script.main(argv) == 0
    first = time.perf_counter() - started
    return tmp, argv, first


def test_quick_run_writes_the_table_json_and_plot(quick_run, capsys):
    tmp, _, _ = quick_run
    payload = json.loads((tmp / "table1.json").read_text())
    assert (tmp / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {"none", "full/full", "full/short", "full/s2", "lora+/full", "lora+/short", "lora+/s2"}
    assert set(payload["ppl_at_target"]) == rows == set(payload["ppl_at_short"])
    assert [r["seed"] for r in payload["per_seed"]] == [0, 1]
    for table in (payload["ppl_at_target"], payload["ppl_at_short"]):
        for row in table.values():
            cell = row["512"]
            assert len(cell["seeds"]) == 2 and all(math.isfinite(v) and v > 1 for v in cell["seeds"])
            assert cell["min"] <= cell["mean"] <= cell["max"]
            assert cell["mean"] == pytest.approx(sum(cell["seeds"]) / 2)
    # the paired gaps are each seed's own ratio to full attention with the same method
    gaps = payload["gap_to_full_attention_pct"]
    assert set(gaps) == rows - {"full/full", "lora+/full"}
    for key, ref in (("full/short", "full/full"), ("lora+/s2", "lora+/full"), ("none", "full/full")):
        want = [
            100 * (r["targets"]["512"][key]["target"] / r["targets"]["512"][ref]["target"] - 1)
            for r in payload["per_seed"]
        ]
        assert gaps[key]["512"]["seeds"] == pytest.approx(want)
    assert payload["seconds"] == pytest.approx(sum(r["seconds"] for r in payload["per_seed"]))
    # different seeds give different models (initialisation and data order both follow the seed)
    assert len(set(payload["pretrained_ppl_short"])) == 2


def test_table_cells_are_the_perplexity_command_results(quick_run):
    """Each cell is what `python -m longlora.eval.perplexity` wrote: held-out book, full attention."""
    tmp, _, _ = quick_run
    payload = json.loads((tmp / "table1.json").read_text())
    for seed_result in payload["per_seed"]:
        seed_dir = tmp / "work" / f"seed-{seed_result['seed']}"
        stems = {"full/s2": "full-s2-512", "full/short": "full-short-512", "lora+/s2": "loraplus-s2-512"}
        for key, stem in [*stems.items(), ("none", "pi512-none")]:
            ppl = json.loads((seed_dir / f"ppl-{stem}.json").read_text())
            assert ppl["config"]["attention"] == "sdpa"
            assert [Path(d["path"]).name for d in ppl["config"]["data"]] == [EVAL.name]
            by_len = {r["seq_len"]: r["ppl"] for r in ppl["results"]}
            assert seed_result["targets"]["512"][key]["target"] == by_len[512]
            assert seed_result["targets"]["512"][key]["short"] == by_len[256]
        # the fine-tuned models were trained at the target (here 2x) with Position Interpolation and the regime
        assert (
            json.loads((seed_dir / "loraplus-s2-512" / "longlora_args.json").read_text())["args"]["method"]
            == "lora+"
        )
        args = json.loads((seed_dir / "full-short-512" / "longlora_args.json").read_text())["args"]
        assert (args["attention"], args["context_length"], args["method"]) == ("short", 512, "full")
        config = json.loads((seed_dir / "full-s2-512" / "config.json").read_text())
        assert config["rope_parameters"]["factor"] == 2.0
        assert config["max_position_embeddings"] == 512


def test_rerun_reuses_finished_stages(script, quick_run):
    tmp, argv, first = quick_run
    before = json.loads((tmp / "table1.json").read_text())
    started = time.perf_counter()
    assert script.main(argv) == 0
    assert time.perf_counter() - started < first / 2
    after = json.loads((tmp / "table1.json").read_text())
    assert after["ppl_at_target"] == before["ppl_at_target"]


def test_refuses_a_workdir_with_other_settings_and_an_eval_book_that_is_not_held_out(
    script, quick_run, capsys
):
    tmp, argv, _ = quick_run
    assert script.main([*argv, "--finetune-steps", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    same = ["--quick", "--train-book", str(TRAIN), "--eval-book", str(TRAIN), "--workdir", str(tmp / "x")]
    assert script.main(same) == 2
    assert "held out" in capsys.readouterr().err
