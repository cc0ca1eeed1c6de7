"""Choose the laptop recipe's settings by what the extended model scores: short training runs of the bundled
SmolLM2-135M-Instruct from 8k to 16k, each evaluated on development text (Emma, never trained on, and
not the recipe's held-out Pride and Prejudice) with full attention.

Each setting is one ``python -m longlora.finetune`` run (LoRA+, one 16k-token row per step, constant
learning rate after one warm-up step) on ``data/books/train``, then ``python -m longlora.eval.perplexity``
at 2k and 16k on 32k tokens of Emma. The un-tuned references (the base at 2k/8k, Position Interpolation
and YaRN without training at 2k/16k) are evaluated on the same tokens. Compared:

- RoPE scaling: YaRN against linear Position Interpolation (the paper's), same steps and lr;
- learning rate: 1e-4 against 3e-4 (YaRN, S2-Attn);
- the paper's question at equal wall-clock time: S2-Attn against full attention in training, both
  evaluated with full attention (full-attention steps cost ~2.7x as much at 16k, so 3 of them take
  about as long as 8 S2 steps).

Usage (CPU, ~2 hours on 2 cores with native bf16; finished runs are reused)::

    python benchmarks/recipe_settings.py --work out/recipe-settings --output results/recipe-settings.json
    python benchmarks/recipe_settings.py --work out/recipe-settings --collect-only --output results/recipe-settings.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DEV_TEXT = REPO / "data" / "books" / "dev" / "austen-emma.txt"
DEV_OFFSET = 100_000  # tokens of Emma skipped: the development slice is from its middle
DEV_TOKENS = 32_768

# name: (rope, attention, learning rate, steps)
RUNS = {
    "A-yarn-s2-1e-4": ("yarn", "s2", 1e-4, 8),
    "B-linear-s2-1e-4": ("linear", "s2", 1e-4, 8),
    "C-yarn-full-1e-4": ("yarn", "full", 1e-4, 3),
    "D-yarn-s2-3e-4": ("yarn", "s2", 3e-4, 8),
}
# name: (seq lens, extra model flags)
REFERENCES = {
    "base-dev": (["2k", "8k"], []),
    "yarn0-dev": (["2k", "16k"], ["--context-length", "16k", "--rope-type", "yarn"]),
    "pi0-dev": (["2k", "16k"], ["--context-length", "16k", "--rope-type", "linear"]),
}


def train_command(work: Path, name: str) -> list[str]:
    rope, attention, lr, steps = RUNS[name]
    return [
        "-m", "longlora.finetune", "--model", "default", "--data", str(work / "train.bin"),
        "--context-length", "16k", "--rope-type", rope, "--attention", attention, "--learning-rate", f"{lr:g}",
        "--warmup-steps", "1", "--gradient-accumulation-steps", "1", "--max-steps", str(steps),
        "--save-steps", "1000", "--output-dir", str(work / name), "--overwrite-output-dir",
    ]  # fmt: skip


def eval_command(work: Path, name: str) -> list[str]:
    if name in RUNS:
        lens, model = ["2k", "16k"], ["--model", "default", "--adapter", str(work / name)]
    else:
        lens, flags = REFERENCES[name]
        model = ["--model", "default", *flags]
    return [
        "-m", "longlora.eval.perplexity", *model, "--data", str(work / "dev.bin"), "--seq-len", *lens,
        "--no-progress", "--label", name, "--output", str(work / f"{name}.dev.json"),
    ]  # fmt: skip


def prepare(work: Path) -> None:
    """Token files: the training books, and the development slice of Emma."""
    from data_tools.tokenfile import open_token_file, write_token_file

    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "data_tools", "tokenize", "--tokenizer", "default", "--eos", "--quiet"]
    if not (work / "train.bin").is_file():
        subprocess.run(
            [*py, str(REPO / "data" / "books" / "train"), "-o", str(work / "train.bin")], check=True
        )
    if not (work / "dev.bin").is_file():
        subprocess.run([*py, str(DEV_TEXT), "-o", str(work / "emma.bin")], check=True)
        tokens = open_token_file(work / "emma.bin").tokens
        piece = tokens[DEV_OFFSET : DEV_OFFSET + DEV_TOKENS].tolist()
        write_token_file(work / "dev.bin", [piece], vocab_size=49152, tokenizer="SmolLM2-135M-Instruct")


def run(work: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    prepare(work)
    for name in RUNS:
        if not (work / name / "adapter_config.json").is_file():
            subprocess.run([sys.executable, *train_command(work, name)], check=True, env=env)
        if not (work / f"{name}.dev.json").is_file():
            subprocess.run([sys.executable, *eval_command(work, name)], check=True, env=env)
    for name in REFERENCES:
        if not (work / f"{name}.dev.json").is_file():
            subprocess.run([sys.executable, *eval_command(work, name)], check=True, env=env)


def collect(work: Path) -> dict:
    from longlora.provenance import run_record

    def ppl(name: str) -> dict:
        path = work / f"{name}.dev.json"
        if not path.is_file():
            return {}
        return {str(r["seq_len"]): round(r["ppl"], 3) for r in json.loads(path.read_text())["results"]}

    rows = []
    for name, (rope, attention, lr, steps) in RUNS.items():
        log_path = work / name / "train_log.jsonl"
        log = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.is_file() else []
        step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(log, log[1:])]
        rows.append(
            {
                "name": name, "rope": rope, "attention": attention, "learning_rate": lr, "steps": steps,
                "steps_done": len(log), "train_seconds": log[-1]["elapsed_s"] if log else None,
                "step_seconds_median": sorted(step_s)[len(step_s) // 2] if step_s else None,
                "losses": [r["loss"] for r in log], "dev_ppl": ppl(name),
                "train_command": shlex.join(["python", *train_command(work, name)]),
                "eval_command": shlex.join(["python", *eval_command(work, name)]),
            }
        )  # fmt: skip
    refs = {
        name: {"dev_ppl": ppl(name), "eval_command": shlex.join(["python", *eval_command(work, name)])}
        for name in REFERENCES
    }
    return {
        "kind": "recipe-settings",
        "provenance": run_record(),
        "dev_text": f"{DEV_TEXT.relative_to(REPO)} tokens {DEV_OFFSET}..{DEV_OFFSET + DEV_TOKENS}",
        "protocol": "disjoint windows (longlora.eval.perplexity --protocol sliding, stride = seq len), bf16",
        "runs": rows,
        "references": refs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--work", type=Path, default=Path("out/recipe-settings"), help="run folders and token files"
    )
    p.add_argument(
        "--output", type=Path, default=None, help="summary JSON (e.g. results/recipe-settings.json)"
    )
    p.add_argument("--collect-only", action="store_true", help="summarise finished runs, train nothing")
    args = p.parse_args(argv)
    if not args.collect_only:
        run(args.work)
    summary = collect(args.work)
    print(f"{'run':20s} {'steps':>5s} {'train s':>8s} {'ppl 2k':>8s} {'ppl 16k':>8s}")
    for r in summary["runs"]:
        print(
            f"{r['name']:20s} {r['steps_done']:5d} {r['train_seconds'] or 0:8.0f} "
            f"{r['dev_ppl'].get('2048', float('nan')):8.2f} {r['dev_ppl'].get('16384', float('nan')):8.2f}"
        )
    for name, r in summary["references"].items():
        print(f"{name:20s} {'':5s} {'':8s} " + "  ".join(f"{k}: {v:.2f}" for k, v in r["dev_ppl"].items()))
    if args.output:
        from data_tools.files import atomic_write_text

        atomic_write_text(args.output, json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
