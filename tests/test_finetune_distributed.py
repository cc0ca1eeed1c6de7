"""torchrun with 2 CPU processes (gloo): DDP over 2 ranks x batch 1 equals 1 process x batch 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_char_tokenizer, tiny_model
from safetensors.torch import load_file

from longlora.finetune import main

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    data = tmp_path / "d.txt"
    words = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 30
    data.write_text(words[: 8 * 256])  # 8 full rows of 256 characters (= tokens): equal tokens per row
    common = ["--model", str(base), "--data", str(data), "--context-length", "256", "--max-steps", "2"]
    common += ["--gradient-accumulation-steps", "1", "--learning-rate", "1e-2", "--warmup-steps", "0"]
    common += ["--dtype", "fp32", "--attention", "s2"]

    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "longlora.finetune", *common, "--output-dir", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    assert res.returncode == 0, res.stderr[-3000:]

    assert main([*common, "--per-device-batch-size", "2", "--output-dir", str(tmp_path / "single")]) == 0

    meta = json.loads((tmp_path / "ddp" / "longlora_args.json").read_text())
    assert meta["resolved"]["world_size"] == 2
    log = [json.loads(x) for x in (tmp_path / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and log[0]["tokens"] == 2 * 256
    single = [json.loads(x) for x in (tmp_path / "single" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in single], abs=1e-5)

    a = load_file(tmp_path / "ddp" / "adapter_model.safetensors")
    b = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
