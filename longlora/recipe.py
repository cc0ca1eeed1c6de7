"""python -m longlora.recipe: from text to a LongLoRA-extended, merged model and its evaluation report.

One command runs the whole loop, each stage a ``python -m`` command of this project (printed, and
recorded in ``OUTPUT/recipe.json`` with its time, the git commit, the machine and the date):

1. ``train``: ``longlora.finetune --config CONFIG --data TRAIN`` (context extension: RoPE scaling,
   S2-Attn, LoRA+) into ``OUTPUT/adapter``;
2. ``merge``: ``longlora.merge`` into ``OUTPUT/merged``, a plain transformers model whose config
   carries the RoPE scaling, the 16k window and the serving profile (``--profile``);
3. ``eval``: ``longlora.eval.perplexity`` / ``passkey`` (and ``ruler`` with ``--eval full``) on
   held-out text, for the base model and the extended one (``--eval full`` adds the un-tuned
   Position Interpolation and YaRN extensions of the base);
4. ``report``: ``longlora.eval.report`` -> ``OUTPUT/report.md`` and its plots.

Before it starts, it prints the plan with a time estimate per stage (rates measured on a 2-core CPU
with native bf16, scaled to this machine's threads and dtype; ``--dry-run`` stops there). Every stage
shows a progress bar. Rerunning the same command resumes: finished stages are skipped and training
continues from its last checkpoint. Evaluation text is kept out of training by file: a run whose
``--eval-data`` shares a file (by content) with ``--train-data`` is refused.

Usage (CPU example first)::

    # the laptop recipe: the bundled SmolLM2-135M-Instruct from 8k to 16k on the repository's books
    python -m longlora.recipe --output-dir out/smollm2-16k
    python app.py --model out/smollm2-16k/merged          # serve it

    # see the plan and its time estimate only
    python -m longlora.recipe --output-dir out/smollm2-16k --dry-run

    # the before/after evidence of the README (adds un-tuned PI/YaRN rows and RULER): ~1.5 h more on a CPU
    python -m longlora.recipe --output-dir out/smollm2-16k --eval full

    # the same recipe at full size on a GPU, on your own long text (finetune flags pass through)
    python -m longlora.recipe --config configs/smollm2-135m-16k.yaml --train-data pg19/train.bin \\
        --output-dir out/smollm2-16k-gpu --eval full
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.errors import InputError
from data_tools.files import atomic_write_text, sha256_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "smollm2-135m-16k-laptop.yaml"
DEFAULT_TRAIN = REPO / "data" / "books" / "train"
DEFAULT_EVAL = REPO / "data" / "books" / "heldout"
RECORD_FILE = "recipe.json"
EVAL_LEVELS = ("quick", "full", "none")

# Speed of this project's commands on the bundled SmolLM2-135M-Instruct, bf16, 2 threads of a CPU with
# AVX512-BF16 (results/recipe-smollm2-16k.json, results/recipe-settings.json). Seconds per token grow
# linearly with how many tokens each token attends to (its span): t(span) = a + b * span.
# Training: span = the context for full attention, the group size for S2/short groups.
TRAIN_S_PER_TOKEN = (0.0036, 1.16e-6)  # (a, b): S2 16k (G=4096) 119 tok/s, full 16k 44 tok/s
FORWARD_S_PER_TOKEN = (0.0016, 5.6e-7)  # (a, b): 8k 256 tok/s, 16k 161 tok/s
DECODE_S_PER_TOKEN = 0.15  # one generated token at 4k-16k of context
REFERENCE_MACHINE = "2 threads of a CPU with AVX512-BF16, bf16"
FP32_SLOWDOWN = 3.0  # fp32 against native bf16 on the same CPU


@dataclass
class Step:
    """One stage command: ``python -m MODULE ARGS``; done when ``output`` is complete."""

    name: str
    module: str
    args: list[str]
    output: Path
    estimate_s: float | None = None
    env: dict = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return ["-m", self.module, *self.args]

    def command(self) -> str:
        return shlex.join(["python", *self.argv])


# ----------------------------------------------------------------------------- estimates


def speed_factor(dtype: str, threads: int, device: str) -> float | None:
    """How much slower than the reference machine this one runs (None: no estimate, e.g. a GPU)."""
    if device != "cpu":
        return None
    factor = 2 / max(1, threads)
    return factor * (FP32_SLOWDOWN if dtype == "fp32" else 1.0)


def train_seconds(tokens: int, span: int, factor: float | None) -> float | None:
    a, b = TRAIN_S_PER_TOKEN
    return None if factor is None else tokens * (a + b * span) * factor


def forward_seconds(tokens: int, length: int, factor: float | None) -> float | None:
    """Perplexity over ``tokens`` tokens in windows of ``length`` (a window's tokens attend to half
    of it on average)."""
    a, b = FORWARD_S_PER_TOKEN
    return None if factor is None else tokens * (a + b * length / 2) * factor


def trial_seconds(length: int, new_tokens: int, factor: float | None) -> float | None:
    """One passkey/RULER sample: the prompt's forward pass, then the answer token by token."""
    if factor is None:
        return None
    return forward_seconds(length, length, factor) + new_tokens * DECODE_S_PER_TOKEN * factor


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "<1 min"
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


