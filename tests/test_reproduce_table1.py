"""benchmarks/reproduce_table1.py end to end in its --quick shape: real books, real commands, tiny model.

The numbers of a smoke run mean nothing; what is checked is that every stage runs through the project's
commands, that the table/JSON/plot agree with the per-stage result files (Table 1 with S2 and S2 with sink
tokens, Table 2's trainable sets), that the evaluation really is on the held-out book with full attention,
and that a rerun reuses finished stages.
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
    rows = {"none"} | {f"{m}/{r}" for m in ("full", "lora+") for r in ("full", "short", "s2", "s2-sink")}
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
    pairs = [("full/short", "full/full"), ("lora+/s2", "lora+/full"), ("none", "full/full")]
    pairs += [("full/s2-sink", "full/full"), ("lora+/s2-sink", "lora+/full")]
    for key, ref in pairs:
        want = [ppl(r, key) / ppl(r, ref) * 100 - 100 for r in payload["per_seed"]]
        assert gaps[key]["512"]["seeds"] == pytest.approx(want)
        assert gaps[key]["512"]["reference"] == ref
    # the share of short attention's gap that S2 and S2 with sinks close, per seed and method
    closed = payload["gap_closed_pct"]
    assert set(closed) == {f"{m}/{x}" for m in ("full", "lora+") for x in ("s2", "s2-sink")}
    for key, cell in closed.items():
        method, _, x = key.partition("/")
        want = [
            100
            * (ppl(r, f"{method}/short") - ppl(r, key))
            / (ppl(r, f"{method}/short") - ppl(r, f"{method}/full"))
            for r in payload["per_seed"]
        ]
        assert cell["512"]["seeds"] == pytest.approx(want)
        assert cell["512"]["min"] <= cell["512"]["mean"] <= cell["512"]["max"]
    assert payload["seconds"] == pytest.approx(sum(r["seconds"] for r in payload["per_seed"]))
    # different seeds give different models (initialisation and data order both follow the seed)
    assert len(set(payload["pretrained_ppl_short"])) == 2


def ppl(seed_result: dict, key: str, target: str = "512") -> float:
    return seed_result["targets"][target][key]["target"]


def test_table_cells_are_the_perplexity_command_results(quick_run):
    """Each cell is what `python -m longlora.eval.perplexity` wrote: held-out book, full attention."""
    tmp, _, _ = quick_run
    payload = json.loads((tmp / "table1.json").read_text())
    for seed_result in payload["per_seed"]:
        seed_dir = tmp / "work" / f"seed-{seed_result['seed']}"
        stems = {"full/s2": "full-s2-512", "full/short": "full-short-512", "lora+/s2": "loraplus-s2-512"}
        stems["full/s2-sink"] = "full-s2-sink-512"
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
        args = json.loads((seed_dir / "full-s2-sink-512" / "longlora_args.json").read_text())["args"]
        assert (args["attention"], args["sink_tokens"], args["method"]) == ("s2-sink", 4, "full")
        assert json.loads((seed_dir / "full-s2-sink-512" / "config.json").read_text())["s2_sink_tokens"] == 4


@pytest.fixture(scope="module")
def table2_run(script, quick_run):
    """The same workdir asked for Table 2's rows, seed 0 only: only the three new runs train."""
    tmp, argv, _ = quick_run
    work = tmp / "work"
    before = {p: p.stat().st_mtime_ns for p in work.glob("seed-*/*/longlora_args.json")}
    argv = [a for a in argv if a not in ("--seeds", "0", "1")]
    argv += ["--seeds", "0", "--table2-targets", "512"]
    argv[argv.index(str(tmp / "table1.json"))] = str(tmp / "table2.json")
    argv[argv.index(str(tmp / "table1.png"))] = str(tmp / "table2.png")
    assert script.main(argv) == 0
    after = {p: p.stat().st_mtime_ns for p in work.glob("seed-*/*/longlora_args.json")}
    return tmp, before, after


