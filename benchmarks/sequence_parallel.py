"""Training step time on a CPU: 2 processes sharing every row (``--sequence-parallel 2``) vs 1 process.

Both sides train the same rows with ``python -m longlora.finetune`` (LoRA+, S2-Attn, fp32, gradient
checkpointing) on the same cores: one process with ``--threads`` threads, and ``torchrun`` with 2
processes of ``threads / 2`` threads each, every row split between them (DeepSpeed Ulysses over gloo).
The model is SmolLM2-135M's shape (30 layers, hidden 576, the bundled tokenizer) with random weights and
8 query / 2 key-value heads instead of 9 / 3, which N = 2 cannot split. Both sides compute the loss through
the model's logits (``--no-chunked-loss`` for the one process: under sequence parallelism the loss takes
the model's own forward), so the comparison is the attention and the exchanges, not two loss paths.

Reported per side, from this one run: the step times after the first (``elapsed_s`` differences in
``train_log.jsonl``), their median, tokens/s from it, the first step's loss (the two must agree: the same
tokens through the same weights), the largest process's peak RSS, and the load average before and
after, since the machine may be shared. Then the ratio of the medians.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/sequence_parallel.py --output results/sequence-parallel-cpu.json
    python benchmarks/sequence_parallel.py --quick            # a 2-layer model, 256 tokens: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BOOK = ROOT / "data" / "books" / "dev" / "austen-emma.txt"


def _model_dir(folder: Path, layers: int, context_length: int) -> Path:
    """SmolLM2-135M's config with 8 query / 2 kv heads and random weights, beside the bundled tokenizer; its
    window is the row length (no Position Interpolation: random weights have nothing to extend)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from longlora.models import resolve_model_path

    bundled = resolve_model_path("default")
    config = AutoConfig.from_pretrained(bundled)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 8, 2, 64
    config.num_hidden_layers, config.max_position_embeddings = layers, context_length
    torch.manual_seed(0)
    out = folder / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(bundled).save_pretrained(out)
    return out


def _run(command: list[str], threads: int, out: Path) -> dict:
    """Run one side in a child process (so that its peak RSS is its own); return its timings."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    env["TOKENIZERS_PARALLELISM"] = "false"
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *command], env=env, cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(log, log[1:])]  # the first step: warm-up
    median = statistics.median(steps)
    return {
        "command": " ".join(command),
        "threads_per_process": threads,
        "step_s": [round(s, 3) for s in steps],
        "median_step_s": round(median, 3),
        "tokens_per_s": round(log[0]["tokens"] / median, 2),
        "first_step_loss": log[0]["loss"],
        "peak_rss_mib_largest_process": round(int(done.stdout.split()[-1]) / 1024, 1),
        "wall_s": round(wall, 1),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--context-length", type=int, default=4096, help="tokens per row (default %(default)s)")
    p.add_argument(
        "--steps", type=int, default=4, help="steps per side, the first untimed (default %(default)s)"
    )
    p.add_argument("--layers", type=int, default=30, help="decoder layers (default %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads in all, per side (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="2 layers, 256 tokens, 3 steps: a smoke run")
    p.add_argument("--output", type=Path, help="write the result as JSON (with provenance)")
    args = p.parse_args(argv)
    if args.quick:
        args.context_length, args.steps, args.layers = 256, 3, 2
    if args.threads % 2:
        p.error("--threads must be even: the 2 processes get half each")

    with tempfile.TemporaryDirectory(prefix="sequence-parallel-") as tmp:
        tmp = Path(tmp)
        model = _model_dir(tmp, args.layers, args.context_length)
        data = tmp / "book.txt"
        data.write_text(BOOK.read_text()[: 12 * args.context_length * (args.steps + 1)])
        common = ["--model", str(model), "--data", str(data), "--context-length", str(args.context_length)]
        common += ["--max-steps", str(args.steps), "--gradient-accumulation-steps", "1", "--dtype", "fp32"]
        common += ["--attention", "s2", "--no-chunked-loss", "--save-steps", str(args.steps)]
        single = [sys.executable, "-m", "longlora.finetune", *common, "--output-dir", str(tmp / "one")]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        split = [*torchrun, "-m", "longlora.finetune", *common, "--sequence-parallel", "2"]
        split += ["--output-dir", str(tmp / "sp")]
        one = _run(single, args.threads, tmp / "one")
        print(f"1 process x {args.threads} threads: {one['median_step_s']} s/step", file=sys.stderr)
        sp = _run(split, args.threads // 2, tmp / "sp")
        print(f"2 processes x {args.threads // 2}: {sp['median_step_s']} s/step", file=sys.stderr)

    ratio = sp["median_step_s"] / one["median_step_s"]
    result = {
        "context_length": args.context_length,
        "layers": args.layers,
        "heads": "8 query / 2 key-value, head dim 64, hidden 576 (SmolLM2-135M's shape), random weights",
        "timed_steps_per_side": args.steps - 1,
        "one_process": one,
        "sequence_parallel_2": sp,
        "step_time_ratio_sp_over_one": round(ratio, 3),
        "nice": os.nice(0),  # the scheduling priority both sides inherited
        "note": "one run of each side, one after the other, on a machine that may run other jobs: see the "
        "load averages",
    }
    print(
        f"{args.context_length} tokens/row, {args.layers} layers: 1 process x {args.threads} threads "
        f"{one['median_step_s']} s/step, 2 processes x {args.threads // 2} (--sequence-parallel 2) "
        f"{sp['median_step_s']} s/step: {ratio:.2f}x the time; peak RSS of the largest process "
        f"{one['peak_rss_mib_largest_process']} vs {sp['peak_rss_mib_largest_process']} MiB; first-step "
        f"loss {one['first_step_loss']} vs {sp['first_step_loss']}"
    )
    if args.output:
        from longlora.provenance import run_record

        payload = {"kind": "sequence-parallel-cpu", "provenance": run_record(), **result}
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