# ----------------------------------------------------------------------------- data


def _files(paths: list[str]) -> list[Path]:
    from data_tools.reader import find_sources

    return [source.path for source in find_sources(paths, flag="--data")]


def check_held_out(train: list[str], evaluation: list[str]) -> None:
    """Refuse evaluation text that is also training text (the same file, by content)."""
    train_files = _files(train)
    seen = {sha256_file(p): p for p in train_files}
    shared = [(p, seen[d]) for p in _files(evaluation) if (d := sha256_file(p)) in seen]
    if shared:
        pairs = "; ".join(f"{e} = {t}" for e, t in shared)
        raise InputError(
            f"the evaluation text is also training text ({pairs}): a model is not tested on what it "
            "learned; pass other --eval-data, or take the file out of --train-data"
        )


# ----------------------------------------------------------------------------- plan


@dataclass
class Settings:
    """What the plan needs from the command line and the finetune config."""

    cfg: object  # longlora.training.config.FinetuneConfig
    base: str
    context_length: int
    original_length: int
    out: Path
    eval_data: list[str]
    eval_level: str
    ppl_tokens: int
    profile: str | None
    factor: float | None


def eval_lengths(context: int) -> list[int]:
    """Perplexity lengths: an eighth, a quarter, half of the extended context and all of it (16k: 2k,
    4k, 8k, 16k); passkey and RULER use the last three."""
    return [context // 8, context // 4, context // 2, context]


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def plan(s: Settings, finetune_args: list[str]) -> list[Step]:
    """The stages in order: train, merge, then (unless ``--eval none``) each model's evaluations and the
    report."""
    steps = _train_and_merge(s, finetune_args)
    if s.eval_level == "none":
        return steps
    models = _eval_models(s, s.out / "merged")
    steps += _perplexity_steps(s, models)
    tested = [m for m in models if "untuned" not in m[0]]  # un-tuned rows: perplexity only
    steps += _passkey_steps(s, tested)
    if s.eval_level == "full":
        steps += _ruler_steps(s, tested)
    results = [str(st.output) for st in steps if st.module.startswith("longlora.eval.")]
    steps.append(
        Step(
            "report",
            "longlora.eval.report",
            [*results, "--output", str(s.out / "report.md"), "--plot-prefix", str(s.out / "report")],
            s.out / "report.md",
            5,
        )
    )
    return steps


def _train_and_merge(s: Settings, finetune_args: list[str]) -> list[Step]:
    cfg = s.cfg
    adapter, merged = s.out / "adapter", s.out / "merged"
    rows = cfg.max_steps * cfg.gradient_accumulation_steps * cfg.per_device_batch_size
    if cfg.attention == "full":
        span = s.context_length
    else:
        span = cfg.s2_group_size or int(s.context_length * (cfg.s2_group_size_ratio or 0.25))
    train = Step(
        "train",
        "longlora.finetune",
        [*finetune_args, "--output-dir", str(adapter), "--resume"],
        adapter,
        train_seconds(rows * s.context_length, span, s.factor),
    )
    merge_args = ["--adapter", str(adapter), "--output", str(merged), "--overwrite"]
    if s.profile:
        merge_args += ["--profile", s.profile]
    return [train, Step("merge", "longlora.merge", merge_args, merged, 60 * (s.factor or 0) or None)]


def _eval_models(s: Settings, merged: Path) -> list[tuple[str, list[str], list[int], str]]:
    """(name, model arguments, lengths, label) of each model evaluated: the base within its window, at
    ``--eval full`` un-tuned PI and YaRN, and the extended model."""
    long_lengths = eval_lengths(s.context_length)
    base_lengths = [n for n in long_lengths if n <= s.original_length]
    models = [("base", ["--model", s.base], base_lengths, f"base ({_k(s.original_length)} window)")]
    if s.eval_level == "full":
        for rope, name in (("linear", "PI"), ("yarn", "YaRN")):
            models.append(
                (
                    f"{rope}-untuned",
                    ["--model", s.base, "--context-length", str(s.context_length), "--rope-type", rope],
                    long_lengths,
                    f"{name} to {_k(s.context_length)}, no training",
                )
            )
    models.append(("extended", ["--model", str(merged)], long_lengths, f"LongLoRA {_k(s.context_length)}"))
    return models


def _perplexity_steps(s: Settings, models) -> list[Step]:
    data = ["--data", *s.eval_data, "--max-tokens", str(s.ppl_tokens)]
    steps = []
    for name, model, lengths, label in models:
        out = s.out / "eval" / f"ppl-{name}.json"
        est = _sum(forward_seconds(s.ppl_tokens, n, s.factor) for n in lengths)
        args = [*model, *data, "--seq-len", *map(_k, lengths), "--label", label, "--output", str(out)]
        steps.append(Step(f"ppl-{name}", "longlora.eval.perplexity", args, out, est))
    return steps


def _passkey_steps(s: Settings, models) -> list[Step]:
    depths, seeds = ["0", "0.25", "0.5", "0.75", "1"], ["0"]
    steps = []
    for name, model, lengths, label in models:
        lengths = [n for n in lengths if n >= s.context_length // 4]
        out = s.out / "eval" / f"passkey-{name}.json"
        est = _sum(trial_seconds(n, 8, s.factor) * len(depths) * len(seeds) for n in lengths)
        args = [*model, "--lengths", *map(_k, lengths), "--depths", *depths, "--seeds", *seeds, *RAW_PROMPT]
        steps.append(
            Step(
                f"passkey-{name}",
                "longlora.eval.passkey",
                [*args, "--label", label, "--output", str(out)],
                out,
                est,
            )
        )
    return steps


def _ruler_steps(s: Settings, models) -> list[Step]:
    steps = []
    for name, model, lengths, label in models:
        lengths = [n for n in lengths if n >= s.context_length // 4]
        out = s.out / "eval" / f"ruler-{name}.json"
        est = _sum(trial_seconds(n, 40, s.factor) * len(RULER_TASKS) * RULER_SAMPLES for n in lengths)
        args = [
            *model,
            "--tasks",
            *RULER_TASKS,
            "--lengths",
            *map(_k, lengths),
            "--samples",
            str(RULER_SAMPLES),
        ]
        args += [*RAW_PROMPT, "--label", label, "--output", str(out)]
        steps.append(Step(f"ruler-{name}", "longlora.eval.ruler", args, out, est))
    return steps


# Passkey and RULER prompts without the chat template: the bundled model finds a passkey at 1k-4k every
# time with the raw prompt and 2 times in 10 with its chat template (docs/eval.md), and context-extension
# training reads raw text.
RAW_PROMPT = ["--chat-template", "off"]
# RULER with --eval full: two needle tasks the bundled 135M model solves at 4k (one key; one key among
# distractor keys) and variable tracking (multi-hop), 6 samples per task and length, so a length's
# average rests on 18 samples and one sample moves a task's cell by 1/6.
RULER_TASKS = ["niah_single_1", "niah_multikey_1", "vt"]
RULER_SAMPLES = 6


def _sum(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


# ----------------------------------------------------------------------------- running


def is_done(step: Step) -> bool:
    """Whether a stage's output is complete (so a rerun skips it)."""
    out = step.output
    if step.name == "train":
        record = out / "longlora_args.json"
        if not record.is_file():
            return False
        data = json.loads(record.read_text())
        return data.get("status") == "complete"
    if step.name == "merge":
        return (out / "merge_report.json").is_file() and (out / "config.json").is_file()
    if step.name == "report":
        return False  # cheap: always rewritten from the current results
    if not out.is_file():
        return False
    try:
        payload = json.loads(out.read_text())
    except ValueError:
        return False
    return payload.get("complete", True) is not False


def run_steps(steps: list[Step], record: dict, out: Path, say=print) -> int:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    left = _sum(st.estimate_s for st in steps if not is_done(st))
    started = time.perf_counter()
    for i, step in enumerate(steps, 1):
        entry = record["stages"].setdefault(step.name, {})
        entry["command"] = step.command()
        if is_done(step) and not (step.name == "merge" and _newer(steps[0].output, step.output)):
            say(f"[{i}/{len(steps)}] {step.name}: done already ({step.output})")
            continue
        say(
            f"\n[{i}/{len(steps)}] {step.name} (estimate {format_duration(step.estimate_s)}; recipe "
            f"{format_duration(left)} left)\n  {step.command()}",
        )
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, *step.argv], env={**env, **step.env})
        entry.update(seconds=round(time.perf_counter() - t0, 1), returncode=code)
        _write_record(out, record)
        if code != 0:
            say(
                f"\nstage {step.name} failed (exit {code}); fix what it says above, then rerun the same "
                "command: finished stages are kept and training resumes from its last checkpoint"
            )
            return code
        if left is not None and step.estimate_s is not None:
            left = max(0.0, left - step.estimate_s)
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["status"] = "complete"
    _write_record(out, record)
    say(
        f"\ndone in {format_duration(record['seconds'])}: {out / 'merged'} (serve it: python app.py --model {out / 'merged'})"
    )
    if (out / "report.md").is_file():
        say(f"report: {out / 'report.md'}")
    return 0


def _newer(a: Path, b: Path) -> bool:
    """The adapter was retrained after the merge: merge again."""
    ra, rb = a / "longlora_args.json", b / "merge_report.json"
    return ra.is_file() and rb.is_file() and ra.stat().st_mtime > rb.stat().st_mtime


def _write_record(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m longlora.recipe",
        description="Text -> LongLoRA context extension -> merged model -> evaluation report, in one command. "
        "Flags it does not know are passed to python -m longlora.finetune (e.g. --max-steps 64).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage (CPU example first)::", 1)[1],
    )
    p.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="finetune recipe YAML (default: %(default)s)"
    )
    p.add_argument(
        "--output-dir", required=True, help="folder for adapter/, merged/, eval/, report.md, recipe.json"
    )
    p.add_argument(
        "--train-data",
        nargs="+",
        default=[str(DEFAULT_TRAIN)],
        help="training text: files, folders, globs or token files (default: %(default)s)",
    )
    p.add_argument(
        "--eval-data",
        nargs="+",
        default=[str(DEFAULT_EVAL)],
        help="held-out evaluation text, never trained on (default: %(default)s)",
    )
    p.add_argument(
        "--eval",
        default="quick",
        choices=EVAL_LEVELS,
        help="quick: perplexity and passkey of base and extended model (~30 min on 2 cores); full: the "
        "same plus un-tuned PI/YaRN perplexity and RULER (~1.5 h more); none: skip",
    )
    p.add_argument(
        "--ppl-tokens",
        default=None,
        help="tokens of --eval-data scored at each length (default: 32k, two windows at 16k)",
    )
    p.add_argument(
        "--profile",
        default="auto",
        help="serving profile written into the merged model's config (data_tools.profiles); auto: the "
        "extended profile of the base when there is one, else the base's own",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and its time estimate, run nothing")
    return p


def settings(args, finetune_args: list[str]) -> Settings:
    from transformers import AutoConfig

    from data_tools.profiles import extended_profile_name, profile_name_for_config
    from longlora.model_flags import parse_length
    from longlora.models import resolve_dtype, resolve_model_path
    from longlora.position import context_window, original_context_length
    from longlora.training.config import parse_args as parse_finetune

    cfg = parse_finetune(finetune_args + ["--output-dir", str(Path(args.output_dir) / "adapter")])
    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model))
    original = original_context_length(config)
    context = cfg.context_length or context_window(config)
    level = args.eval
    ppl_tokens = parse_length(args.ppl_tokens) if args.ppl_tokens else 32768
    profile = args.profile
    if profile == "auto":
        profile = extended_profile_name(profile_name_for_config(config))
    import torch

    dtype = resolve_dtype(cfg.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    factor = speed_factor("fp32" if dtype == torch.float32 else "bf16", torch.get_num_threads(), device)
    return Settings(
        cfg,
        cfg.model,
        context,
        original,
        Path(args.output_dir),
        args.eval_data,
        level,
        ppl_tokens,
        profile,
        factor,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    finetune_args = ["--config", args.config, "--data", *args.train_data, *extra]
    try:
        check_held_out(args.train_data, args.eval_data)
        s = settings(args, finetune_args)
    except ValueError as err:  # InputError and the finetune config's own errors
        print(f"error: {err}", file=sys.stderr)
        return 2
    steps = plan(s, finetune_args)
    total = _sum(st.estimate_s for st in steps)
    print(
        f"LongLoRA recipe: {s.base} from {_k(s.original_length)} to {_k(s.context_length)} tokens "
        f"({s.cfg.attention} attention, {s.cfg.rope_type} RoPE, {s.cfg.method}, {s.cfg.max_steps} steps x "
        f"{s.cfg.gradient_accumulation_steps * s.cfg.per_device_batch_size} rows, lr {s.cfg.learning_rate:g}) "
        f"-> {s.out}"
    )
    for st in steps:
        print(f"  {st.name:18s} {format_duration(st.estimate_s):>12s}  {'(done)' if is_done(st) else ''}")
    where = (
        "" if s.factor is None else f" (rates measured on {REFERENCE_MACHINE}, scaled x{s.factor:.1f} here)"
    )
    print(f"  {'total':18s} {format_duration(total):>12s}{where}")
    if args.dry_run:
        return 0
    from longlora.provenance import run_record

    record_path = s.out / RECORD_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    provenance = run_record(["-m", "longlora.recipe", *argv])
    record.setdefault("runs", []).append(provenance)  # every invocation (a rerun resumes or adds stages)
    record.update(
        kind="recipe",
        provenance=provenance,
        config=dataclasses.asdict(s.cfg),
        context_length=s.context_length,
        estimate_s=None if total is None else round(total),
        status="running",
    )
    record.setdefault("stages", {})
    _write_record(s.out, record)
    return run_steps(steps, record, s.out)


if __name__ == "__main__":
    raise SystemExit(main())
