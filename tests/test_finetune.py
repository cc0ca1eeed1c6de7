"""End-to-end runs of python -m longlora.finetune on a tiny model: artifacts, loss, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    EMMA,  # noqa: E402
    make_char_tokenizer,
    tiny_model,
)
from safetensors.torch import load_file

from longlora import finetune
from longlora.finetune import main
from longlora.training.config import FinetuneConfig, build_parser, parse_args


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_model("llama").save_pretrained(out)
    make_char_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "emma.txt"
    path.write_text(EMMA.read_text()[:20_000])
    return path


def run(base_dir, data, out, *extra):
    args = ["--model", str(base_dir), "--data", str(data), "--output-dir", str(out), "--dtype", "fp32"]
    args += ["--learning-rate", "5e-3", "--warmup-steps", "0", "--gradient-accumulation-steps", "1"]
    return main(args + [str(e) for e in extra])


def log_of(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def crash_at_step(monkeypatch, step: int) -> None:
    """The run is killed after optimizer step ``step`` (and its checkpoint, if one is due), when the next
    step asks for its learning rate (until ``monkeypatch.undo()``)."""
    real = finetune.lr_at

    def crash(done, *args):
        if done == step:
            raise KeyboardInterrupt("killed")
        return real(done, *args)

    monkeypatch.setattr(finetune, "lr_at", crash)


def test_pretrain_lora_plus_s2_writes_a_complete_adapter(base_dir, text_file, tmp_path):
    out = tmp_path / "run"
    assert run(base_dir, text_file, out, "--context-length", "512", "--max-steps", "6") == 0
    log = log_of(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert set(log[0]) >= {"step", "loss", "lr", "tokens_per_s"} and log[0]["tokens"] == 512
    assert log[-1]["loss"] < log[0]["loss"] - 0.2, [r["loss"] for r in log]

    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"} <= names
    assert {"longlora_args.json", "train_log.jsonl"} <= names and "checkpoints" not in names
    weights = load_file(out / "adapter_model.safetensors")
    assert any("embed_tokens" in k for k in weights) and any("post_attention_layernorm" in k for k in weights)
    assert sum("lora_A" in k for k in weights) == 8 and not any("mlp" in k for k in weights)

    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    assert config["max_position_embeddings"] == 512 and config["original_max_position_embeddings"] == 256
    assert config["s2_group_size_ratio"] == 0.25 and config["s2_shift"] is True
    meta = json.loads((out / "longlora_args.json").read_text())
    assert meta["args"]["method"] == "lora+" and meta["resolved"]["pi_factor"] == 2
    assert meta["resolved"]["trainable_parameters"] == 11504

    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, config=AutoConfig.from_pretrained(out))
    model = PeftModel.from_pretrained(base, out).eval()
    trained = model.get_input_embeddings().modules_to_save["default"].weight
    assert not torch.equal(trained, tiny_model("llama").get_input_embeddings().weight)


def test_resume_after_a_crash_matches_an_uninterrupted_run(base_dir, text_file, tmp_path, monkeypatch):
    common = (
        "--context-length",
        "256",
        "--max-steps",
        "5",
        "--save-steps",
        "2",
        "--per-device-batch-size",
        "2",
    )
    assert run(base_dir, text_file, tmp_path / "straight", *common) == 0

    crash_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(base_dir, text_file, tmp_path / "crashed", *common)
    assert (tmp_path / "crashed" / "checkpoints" / "step-2").is_dir()
    assert [r["step"] for r in log_of(tmp_path / "crashed")] == [1, 2, 3]
    monkeypatch.undo()

    assert run(base_dir, text_file, tmp_path / "crashed", *common) == 2  # refuses without --resume
    assert run(base_dir, text_file, tmp_path / "crashed", *common, "--resume") == 0
    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "crashed" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    straight, resumed = log_of(tmp_path / "straight"), log_of(tmp_path / "crashed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def test_sft_round_trip_call_used_by_data_tools(base_dir, tmp_path):
    records = tmp_path / "qa.jsonl"
    lines = [
        {
            "instruction": "Below is a book.\n" + "It was a truth. " * 40 + "\nNow the material ends. Who?",
            "output": "Emma.",
        },
        {"instruction": "What is the capital of France?", "output": "Paris."},
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "sft"
    rc = main(
        [
            "--model",
            str(base_dir),
            "--mode",
            "sft",
            "--data",
            str(records),
            "--output-dir",
            str(out),
            "--max-steps",
            "1",
        ]
        + ["--context-length", "256", "--method", "lora+", "--attention", "s2", "--dtype", "fp32"]
    )
    assert rc == 0
    meta = json.loads((out / "longlora_args.json").read_text())
    stats = meta["resolved"]["sft_stats"]
    assert stats["total"] == 2 and stats["cut"] == 1 and stats["kept_whole"] == 1
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == "default"


@pytest.mark.parametrize("attention, shift", [("short", False), ("full", None)])
def test_attention_choice_is_recorded(base_dir, text_file, tmp_path, attention, shift):
    out = tmp_path / attention
    assert (
        run(base_dir, text_file, out, "--max-steps", "1", "--attention", attention, "--s2-group-size", "64")
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config.get("s2_shift") is shift
    if shift is not None:
        assert config["s2_group_size"] == 64 and config["s2_group_size_ratio"] is None


@pytest.mark.parametrize("method, embed, norms", [("lora+norm", False, True), ("lora+embed", True, False)])
def test_table2_methods_are_selectable(base_dir, text_file, tmp_path, method, embed, norms):
    out = tmp_path / method
    assert run(base_dir, text_file, out, "--max-steps", "1", "--method", method) == 0
    weights = load_file(out / "adapter_model.safetensors")
    assert any("embed_tokens" in k for k in weights) is embed
    assert any("layernorm" in k for k in weights) is norms
    assert sum("lora_A" in k for k in weights) == 8
    assert json.loads((out / "longlora_args.json").read_text())["args"]["method"] == method


def test_yaml_recipe_fills_flags_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: default\ncontext-length: 1024\nmax_steps: 7\nmethod: lora\ndata: [a.txt]\n")
    cfg = parse_args(["--config", str(recipe), "--max-steps", "3", "--output-dir", str(tmp_path / "o")])
    assert (cfg.context_length, cfg.max_steps, cfg.method, cfg.data) == (1024, 3, "lora", ["a.txt"])
    assert (cfg.learning_rate, cfg.warmup_steps, cfg.gradient_accumulation_steps, cfg.lora_r) == (
        2e-5,
        20,
        8,
        8,
    )
    recipe.write_text("context_lenght: 1024\n")
    with pytest.raises(ValueError, match="unknown key 'context_lenght'"):
        parse_args(["--config", str(recipe), "--data", "a", "--output-dir", "o"])


def test_config_validation_names_the_flag():
    with pytest.raises(ValueError, match="--data is required"):
        FinetuneConfig(output_dir="o")
    with pytest.raises(ValueError, match="--s2-group-size-ratio must be in"):
        FinetuneConfig(data=["a"], output_dir="o", s2_group_size_ratio=2.0)
    with pytest.raises(ValueError, match="--method 'qlora4' is not one of"):
        FinetuneConfig(data=["a"], output_dir="o", method="qlora4")


def test_bad_input_gives_errors_that_say_what_to_do(base_dir, text_file, tmp_path, capsys, monkeypatch):
    def err(*args):
        assert main([str(a) for a in args]) == 2
        return capsys.readouterr().err

    assert "unknown model" in err(
        "--model", tmp_path / "nope", "--data", text_file, "--output-dir", tmp_path / "o1"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "empty" in err("--model", base_dir, "--data", empty, "--output-dir", tmp_path / "o2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3}\n')
    msg = err("--model", base_dir, "--mode", "sft", "--data", bad, "--output-dir", tmp_path / "o3")
    assert "bad.jsonl:2" in msg
    msg = err(
        "--model", base_dir, "--data", text_file, "--output-dir", tmp_path / "o4", "--context-length", "128"
    )
    assert "below the model's original context 256" in msg and "--context-length 256" in msg
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    msg = err("--model", base_dir, "--data", text_file, "--output-dir", tmp_path / "full")
    assert "not empty" in msg and "--overwrite-output-dir" in msg
    ds = tmp_path / "ds.json"
    ds.write_text('{"zero_optimization": {"stage": 2}}')
    # the dev requirements install deepspeed: hide it, as a runtime install lacks it
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find(name, *a)
    )
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    msg = err("--model", base_dir, "--data", text_file, "--output-dir", tmp_path / "o5", "--deepspeed", ds)
    assert "pip install deepspeed" in msg


def test_continue_training_an_adapter(base_dir, text_file, tmp_path):
    first = tmp_path / "first"
    assert run(base_dir, text_file, first, "--context-length", "512", "--max-steps", "1") == 0
    second = tmp_path / "second"
    assert (
        run(base_dir, text_file, second, "--adapter", first, "--context-length", "512", "--max-steps", "2")
        == 0
    )
    meta = json.loads((second / "longlora_args.json").read_text())
    assert meta["resolved"]["trainable_parameters"] == 11504 and meta["resolved"]["pi_factor"] == 2
    a = load_file(first / "adapter_model.safetensors")
    b = load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((second / "config.json").read_text())["rope_parameters"]["factor"] == 2.0


def test_learning_rate_schedules():
    peak, warmup, total = 1e-3, 4, 20
    constant = [finetune.lr_at(s, peak, warmup) for s in range(total)]
    assert constant[:4] == pytest.approx([peak / 4, peak / 2, 3 * peak / 4, peak])
    assert set(constant[3:]) == {peak}
    cosine = [finetune.lr_at(s, peak, warmup, "cosine", total) for s in range(total)]
    assert cosine[:4] == constant[:4]  # same warmup
    after = cosine[3:]
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly decreasing after the warmup
    assert cosine[-1] == pytest.approx(finetune.COSINE_FLOOR * peak)  # the last step is at the floor
    # halfway through the decay the cosine is halfway between peak and floor
    mid = finetune.lr_at(warmup - 1 + (total - warmup) // 2, peak, warmup, "cosine", total)
    assert mid == pytest.approx(peak * (1 + finetune.COSINE_FLOOR) / 2)


def test_cosine_schedule_is_what_the_run_uses(base_dir, text_file, tmp_path):
    out = tmp_path / "cos"
    args = ("--context-length", "256", "--max-steps", "6", "--method", "full", "--attention", "full")
    assert run(base_dir, text_file, out, *args, "--lr-schedule", "cosine", "--warmup-steps", "2") == 0
    lrs = [r["lr"] for r in log_of(out)]
    assert lrs == [finetune.lr_at(s, 5e-3, 2, "cosine", 6) for s in range(6)]
    assert lrs[-1] == pytest.approx(5e-4) and lrs[1] == 5e-3
    assert json.loads((out / "longlora_args.json").read_text())["args"]["lr_schedule"] == "cosine"


def test_runs_with_different_precisions_in_one_process(base_dir, text_file, tmp_path):
    """accelerate's process-wide state must not make a second run with another --dtype fail."""
    args = ("--context-length", "256", "--max-steps", "1", "--method", "full", "--attention", "s2")
    assert run(base_dir, text_file, tmp_path / "fp32", *args) == 0
    assert (
        main(
            [
                "--model",
                str(base_dir),
                "--data",
                str(text_file),
                "--output-dir",
                str(tmp_path / "bf16"),
                "--dtype",
                "bf16",
                "--gradient-accumulation-steps",
                "1",
                *args,
            ]
        )
        == 0
    )
    assert run(base_dir, text_file, tmp_path / "fp32-again", *args) == 0
    assert [len(log_of(tmp_path / d)) for d in ("fp32", "bf16", "fp32-again")] == [1, 1, 1]


