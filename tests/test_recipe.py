"""python -m longlora.recipe: text -> trained adapter -> merged extended model -> evaluation report, and
the app serving the result. A tiny random Llama (1k window, extended to 2k) stands in for the bundled
model; every stage is the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_char_tokenizer, tiny_model

from longlora import recipe

REPO = Path(__file__).resolve().parents[1]
WORDS = "the grass is green and the sky is blue while a long book of many words goes on".split()


def text(n_words: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "\n"


@pytest.fixture(scope="module")
def tiny_1k(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-1k"
    tiny_model("llama", max_position_embeddings=1024).save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    return out


def write(folder: Path, name: str, content: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(content)
    return path


# ----------------------------------------------------------------------------- held-out check and plan


def test_evaluation_text_shared_with_training_is_refused(tmp_path, capsys):
    train = write(tmp_path / "train", "a.txt", text(50, 0))
    write(tmp_path / "train", "b.txt", text(50, 1))
    # the same book under another name in another folder is still the same text
    copy = write(tmp_path / "eval", "renamed.txt", train.read_text())
    with pytest.raises(ValueError, match=r"evaluation text is also training text .*renamed\.txt = .*a\.txt"):
        recipe.check_held_out([str(tmp_path / "train")], [str(tmp_path / "eval")])
    code = recipe.main(
        [
            "--output-dir",
            str(tmp_path / "out"),
            "--train-data",
            str(tmp_path / "train"),
            "--eval-data",
            str(copy),
        ]
    )
    assert code == 2 and "take the file out of --train-data" in capsys.readouterr().err
    recipe.check_held_out([str(tmp_path / "train")], [str(write(tmp_path / "other", "c.txt", text(50, 2)))])


def test_shipped_data_keeps_evaluation_and_development_text_out_of_training():
    books = REPO / "data" / "books"
    recipe.check_held_out([str(books / "train")], [str(books / "heldout"), str(books / "dev")])
    assert recipe.DEFAULT_TRAIN == books / "train" and recipe.DEFAULT_EVAL == books / "heldout"


def test_dry_run_prints_every_stage_with_an_estimate(tmp_path, tiny_1k, capsys):
    write(tmp_path / "eval", "e.txt", text(100, 3))
    args = ["--output-dir", str(tmp_path / "out"), "--eval-data", str(tmp_path / "eval"), "--dry-run"]
    assert recipe.main(args) == 0  # the laptop config on the bundled model's config
    out = capsys.readouterr().out
    assert "from 8k to 16k tokens" in out and "yarn RoPE" in out
    for stage in ("train", "merge", "ppl-base", "ppl-extended", "passkey-base", "passkey-extended", "report"):
        assert f"  {stage} " in out
    assert "total" in out and "min" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

    assert recipe.main(args + ["--eval", "full"]) == 0
    out = capsys.readouterr().out
    for stage in ("ppl-linear-untuned", "ppl-yarn-untuned", "ruler-base", "ruler-extended"):
        assert f"  {stage} " in out
    assert recipe.main(args + ["--eval", "none"]) == 0
    out = capsys.readouterr().out
    assert "  merge " in out and "ppl-" not in out


def test_estimates_follow_the_cost_model():
    # S2 trains on 4k groups at 16k: cheaper per token than full attention over 16k
    assert recipe.train_seconds(16384, 4096, 1.0) < recipe.train_seconds(16384, 16384, 1.0)
    # fp32 and fewer threads are slower; a GPU gets no CPU estimate
    assert recipe.speed_factor("fp32", 2, "cpu") == recipe.FP32_SLOWDOWN
    assert recipe.speed_factor("bf16", 1, "cpu") == 2.0
    assert recipe.speed_factor("bf16", 2, "cuda") is None and recipe.train_seconds(10, 10, None) is None
    assert recipe.format_duration(3700) == "1 h 02 min" and recipe.format_duration(None) == "?"
    assert recipe.eval_lengths(16384) == [2048, 4096, 8192, 16384]


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, tiny_1k):
    """The whole recipe on the tiny model: 1k -> 2k, two S2 steps, quick evaluation, report."""
    root = tmp_path_factory.mktemp("recipe")
    for i in range(2):
        write(root / "train", f"book{i}.txt", text(1200, 10 + i))
    write(root / "eval", "heldout.txt", text(1200, 20))
    out = root / "out"
    argv = [
        sys.executable, "-m", "longlora.recipe", "--output-dir", str(out),
        "--train-data", str(root / "train"), "--eval-data", str(root / "eval"), "--ppl-tokens", "4k",
        "--profile", "SmolLM2-135M-Instruct-LongLoRA",
        # finetune flags pass through, over the laptop config
        "--model", str(tiny_1k), "--context-length", "2048", "--max-steps", "2", "--save-steps", "1",
        "--dtype", "fp32",
    ]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, cwd=root, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, argv, first


def test_recipe_trains_merges_evaluates_and_reports(recipe_run):
    out, _, first = recipe_run
    assert "from 1k to 2k tokens" in first.stdout and "total" in first.stdout
    record = json.loads((out / "recipe.json").read_text())
    assert record["status"] == "complete" and record["context_length"] == 2048
    prov = record["provenance"]
    assert prov["command"].startswith("python") and "longlora.recipe" in prov["command"]
    assert prov["date"] and prov["machine"]["cpu_cores"] >= 1 and "commit" in prov
    stages = record["stages"]
    assert list(stages) == [
        "train",
        "merge",
        "ppl-base",
        "ppl-extended",
        "passkey-base",
        "passkey-extended",
        "report",
    ]
    assert all(
        st["returncode"] == 0 and st["seconds"] >= 0 and st["command"].startswith("python -m")
        for st in stages.values()
    )

    args = json.loads((out / "adapter" / "longlora_args.json").read_text())
    assert args["status"] == "complete" and args["resolved"]["steps"] == 2
    assert args["args"]["rope_type"] == "yarn" and args["args"]["attention"] == "s2"  # from the laptop config
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert merged["max_position_embeddings"] == 2048
    assert merged["rope_parameters"]["rope_type"] == "yarn" and merged["rope_parameters"]["factor"] == 2.0
    assert merged["longlora_profile"] == "SmolLM2-135M-Instruct-LongLoRA"

    ppl = {n: json.loads((out / "eval" / f"ppl-{n}.json").read_text()) for n in ("base", "extended")}
    assert [r["seq_len"] for r in ppl["base"]["results"]] == [256, 512, 1024]  # the base's own window
    assert [r["seq_len"] for r in ppl["extended"]["results"]] == [256, 512, 1024, 2048]
    assert all(r["ppl"] > 1 for p in ppl.values() for r in p["results"])
    passkey = json.loads((out / "eval" / "passkey-extended.json").read_text())
    assert sorted({t["length"] for t in passkey["trials"]}) == [512, 1024, 2048]
    report = (out / "report.md").read_text()
    assert "base (1k window)" in report and "LongLoRA 2k" in report and "passkey" in report


def test_rerun_resumes_and_skips_finished_stages(recipe_run):
    out, argv, _ = recipe_run
    log = (out / "adapter" / "train_log.jsonl").read_text()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("train", "merge", "ppl-base", "ppl-extended", "passkey-base", "passkey-extended"):
        assert f"{stage}: done already" in again.stdout
    assert (out / "adapter" / "train_log.jsonl").read_text() == log  # nothing retrained


def test_app_serves_the_extended_model_with_its_window_and_profile(recipe_run, tmp_path, monkeypatch):
    """python app.py --model OUT/merged: the 2k window and the profile recorded in its config (retrieval
    into a small prompt: what the real extended model answers best with, docs/recipe.md)."""
    from gradio_client import Client, handle_file
    from test_app import launch_with_retry

    import app
    from data_tools.profiles import PROFILES
    from webapp.loading import BackgroundEngine
    from webapp.server import parse_args

    out, _, _ = recipe_run
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    args = parse_args(["--model", str(out / "merged"), "--max-new-tokens", "16", "--dtype", "fp32"])
    engine = BackgroundEngine.from_args(args, max_new_tokens=16)
    engine.wait_ready(timeout=300)
    assert engine.context_length == 2048
    assert engine.profile == PROFILES["SmolLM2-135M-Instruct-LongLoRA"]
    assert not engine.profile.whole_document
    demo = app.build_demo(engine, max_new_tokens=16)
    url = launch_with_retry(demo)
    try:
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120})
        doc = write(tmp_path, "notes.txt", text(150, 30))  # ~800 tokens: more than the 256-token budget
        card = client.predict(handle_file(str(doc)), api_name="/upload")
        assert "notes.txt" in card
        answer = client.predict("What colour is the grass?", api_name="/ask")
        assert isinstance(answer, str)
        # the document fits the 2k window, but the profile retrieves passages into its 256-token budget
        assert client.predict(api_name="/sources")  # the passages the answer was given, with pages
        session = engine.open_document(doc)
        budget = PROFILES["SmolLM2-135M-Instruct-LongLoRA"].document_budget
        assert budget < session.num_tokens < engine.context_length
        prompt, report = engine.build_prompt(session, "What colour is the grass?")
        assert not report.fits_whole and report.kept_tokens <= budget
    finally:
        demo.close()
