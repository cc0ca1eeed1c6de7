"""One model surface: every command declares --dtype with the same choices and the same meaning of auto."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest
import torch

from longlora import models
from longlora.model_flags import DTYPE_CHOICES, add_model_arguments
from longlora.models import resolve_dtype

COMMANDS = [
    "longlora.models",
    "longlora.merge",
    "longlora.eval.perplexity",
    "longlora.eval.passkey",
    "longlora.finetune",
    "longlora.qa",
]
AUTO_MEANING = "auto = bf16 where it is fast"


def command_help(module: str, capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: argparse wraps at the terminal width
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_has_the_same_dtype_flag(module, capsys, monkeypatch):
    text = command_help(module, capsys, monkeypatch)
    found = re.search(r"--dtype \{([^}]*)\}", text)
    assert found, f"{module} has no --dtype {{...}} option"
    assert tuple(found.group(1).split(",")) == DTYPE_CHOICES, f"{module}: --dtype {{{found.group(1)}}}"
    assert AUTO_MEANING in text, f"{module} states another meaning of --dtype auto"


def parse(argv):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    return parser.parse_args(argv)


def test_long_spellings_and_the_old_eval_flag_are_aliases():
    assert parse(["--dtype", "float32"]).dtype == "fp32"
    assert parse(["--torch-dtype", "bfloat16"]).dtype == "bf16"
    assert parse(["--dtype", "FP16"]).dtype == "fp16"
    assert parse([]).dtype == "auto"
    with pytest.raises(SystemExit):
        parse(["--dtype", "float8"])


def test_rope_type_offers_every_scheme():
    args = parse(["--rope-type", "llama3", "--context-length", "4k"])
    assert args.rope_type == "llama3" and args.context_length == 4096


def test_auto_means_bf16_only_where_it_is_fast(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("float16", torch.float16)):
        assert resolve_dtype(name, "cpu") == dtype


def test_perplexity_keeps_dtype_uint16_for_token_files():
    from longlora.eval.perplexity import build_parser

    args = build_parser().parse_args(["--data", "x.bin", "--dtype", "uint16", "--dtype", "bf16"])
    assert args.token_dtype == "uint16" and args.dtype == "bf16"
    assert build_parser().parse_args(["--data", "x.bin", "--token-dtype", "uint32"]).token_dtype == "uint32"


def test_load_from_args_loads_with_the_flags(tiny_model_dir):
    args = parse(
        ["--model", str(tiny_model_dir), "--dtype", "fp32", "--device", "cpu", "--context-length", "512"]
    )
    model, tokenizer = models.load_from_args(args, status=None)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.max_position_embeddings == 512 and tokenizer is not None
