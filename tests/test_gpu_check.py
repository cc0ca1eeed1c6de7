"""benchmarks/gpu_check.sh, the prepared GPU check, in its CPU smoke shape (``--device cpu --quick``).

What is checked is that every step runs the real benchmark scripts and writes the files a GPU run would
write, with their provenance, and that the CUDA-only steps are skipped with their reason (never silently).
No speed is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="gpu_check.sh is a bash script")


def _run(*args: str, work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(work), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    done = _run("--device", "cpu", "--quick", str(out), work=tmp_path_factory.mktemp("work"))
    return out, done


def test_cpu_quick_run_writes_every_result_with_provenance(quick_run):
    out, done = quick_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "attention-packed.json",
        "attention-rows.json",
        "gpu-check.json",
        "gpu-check.log",
        "max-context-lora-plus.json",
        "train-step.json",
    ]
    summary = json.loads((out / "gpu-check.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {
        "tests": "skipped",
        "attention-rows": "ran",
        "attention-packed": "ran",
        "train-step-chunked": "ran",
        "train-step-chunked-tiled": "ran",
        "train-step-liger": "skipped",
        "train-step-liger-offload": "skipped",
        "train-step-liger-offload-tiled": "skipped",
        "max-context-lora-plus": "ran",
        "max-context-qlora": "skipped",
    }
    reasons = {s["name"]: s["detail"] for s in summary["steps"] if s["status"] == "skipped"}
    assert "need a GPU" in reasons["tests"] and "CUDA only" in reasons["train-step-liger-offload"]
    assert "GPU measurement" in reasons["max-context-qlora"]
    assert summary["device"] == "cpu" and summary["quick"] is True
    assert summary["provenance"]["command"] == f"bash benchmarks/gpu_check.sh --device cpu --quick {out}"
    assert summary["provenance"]["machine"]["cpu_cores"] >= 1 and summary["packages"]["torch"]
    log = (out / "gpu-check.log").read_text()
    assert "=== train-step-liger: skipped:" in log and "=== max-context-lora-plus: ran" in log


def test_attention_compares_s2_with_full_attention_on_rows_and_packed_mixes(quick_run):
    out, _ = quick_run
    rows = json.loads((out / "attention-rows.json").read_text())
    assert rows["provenance"]["commit"] and {r["impl"] for r in rows["results"]} == {"s2", "full"}
    assert all(r["seq_len"] == 512 and r["seconds"] > 0 for r in rows["results"])
    packed = json.loads((out / "attention-packed.json").read_text())["results"]
    assert [r["mix"] for r in packed] == ["lognormal-600", "lognormal-150", "long+tiny"]
    assert all(r["seq_len"] == 1024 and r["packed"] > 0 and r["one_by_one"] > 0 for r in packed)
    assert packed[0]["full"] > 0  # full attention over the row, measured once beside the first mix


def test_training_step_variants_and_the_context_search(quick_run):
    out, _ = quick_run
    variants = json.loads((out / "train-step.json").read_text())["variants"]
    assert set(variants) == {"chunked", "chunked-tiled"}
    losses = []
    for name, run in variants.items():
        assert run["provenance"]["commit"]
        (r,) = run["results"]
        assert r["tokens"] == 256 and r["loss_backend"] == "chunked" and r["peak_mb"] > 0
        assert r["tiled_mlp"] is (name == "chunked-tiled")
        losses.append(r["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-3)  # tiling changes memory, not the loss

    search = json.loads((out / "max-context-lora-plus.json").read_text())
    assert search["method"] == "lora+" and search["tiled_mlp"] is True and search["complete"] is True
    assert [t["length"] for t in search["trials"]] == [1024] and search["max_context"] == 1024
    assert search["tokenizer"] == "bytes" and search["provenance"]["commit"]


def test_bad_arguments_say_what_to_do(tmp_path):
    done = _run("--device", "cpu", str(tmp_path), work=tmp_path)
    assert done.returncode == 2 and "add --quick" in done.stderr
    done = _run("--device", "tpu", work=tmp_path)
    assert done.returncode == 2 and "--device must be cuda or cpu" in done.stderr
    assert not (tmp_path / "gpu-check.json").exists()
