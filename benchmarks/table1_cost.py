"""Training time of Table 1's 4x stage under each attention: S2 with sinks and strided keys against S2
and full attention, the protocol of ``benchmarks/reproduce_table1.py`` exactly.

The settings are read from a stage that ``reproduce_table1.py`` trained (its ``longlora_args.json``:
model, book, full fine-tuning at 1024 tokens, batch 8, bf16, learning rate, seed), and the stage is
trained again for ``--steps`` steps with ``python -m longlora.finetune`` under each ``--attentions``
(in a temporary folder, nothing kept). The attentions run in turn, ``--rounds`` times, so that a busy
spell on a shared machine slows one round's runs alike; each run's step time is the median of its steps
after the first (``elapsed_s`` differences in ``train_log.jsonl``). Reported: every run's step time, and
per round each attention's step time over S2's, as the median and range over the rounds.

Usage (after ``benchmarks/reproduce_table1.py`` has trained seed 0):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/table1_cost.py --output results/table1-cost.json
    python benchmarks/table1_cost.py --stage out/reproduce-table1/seed-1/full-s2-1024 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_STAGE = ROOT / "out" / "reproduce-table1" / "seed-0" / "full-s2-1024"
# the stage's settings that are passed on as they were (attention, steps and output are this script's)
PASSED = (
    "mode",
    "method",
    "s2_group_size_ratio",
    "context_length",
    "rope_type",
    "pack",
    "learning_rate",
    "warmup_steps",
    "lr_schedule",
    "weight_decay",
    "max_grad_norm",
    "per_device_batch_size",
    "gradient_accumulation_steps",
    "dtype",
    "seed",
)


def stage_argv(stage: Path) -> list[str]:
    """The finetune arguments of a trained stage, less attention, steps and output folder."""
    record = stage / "longlora_args.json"
    if not record.is_file():
        raise SystemExit(
            f"error: {record} not found: train Table 1 first (OMP_WAIT_POLICY=PASSIVE python "
            "benchmarks/reproduce_table1.py) or pass --stage with a stage folder of its workdir"
        )
    args = json.loads(record.read_text())["args"]
    argv = ["--model", args["model"], "--data", *args["data"]]
    for key in PASSED:
        if args.get(key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(args[key])]
    if args.get("gradient_checkpointing") is False:
        argv.append("--no-gradient-checkpointing")
    return argv


def attention_argv(attention: str, sink_tokens: int, sink_stride: int) -> list[str]:
    if attention == "s2-sink":
        return [
            "--attention",
            attention,
            "--sink-tokens",
            str(sink_tokens),
            "--sink-stride",
            str(sink_stride),
        ]
    return ["--attention", attention]


def run_stage(argv: list[str], steps: int, folder: Path) -> dict:
    """Train ``steps`` steps; returns the step times after the first, their median and the final loss."""
    cmd = [sys.executable, "-m", "longlora.finetune", *argv, "--max-steps", str(steps)]
    cmd += ["--save-steps", str(steps + 1), "--output-dir", str(folder), "--overwrite-output-dir"]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: finetune failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    steps_log = [r for r in log if "elapsed_s" in r and "step" in r]
    elapsed = [r["elapsed_s"] for r in steps_log]
    times = [b - a for a, b in zip(elapsed, elapsed[1:])]
    return {"step_seconds": times, "median_step_s": statistics.median(times), "loss": steps_log[-1]["loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/table1_cost.py", description=__doc__.split("\n\n")[0], epilog=__doc__
    )
    p.add_argument("--stage", type=Path, default=DEFAULT_STAGE, help="a stage folder of reproduce_table1")
    p.add_argument("--attentions", nargs="+", default=["s2", "s2-sink", "full"], help="first: the baseline")
    p.add_argument("--sink-tokens", type=int, default=4, help="--attention s2-sink's --sink-tokens")
    p.add_argument("--sink-stride", type=int, default=8, help="--attention s2-sink's --sink-stride")
    p.add_argument("--steps", type=int, default=6, help="training steps per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=3, help="times every attention runs, in turn")
    p.add_argument("--output", type=Path, help="write the runs and ratios as JSON here")
    args = p.parse_args(argv)
    if args.steps < 3:
        p.error("--steps must be at least 3 (the first step is not timed; a median needs two)")

    from longlora.provenance import run_record

    base = stage_argv(args.stage)
    load = os.getloadavg()[0]
    print(
        f"stage {args.stage} ({' '.join(base)}); {args.rounds} rounds of {', '.join(args.attentions)}, "
        f"{args.steps} steps each; load average {load:.2f}",
        flush=True,
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for attention in args.attentions:
                extra = attention_argv(attention, args.sink_tokens, args.sink_stride)
                r = run_stage(base + extra, args.steps, Path(tmp) / f"{rnd}-{attention}")
                runs.append({"round": rnd, "attention": attention, **r})
                print(
                    f"round {rnd} {attention:<8} step {r['median_step_s']:.3f} s  loss {r['loss']:.4f}",
                    flush=True,
                )
    baseline = args.attentions[0]
    ratios = {}
    for attention in args.attentions[1:]:
        per_round = []
        for rnd in range(args.rounds):
            (a,) = [r for r in runs if r["round"] == rnd and r["attention"] == attention]
            (b,) = [r for r in runs if r["round"] == rnd and r["attention"] == baseline]
            per_round.append(a["median_step_s"] / b["median_step_s"])
        ratios[f"{attention}/{baseline}"] = {
            "median": statistics.median(per_round),
            "range": [min(per_round), max(per_round)],
            "per_round": per_round,
        }
        print(
            f"step time {attention}/{baseline}: median {statistics.median(per_round):.2f}x "
            f"(range {min(per_round):.2f}-{max(per_round):.2f}, {args.rounds} rounds)",
            flush=True,
        )
    after = os.getloadavg()[0]
    print(f"load average after: {after:.2f}")
    if args.output:
        payload = {
            "kind": "table1-cost",
            "provenance": run_record(),
            "stage": str(args.stage),
            "finetune_args": base,
            "sink_tokens": args.sink_tokens,
            "sink_stride": args.sink_stride,
            "steps": args.steps,
            "rounds": args.rounds,
            "load_average": [load, after],
            "runs": runs,
            "step_time_ratios": ratios,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = args.output.with_suffix(args.output.suffix + ".tmp")
        tmp_out.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp_out, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
