"""Passkey retrieval: prompt construction, sizing, scoring, and the command on a tiny model."""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_char_tokenizer, tiny_model

from longlora.eval.passkey import (
    FILLER,
    QUESTION,
    TASK,
    build_prompt,
    main,
    make_prompt,
    needle,
    passkey_for_seed,
    run_trial,
    score_answer,
    summarize,
)


@pytest.fixture(scope="module")
def tok():
    return make_char_tokenizer()


@pytest.fixture(scope="module")
def model():
    # Character-level prompts are long: the bare task + key + question is ~250 tokens.
    return tiny_model("llama", max_position_embeddings=1024).eval()


@pytest.fixture
def model_dir(model, tok, tmp_path):
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_prompts_are_deterministic_per_seed(tok):
    a = make_prompt(tok, 600, 0.5, seed=7)
    b = make_prompt(tok, 600, 0.5, seed=7)
    assert a.input_ids == b.input_ids and a.key == b.key == passkey_for_seed(7)
    keys = {passkey_for_seed(s) for s in range(20)}
    assert len(keys) > 15 and all(1 <= k <= 50000 for k in keys)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_prompt_holds_the_key_exactly_once_at_the_requested_depth(tok, depth):
    p = make_prompt(tok, 1500, depth, seed=3)
    text = p.text
    assert text.count(needle(p.key)) == 1
    # The key's digits appear only in the key line (twice, as in the Landmark format).
    assert len(re.findall(rf"(?<!\d){p.key}(?!\d)", text)) == 2
    assert text.startswith(TASK) and text.endswith(QUESTION)
    before, after = text.split(needle(p.key))
    n_before = sum(before.count(s) for s in FILLER)
    n_after = sum(after.count(s) for s in FILLER)
    assert n_before + n_after > 50
    assert n_before == round(depth * (n_before + n_after))
    assert tok.decode(p.input_ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("length", [300, 777, 2048, 4000])
def test_prompt_lands_within_5_percent_of_the_requested_length(tok, length, chat):
    p = make_prompt(tok, length, 0.3, seed=1, chat_template=chat)
    assert 0.95 * length <= p.num_tokens <= length
    if chat:
        assert tok.decode(p.input_ids).startswith("<|im_start|>user\n" + TASK)


def test_prompt_too_short_for_the_task_is_explained(tok):
    with pytest.raises(ValueError, match=r"shorter than the prompt without any filler"):
        make_prompt(tok, 100, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        build_prompt(10, 1.5, 123)


@pytest.mark.parametrize(
    "answer,key,expected",
    [
        (" 31415.", 31415, True),
        ("The pass key is 31415. Remember it.", 31415, True),
        ("31415", 31415, True),
        (" 314150", 31415, False),
        (" 3141", 31415, False),
        (" 2718. The pass key is 31415", 31415, False),  # only the first number counts
        (" the grass is green", 31415, False),
        ("", 31415, False),
    ],
)
def test_scoring_is_exact_match_on_the_first_number(answer, key, expected):
    assert score_answer(answer, key) is expected


def test_summary_counts_accuracy_per_cell_and_length():
    trials = [
        {"length": 1024, "depth": 0.0, "correct": True, "seconds": 1.0},
        {"length": 1024, "depth": 0.0, "correct": False, "seconds": 1.0},
        {"length": 1024, "depth": 1.0, "correct": True, "seconds": 1.0},
        {"length": 2048, "depth": 0.0, "correct": False, "seconds": 2.0},
    ]
    s = summarize(trials)
    cells = {(c["length"], c["depth"]): c["accuracy"] for c in s["by_length_depth"]}
    assert cells == {(1024, 0.0): 0.5, (1024, 1.0): 1.0, (2048, 0.0): 0.0}
    assert [(r["length"], r["accuracy"], r["trials"]) for r in s["by_length"]] == [
        (1024, 2 / 3, 3),
        (2048, 0.0, 1),
    ]


def test_trial_scores_the_generated_answer(model, tok):
    trial = run_trial(model, tok, 400, 0.5, 4, chat_template=False, max_new_tokens=6)
    assert trial["key"] == passkey_for_seed(4)
    assert 0.95 * (400 - 6) <= trial["prompt_tokens"] <= 400 - 6
    assert trial["correct"] is score_answer(trial["answer"], trial["key"])
    assert len(tok(trial["answer"], add_special_tokens=False)["input_ids"]) <= 6


def test_cli_grid_writes_table_json_and_plot(model_dir, tmp_path, capsys):
    out, png = tmp_path / "pk.json", tmp_path / "pk.png"
    args = f"--model {model_dir} --lengths 400 600 --depths 0 1 --seeds 0 1 --max-new-tokens 4 --torch-dtype float32"
    rc = main([*args.split(), "--output", str(out), "--plot", str(png), "--no-progress"])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert payload["kind"] == "passkey"
    assert payload["config"]["chat_template"] is True  # auto: the tokenizer has one
    assert len(payload["trials"]) == 2 * 2 * 2
    for cell in payload["by_length_depth"]:
        mine = [t for t in payload["trials"] if (t["length"], t["depth"]) == (cell["length"], cell["depth"])]
        assert cell["accuracy"] == sum(t["correct"] for t in mine) / 2
    assert [r["length"] for r in payload["by_length"]] == [400, 600]
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "depth" in capsys.readouterr().out


def test_cli_errors_name_the_fix(model_dir, capsys):
    base = ["--model", str(model_dir), "--torch-dtype", "float32", "--no-progress"]
    assert main(base + ["--lengths", "1k", "1500"]) == 2
    assert "--lengths 1500 is above the 1024 positions" in capsys.readouterr().err
    assert main(base + ["--lengths", "100"]) == 2
    assert "shorter than the prompt without any filler" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--lengths", "400", "--depths", "2"])
    assert "--depths must be fractions" in capsys.readouterr().err


@pytest.mark.real_model
def test_real_tokenizer_prompt_sizes():
    from longlora.models import load_tokenizer, resolve_model_path

    tok = load_tokenizer(resolve_model_path("default"))
    for length in (1024, 8192 - 16):
        for chat in (False, True):
            p = make_prompt(tok, length, 0.5, seed=0, chat_template=chat)
            assert 0.95 * length <= p.num_tokens <= length


@pytest.mark.real_model
def test_real_model_retrieves_a_key_at_512_tokens():
    """End to end with a model that can do the task: prompt -> greedy answer -> exact match."""
    from longlora.models import load_model

    model, tok = load_model("default", dtype="auto")
    trial = run_trial(model, tok, 512, 0.5, 0, chat_template=False, max_new_tokens=16)
    assert trial["correct"], trial["answer"]
    assert trial["answer"].strip().startswith(str(trial["key"]))


def test_one_chat_template_rule_for_passkey_and_ruler():
    """--chat-template is one flag with one rule (longlora.eval.common), whichever command reads it."""
    from types import SimpleNamespace

    from data_tools.errors import InputError
    from longlora.eval import passkey, ruler
    from longlora.eval.common import use_chat_template

    with_template, without = SimpleNamespace(chat_template="{{ x }}"), SimpleNamespace(chat_template=None)
    assert [use_chat_template(c, with_template) for c in ("auto", "on", "off")] == [True, True, False]
    assert [use_chat_template(c, without) for c in ("auto", "off")] == [False, False]
    with pytest.raises(InputError, match="no chat template; use --chat-template off"):
        use_chat_template("on", without)
    for command in (passkey, ruler):
        action = next(a for a in command.build_parser()._actions if a.dest == "chat_template")
        assert action.default == "auto" and list(action.choices) == ["auto", "on", "off"]