def test_table2_rows_train_only_the_new_methods_and_compare_with_full_finetuning(table2_run):
    tmp, before, after = table2_run
    new = {p.parent.name for p in set(after) - set(before)}
    assert new == {"lora-s2-512", "loraplusnorm-s2-512", "loraplusembed-s2-512"}
    assert {p.parent.parent.name for p in set(after) - set(before)} == {"seed-0"}
    assert all(after[p] == t for p, t in before.items())  # earlier runs reused, not retrained
    payload = json.loads((tmp / "table2.json").read_text())
    assert (tmp / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table2 = {f"{m}/s2" for m in ("full", "lora", "lora+norm", "lora+embed", "lora+")}
    assert table2 <= set(payload["ppl_at_target"])
    (seed,) = payload["per_seed"]
    for method in ("lora", "lora+norm", "lora+embed"):
        stage = tmp / "work" / "seed-0" / f"{method.replace('+', 'plus')}-s2-512"
        args = json.loads((stage / "longlora_args.json").read_text())["args"]
        assert (args["method"], args["attention"], args["learning_rate"]) == (method, "s2", 1e-3)
        ppl_file = json.loads((tmp / "work" / "seed-0" / f"ppl-{stage.name}.json").read_text())
        by_len = {r["seq_len"]: r["ppl"] for r in ppl_file["results"]}
        assert seed["targets"]["512"][f"{method}/s2"]["target"] == by_len[512]
    # Table 2's comparison: each LoRA variant against full fine-tuning, all with S2-Attn, same seed
    to_full_ft = payload["gap_to_full_finetuning_pct"]
    assert set(to_full_ft) == table2 - {"full/s2"}
    for key, cell in to_full_ft.items():
        assert cell["512"]["seeds"] == pytest.approx([ppl(seed, key) / ppl(seed, "full/s2") * 100 - 100])
    # their gap to full attention: the variants without a full-attention run of their own use full FT's
    gaps = payload["gap_to_full_attention_pct"]
    assert gaps["lora/s2"]["512"]["reference"] == "full/full"
    assert gaps["lora+/s2"]["512"]["reference"] == "lora+/full"
    assert gaps["lora+norm/s2"]["512"]["seeds"] == pytest.approx(
        [ppl(seed, "lora+norm/s2") / ppl(seed, "full/full") * 100 - 100]
    )


def test_rerun_reuses_finished_stages(script, quick_run):
    tmp, argv, first = quick_run
    before = json.loads((tmp / "table1.json").read_text())
    started = time.perf_counter()
    assert script.main(argv) == 0
    assert time.perf_counter() - started < first / 2
    after = json.loads((tmp / "table1.json").read_text())
    assert after["ppl_at_target"] == before["ppl_at_target"]


def test_stage_names_and_settings_of_earlier_workdirs_stay_valid(script):
    """Workdirs made before s2-sink and Table 2 are reused: their stage folders keep their names and their
    settings stamp (which has no sink_tokens) still matches a run with the default."""
    assert script.stage_name("lora+", "s2", 1024) == "loraplus-s2-1024"
    assert script.stage_name("full", "short", 512) == "full-short-512"
    s = script.Settings(train_book="a", eval_book="b")
    assert "sink_tokens" not in s.key() and "table2_targets" not in s.key()
    assert script.Settings(train_book="a", eval_book="b", sink_tokens=8).key()["sink_tokens"] == 8
    s = script.Settings(train_book="a", eval_book="b", targets=[512, 1024], table2_targets=[1024])
    plan = script.plan_of(s)
    assert plan[512] == [("full", r) for r in ("full", "short", "s2", "s2-sink")]
    assert plan[1024][4:] == [("lora", "s2"), ("lora+norm", "s2"), ("lora+embed", "s2"), ("lora+", "s2")]


def test_refuses_a_workdir_with_other_settings_and_an_eval_book_that_is_not_held_out(
    script, quick_run, capsys
):
    tmp, argv, _ = quick_run
    assert script.main([*argv, "--finetune-steps", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    same = ["--quick", "--train-book", str(TRAIN), "--eval-book", str(TRAIN), "--workdir", str(tmp / "x")]
    assert script.main(same) == 2
    assert "held out" in capsys.readouterr().err
    books = ["--train-book", str(TRAIN), "--eval-book", str(EVAL), "--workdir", str(tmp / "x")]
    assert script.main(["--quick", *books, "--targets", "512", "--sink-tokens", "128"]) == 2
    assert (
        "--sink-tokens 128 must be at least 1 and below the smallest group size, 128"
        in capsys.readouterr().err
    )