def test_run_record_holds_the_rope_settings_after_interpolation(base_dir, text_file, tmp_path, monkeypatch):
    """longlora_args.json describes the config being trained from the first step (PI applied), not the
    config before PI."""
    out = tmp_path / "pi"
    during, real = [], finetune.lr_at

    def record_then_lr(step, *args):  # asked before each step: step 1 comes after the first one
        if step == 1:
            during.append(json.loads((out / "longlora_args.json").read_text()))
        return real(step, *args)

    monkeypatch.setattr(finetune, "lr_at", record_then_lr)
    assert run(base_dir, text_file, out, "--context-length", "512", "--max-steps", "2") == 0
    final = json.loads((out / "longlora_args.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    for record in (during[0], final):
        rope = record["resolved"]["rope_parameters"]
        assert rope["rope_type"] == "linear" and rope["factor"] == 2.0, rope
        assert rope == saved["rope_parameters"] and record["resolved"]["max_position_embeddings"] == 512
    assert during[0]["status"] == "running" and final["status"] == "complete"
    assert final["resolved"]["steps"] == 2 and final["resolved"]["pi_factor"] == 2


def test_resume_before_the_first_checkpoint_starts_from_step_zero(
    base_dir, text_file, tmp_path, monkeypatch, capsys
):
    common = ("--context-length", "256", "--max-steps", "3", "--save-steps", "2")

    crash_at_step(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run(base_dir, text_file, tmp_path / "killed", *common)
    monkeypatch.undo()
    assert not (tmp_path / "killed" / "checkpoints").exists()
    assert [r["step"] for r in log_of(tmp_path / "killed")] == [1]
    capsys.readouterr()
    assert run(base_dir, text_file, tmp_path / "killed", *common, "--resume") == 0
    assert "no checkpoint yet; training from step 0" in capsys.readouterr().out
    assert [r["step"] for r in log_of(tmp_path / "killed")] == [1, 2, 3]
    assert (tmp_path / "killed" / "adapter_model.safetensors").is_file()

    # the finished run: --resume says so and succeeds, writing nothing
    before = (tmp_path / "killed" / "adapter_model.safetensors").read_bytes()
    assert run(base_dir, text_file, tmp_path / "killed", *common, "--resume") == 0
    assert "is complete (3 steps); nothing to resume" in capsys.readouterr().err
    assert (tmp_path / "killed" / "adapter_model.safetensors").read_bytes() == before

    # --resume still refuses a folder holding something else
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert run(base_dir, text_file, tmp_path / "other", *common, "--resume") == 2
    assert "holds other files (notes.txt)" in capsys.readouterr().err


def test_flag_help_shows_every_default_from_the_config():
    import dataclasses

    text = " ".join(build_parser().format_help().split())
    for f in dataclasses.fields(FinetuneConfig):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if f.type != "bool":
            default = f.metadata.get("default_text") or (
                f.default_factory() if f.default is dataclasses.MISSING else f.default
            )
            assert f"(default: {default})" in text, (flag, default)


def test_dtype_and_lengths_follow_the_shared_model_surface():
    from longlora import models
    from longlora.training import launch

    def cfg(*extra):
        return parse_args(["--data", "x.txt", "--output-dir", "o", *extra])

    assert cfg("--dtype", "bfloat16").dtype == "bf16" and cfg("--dtype", "float32").dtype == "fp32"
    assert cfg().dtype == "auto" and launch.resolve_dtype("auto") == models.resolve_dtype("auto")
    assert cfg("--context-length", "16k").context_length == 16384
    with pytest.raises(SystemExit):
        cfg("--dtype", "fp8")


def test_compact_cpu_memory_is_set_before_the_model_loads(base_dir, text_file, tmp_path, monkeypatch):
    """The allocator setting (tested in test_cpu_memory.py) only affects later allocations: the run
    must apply it during setup, before the weights and the first step."""
    events = []
    monkeypatch.setattr(finetune, "compact_cpu_memory", lambda: events.append("compact") or True)
    load = finetune._load_trainable_model
    monkeypatch.setattr(
        finetune, "_load_trainable_model", lambda *a, **k: events.append("load") or load(*a, **k)
    )
    assert run(base_dir, text_file, tmp_path / "run", "--max-steps", "1", "--compact-cpu-memory") == 0
    assert events == ["compact", "load"]
    record = json.loads((tmp_path / "run" / "longlora_args.json").read_text())
    assert record["args"]["compact_cpu_memory"] is True


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_resume_refuses_a_damaged_checkpoint_naming_the_file(
    base_dir, text_file, tmp_path, monkeypatch, capsys, damage
):
    """A checkpoint cut short, changed or missing a file after it was saved is refused with the file
    named and the fix, instead of being loaded; the same checkpoint intact resumes."""
    common = ("--context-length", "256", "--max-steps", "4", "--save-steps", "2")

    crash_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(base_dir, text_file, tmp_path / "run", *common)
    monkeypatch.undo()
    ckpt = tmp_path / "run" / "checkpoints" / "step-2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["files"]  # every file listed with its size and hash
    name = max(state["files"], key=lambda n: state["files"][n]["bytes"])  # the weights or optimizer state
    target = ckpt / name
    original = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(original[: len(original) // 2])
    elif damage == "flip":
        target.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    else:
        target.unlink()
    capsys.readouterr()
    assert run(base_dir, text_file, tmp_path / "run", *common, "--resume") == 2
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt}: {name}" in err and "damaged" in err and "--overwrite-output-dir" in err
    assert [r["step"] for r in log_of(tmp_path / "run")] == [1, 2, 3]  # nothing was trained or truncated

    target.write_bytes(original)  # restored from a copy: it resumes
    assert run(base_dir, text_file, tmp_path / "run", *common, "--resume") == 0
    assert [r["step"] for r in log_of(tmp_path / "run")] == [1, 2, 3, 4]


def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_damaged(
    base_dir, text_file, tmp_path, monkeypatch, capsys
):
    """The newest two checkpoints are kept; a damaged newest one is named, moved aside and the run
    resumes from the one before, ending exactly where an uninterrupted run ends."""
    common = ("--context-length", "256", "--max-steps", "5", "--save-steps", "1")
    assert run(base_dir, text_file, tmp_path / "straight", *common) == 0

    crash_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(base_dir, text_file, tmp_path / "run", *common)
    monkeypatch.undo()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]  # step-1 pruned
    state = json.loads((root / "step-3" / "trainer_state.json").read_text())
    name = max(state["files"], key=lambda n: state["files"][n]["bytes"])
    (root / "step-3" / name).write_bytes(b"not a checkpoint")

    capsys.readouterr()
    assert run(base_dir, text_file, tmp_path / "run", *common, "--resume") == 0
    out = capsys.readouterr().out
    assert f"{name} has 16 bytes" in out and "resuming from step-2" in out, out
    assert "resumed from" in out and "at step 2" in out
    assert [r["step"] for r in log_of(tmp_path / "run")] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in log_of(tmp_path / "run")] == [r["loss"] for r in log_of(tmp_path / "straight")]
    a = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    b = load_file(tmp_path / "run" / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_keep_checkpoints_sets_how_many_stay(base_dir, text_file, tmp_path, monkeypatch):
    crash_at_step(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        run(
            base_dir,
            text_file,
            tmp_path / "run",
            "--context-length",
            "256",
            "--max-steps",
            "6",
            "--save-steps",
            "1",
            "--keep-checkpoints",
            "3",
        )
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-2", "step-3", "step-4"]
    assert run(base_dir, text_file, tmp_path / "x", "--keep-checkpoints", "0") == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_flex_kernel_is_refused_before_training_without_cuda(base_dir, text_file, tmp_path, capsys):
    out = tmp_path / "flex"
    assert (
        run(base_dir, text_file, out, "--context-length", "256", "--max-steps", "1", "--s2-backend", "flex")
        == 2
    )
    err = capsys.readouterr().err
    assert "--s2-backend flex trains on CUDA only" in err and "--s2-backend auto" in err
    assert not out.exists() or not (out / "train_log.jsonl").exists()  # refused before anything ran
