"""Reproduce the paper's Table 1 (and Table 6) at small scale on a CPU, with this project's own commands.

The claim (LongLoRA Sec. 3.2, Table 1): a model whose context is extended with Position Interpolation
and fine-tuned with S2-Attn (short, shifted groups) reaches the perplexity of one fine-tuned with full
attention, while short attention *without* the shift falls behind as the target length grows; every
model is tested with full attention (Table 6: trained with S2-Attn, tested with full attention).

What this script does, end to end:

1. trains a byte-level BPE tokenizer on the training book (the held-out book is never seen);
2. pre-trains a small Llama-architecture model from scratch at the short context (default 256 tokens)
   with ``python -m longlora.finetune --method full --attention full``;
3. extends it to each target length (default 2x and 4x = 512 and 1024, the ratios of the paper's 8k and
   16k over Llama 2's 4k; ``--targets 512 1024 2048`` adds its 32k) with Position Interpolation and the same number of fine-tuning steps
   and tokens under each regime: full attention, short attention without shift (``--attention
   short``) and S2-Attn (``--attention s2``), group size = 1/4 of the target as in the paper;
   LoRA+ rows (``--method lora+``) are added at ``--lora-targets`` (e.g. ``--lora-targets 1024``);
4. evaluates every model with full attention (``python -m longlora.eval.perplexity``) on the held-out
   book at its target length and at the short length, plus the extended model with no fine-tuning;
5. repeats for each seed (initialisation, data order) and prints the table in the paper's shape
   (rows: regimes, columns: target lengths), writes a JSON and a plot.

Every stage's output is kept in ``--workdir``; a rerun (after a crash or a kill) skips what is done.

Usage (CPU; about 42 minutes on 2 cores with the defaults, two seeds)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py --quick            # smoke run, ~30 s
    # the shorter pre-training with LoRA+ rows of results/table1-small-pretrain300.json
    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py --pretrain-steps 300 --lora-targets 1024 \
        --workdir out/table1-pretrain300 --output results/table1-small-pretrain300.json \
        --plot docs/table1-small-pretrain300.png
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# Real books live in shared/fixtures beside the repository; LONGLORA_FIXTURES overrides.
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or ROOT.parent / "shared" / "fixtures")

REGIMES = ("full", "short", "s2")
REGIME_NAMES = {
    "full": "Full attention",
    "short": "Short attention, no shift",
    "s2": "S2-Attn (short + shift)",
    "none": "PI, no fine-tuning",
}
METHOD_NAMES = {"full": "full FT", "lora+": "LoRA+"}
EOS = "<|endoftext|>"


@dataclass
class Settings:
    """Everything that decides the numbers; a workdir holds the results of one Settings only."""

    train_book: str
    eval_book: str
    vocab_size: int = 4096
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    short_len: int = 256
    targets: list[int] = field(default_factory=lambda: [512, 1024])
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    lora_targets: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    pretrain_steps: int = 900
    pretrain_batch: int = 16
    pretrain_lr: float = 2e-3
    finetune_steps: int = 60
    finetune_tokens_per_step: int = 8192
    finetune_lr: float = 5e-4
    lora_lr: float = 1e-3
    warmup_steps: int = 10
    eval_tokens: int = 49152
    dtype: str = "bf16"

    def key(self) -> dict:
        """The settings that decide results (seeds may grow between runs of one workdir)."""
        d = asdict(self)
        for name in ("seeds", "targets", "regimes", "lora_targets"):
            d.pop(name)
        return d


# ----------------------------------------------------------------------------- stages


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_command(module: str, argv: list[str], *, quiet: bool = True) -> None:
    """Run ``python -m module argv`` in this process (same code path as the command line)."""
    import importlib

    log(f"python -m {module} {' '.join(argv)}")
    main = importlib.import_module(module).main
    sink = io.StringIO()
    if quiet:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            code = main(argv)
    else:
        code = main(argv)
    if code:
        raise SystemExit(f"python -m {module} failed (exit {code}):\n{sink.getvalue()[-4000:]}")


def train_tokenizer(s: Settings, out: Path) -> Path:
    """Byte-level BPE on the training book only, saved as a transformers tokenizer folder."""
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=s.vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([s.train_book], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def init_model(s: Settings, tokenizer_dir: Path, seed: int, out: Path) -> Path:
    """A randomly initialised Llama-architecture model whose window is the short length."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=(s.hidden_size * 8 // 3 + 31) // 32 * 32,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=s.short_len,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def finetune(model: Path, out: Path, argv: list[str]) -> Path:
    """``python -m longlora.finetune`` into a temporary folder, renamed when the run is complete."""
    if (out / "longlora_args.json").is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    resume = ["--resume"] if tmp.is_dir() else []
    run_command(
        "longlora.finetune",
        ["--model", str(model), "--output-dir", str(tmp), "--overwrite-output-dir", *resume, *argv],
    )
    os.replace(tmp, out)
    return out


def perplexity(s: Settings, model: Path, out: Path, seq_lens: list[int], extra: list[str] = ()) -> dict:
    """``python -m longlora.eval.perplexity`` (full attention) on the held-out book -> {seq_len: ppl}."""
    if not out.is_file():
        run_command(
            "longlora.eval.perplexity",
            [
                "--model",
                str(model),
                "--data",
                s.eval_book,
                "--seq-len",
                *map(str, seq_lens),
                "--max-tokens",
                str(s.eval_tokens),
                "--torch-dtype",
                "float32",
                "--attention",
                "sdpa",
                "--no-progress",
                "--output",
                str(out),
                *extra,
            ],
        )
    payload = json.loads(out.read_text())
    return {int(r["seq_len"]): float(r["ppl"]) for r in payload["results"]}


def loss_curve(train_log: Path, buckets: int = 5) -> list[float]:
    """Mean training loss over ``buckets`` equal spans of the run (to show it has settled)."""
    losses = [json.loads(line)["loss"] for line in train_log.read_text().splitlines() if line.strip()]
    n = max(1, len(losses) // buckets)
    return [round(statistics.fmean(losses[i : i + n]), 4) for i in range(0, n * buckets, n)]


def plan_of(s: Settings) -> dict[int, list[str]]:
    """target length -> the fine-tuning methods run there (full FT at --targets, LoRA+ at --lora-targets)."""
    plan: dict[int, list[str]] = {}
    for target in s.targets:
        plan.setdefault(target, []).append("full")
    for target in s.lora_targets:
        plan.setdefault(target, []).append("lora+")
    return dict(sorted(plan.items()))


def covers(result: dict, s: Settings) -> bool:
    """Whether a seed's saved result holds every cell the settings ask for."""
    for target, methods in plan_of(s).items():
        cell = result.get("targets", {}).get(str(target), {})
        keys = ["none"] + [f"{m}/{r}" for m in methods for r in s.regimes]
        if any(k not in cell for k in keys):
            return False
    return True


def run_seed(s: Settings, work: Path, tokenizer_dir: Path, seed: int) -> dict:
    """All stages of one seed; the result (with the seconds they took) is kept in seed-N/result.json."""
    from longlora.eval.common import write_json

    root = work / f"seed-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    saved = root / "result.json"
    previous = json.loads(saved.read_text()) if saved.is_file() else {}
    if previous and covers(previous, s):
        log(f"seed {seed}: done earlier ({previous['seconds'] / 60:.1f} min), reusing {saved}")
        return previous
    t0 = time.perf_counter()
    common = ["--mode", "pretrain", "--data", s.train_book, "--dtype", s.dtype, "--no-gradient-checkpointing"]
    common += [
        "--seed",
        str(seed),
        "--warmup-steps",
        str(s.warmup_steps),
        "--gradient-accumulation-steps",
        "1",
    ]

    init = init_model(s, tokenizer_dir, seed, root / "init")
    log(f"seed {seed}: pre-training from scratch at {s.short_len} tokens, {s.pretrain_steps} steps")
    base = finetune(
        init,
        root / "pretrained",
        [
            *common,
            "--method",
            "full",
            "--attention",
            "full",
            "--context-length",
            str(s.short_len),
            "--max-steps",
            str(s.pretrain_steps),
            "--per-device-batch-size",
            str(s.pretrain_batch),
            "--learning-rate",
            str(s.pretrain_lr),
            "--lr-schedule",
            "cosine",
            "--save-steps",
            str(max(1, s.pretrain_steps // 4)),
        ],
    )
    result: dict = {
        "seed": seed,
        "pretrain_loss_curve": loss_curve(base / "train_log.jsonl"),
        "pretrained": {
            str(k): v for k, v in perplexity(s, base, root / "ppl-pretrained.json", [s.short_len]).items()
        },
        "targets": {},
    }
    log(
        f"seed {seed}: pre-trained, held-out ppl at {s.short_len}: {result['pretrained'][str(s.short_len)]:.2f}"
    )
    for target, methods in plan_of(s).items():
        cell: dict = {}
        ppl = perplexity(
            s,
            base,
            root / f"ppl-pi{target}-none.json",
            [s.short_len, target],
            ["--context-length", str(target)],
        )
        cell["none"] = {"target": ppl[target], "short": ppl[s.short_len]}
        for method in methods:
            lr = s.finetune_lr if method == "full" else s.lora_lr
            batch = max(1, s.finetune_tokens_per_step // target)
            for regime in s.regimes:
                name = f"{method.replace('+', 'plus')}-{regime}-{target}"
                log(f"seed {seed}: {target} tokens, {METHOD_NAMES[method]}, {REGIME_NAMES[regime]}")
                t1 = time.perf_counter()
                model = finetune(
                    base,
                    root / name,
                    [
                        *common,
                        "--method",
                        method,
                        "--attention",
                        regime,
                        "--context-length",
                        str(target),
                        "--max-steps",
                        str(s.finetune_steps),
                        "--per-device-batch-size",
                        str(batch),
                        "--learning-rate",
                        str(lr),
                        "--save-steps",
                        str(max(1, s.finetune_steps // 2)),
                    ],
                )
                seconds = time.perf_counter() - t1
                ppl = perplexity(s, model, root / f"ppl-{name}.json", [s.short_len, target])
                cell[f"{method}/{regime}"] = {
                    "target": ppl[target],
                    "short": ppl[s.short_len],
                    "final_train_loss": loss_curve(model / "train_log.jsonl", 1)[0],
                    "seconds": round(seconds, 1),
                }
                log(f"  ppl at {target}: {ppl[target]:.3f}, at {s.short_len}: {ppl[s.short_len]:.3f}")
        result["targets"][str(target)] = cell
    # wall time of this seed's stages, summed over the invocations that ran them
    result["seconds"] = round(previous.get("seconds", 0.0) + time.perf_counter() - t0, 1)
    write_json(saved, result)
    return result


# ----------------------------------------------------------------------------- report


def rows_of(plan: dict[int, list[str]], regimes) -> list[tuple[str, str]]:
    """(key, label) of the table's rows: the un-tuned extension, then method x regime."""
    methods = [m for m in METHOD_NAMES if any(m in ms for ms in plan.values())]
    rows = [("none", REGIME_NAMES["none"])]
    for method in methods:
        for regime in regimes:
            rows.append((f"{method}/{regime}", f"{REGIME_NAMES[regime]} ({METHOD_NAMES[method]})"))
    return rows


def summarize(per_seed: list[dict], plan, regimes, which: str) -> dict:
    """{row: {target: {"mean", "min", "max", "seeds"}}} of perplexity at the target or short length;
    a (row, target) pair that was not run is absent."""
    table: dict = {}
    for key, _ in rows_of(plan, regimes):
        for target in plan:
            cells = [r["targets"][str(target)].get(key) for r in per_seed]
            if any(c is None for c in cells):
                continue
            values = [c[which] for c in cells]
            table.setdefault(key, {})[str(target)] = {
                "mean": statistics.fmean(values),
                "min": min(values),
                "max": max(values),
                "seeds": values,
            }
    return table


def paired_gaps(per_seed: list[dict], plan, regimes) -> dict:
    """{row: {target: {"mean", "seeds"}}}: % perplexity above full-attention fine-tuning with the same seed
    and method (the un-tuned row against full FT), at the target length. Paired, so the seed's shift of
    every number (its own pre-trained model) cancels."""
    gaps: dict = {}
    for key, _ in rows_of(plan, regimes):
        method, _, regime = key.partition("/")
        if regime == "full":
            continue
        ref_key = "full/full" if key == "none" else f"{method}/full"
        for target in plan:
            cells = [r["targets"][str(target)] for r in per_seed]
            if any(key not in c or ref_key not in c for c in cells):
                continue
            values = [100 * (c[key]["target"] / c[ref_key]["target"] - 1) for c in cells]
            gaps.setdefault(key, {})[str(target)] = {"mean": statistics.fmean(values), "seeds": values}
    return gaps


def _grid(labels: dict, plan, short_len: int, title: str, column: int, cell) -> str:
    """Rows of ``labels`` x target columns of ``column`` characters; ``cell(key, target)`` -> its text."""
    width = max(len(v) for v in labels.values()) + 2
    head = "".join(f"{f'{t} ({t // short_len}x)':>{column}}" for t in plan)
    lines = [title, f"{'':<{width}}{head}"]
    for key, label in labels.items():
        lines.append(f"{label:<{width}}" + "".join(cell(key, t) for t in plan))
    return "\n".join(lines)


def format_gaps(gaps: dict, plan, regimes, short_len: int, title: str) -> str:
    def cell(key, t):
        c = gaps[key].get(str(t))
        text = "-" if c is None else f"{c['mean']:+.2f}% (" + ", ".join(f"{v:+.2f}" for v in c["seeds"]) + ")"
        return f"{text:>32}"

    labels = {k: v for k, v in rows_of(plan, regimes) if k in gaps}
    return _grid(labels, plan, short_len, title, 32, cell)


def format_table(table: dict, plan, regimes, short_len: int, title: str) -> str:
    def cell(key, t):
        c = table.get(key, {}).get(str(t))
        if c is None:
            return f"{'-':>12}{'':<8}"
        spread = f" ±{(c['max'] - c['min']) / 2:.2f}" if len(c["seeds"]) > 1 else ""
        return f"{c['mean']:>12.2f}{spread:<8}"

    return _grid(dict(rows_of(plan, regimes)), plan, short_len, title, 20, cell)


def plot(table: dict, gaps: dict, plan, regimes, short_len: int, path: Path) -> None:
    """Left: perplexity of the fine-tuned models at their target length (un-tuned values in the legend).
    Right: the paired gap to full-attention fine-tuning, one dot per seed."""
    from longlora.eval.plot import _pyplot, _save

    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.5, 4.4), layout="constrained")
    styles = {"full": "-", "lora+": "--"}
    markers = {"full": "o", "short": "s", "s2": "^"}
    colors = {"none": "tab:gray", "full": "tab:blue", "short": "tab:red", "s2": "tab:green"}
    targets = list(plan)
    labels = dict(rows_of(plan, regimes))
    for key, label in labels.items():
        method, _, regime = key.partition("/")
        xs = [t for t in targets if str(t) in table.get(key, {})]
        if key == "none" or not xs:
            continue
        cells = [table[key][str(t)] for t in xs]
        ax.errorbar(
            xs,
            [c["mean"] for c in cells],
            yerr=[[c["mean"] - c["min"] for c in cells], [c["max"] - c["mean"] for c in cells]],
            marker=markers[regime],
            color=colors[regime],
            linestyle=styles[method],
            capsize=3,
            label=label,
        )
    none = ", ".join(
        f"{table['none'][str(t)]['mean']:.0f} at {t}" for t in targets if str(t) in table["none"]
    )
    ax.plot([], [], " ", label=f"{labels['none']}: {none}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(targets)
    ax.set_xticklabels([f"{t}\n({t // short_len}x)" for t in targets])
    ax.minorticks_off()
    ax.set_xlabel("target context length (fine-tuned and evaluated there)")
    ax.set_ylabel("held-out perplexity, full attention (mean; bars: seed range)")
    ax.set_title("Perplexity at the target length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)

    rows = [k for k in gaps if k != "none"]
    width = 0.8 / max(1, len(rows))
    for i, key in enumerate(rows):
        method, _, regime = key.partition("/")
        for j, t in enumerate(targets):
            cell = gaps[key].get(str(t))
            if cell is None:
                continue
            x = j + (i - (len(rows) - 1) / 2) * width
            bx.bar(
                x,
                cell["mean"],
                width * 0.9,
                color=colors[regime],
                alpha=0.85 if method == "full" else 0.45,
                hatch="" if method == "full" else "//",
                label=labels[key]
                if j == min(jj for jj, tt in enumerate(targets) if str(tt) in gaps[key])
                else None,
            )
            bx.plot([x] * len(cell["seeds"]), cell["seeds"], "k.", markersize=5)
    bx.axhline(0, color=colors["full"], linewidth=1.5, label="full attention (same seed, same method)")
    bx.set_xticks(range(len(targets)))
    bx.set_xticklabels([f"{t} ({t // short_len}x)" for t in targets])
    bx.set_ylabel("% perplexity above full attention")
    bx.set_title("Paired gap to full-attention fine-tuning (dots: seeds)")
    bx.grid(True, axis="y", alpha=0.3)
    bx.legend(fontsize=7)
    fig.suptitle(
        f"Context extension from {short_len} tokens with Position Interpolation: Table 1 at small scale"
    )
    _save(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

# --quick: a smoke run of every stage in well under a minute (its numbers mean nothing)
QUICK = dict(
    vocab_size=512,
    hidden_size=64,
    layers=2,
    heads=2,
    pretrain_steps=6,
    pretrain_batch=4,
    finetune_steps=2,
    finetune_tokens_per_step=2048,
    warmup_steps=1,
    eval_tokens=8192,
)


HELP = {
    "vocab_size": "BPE vocabulary",
    "hidden_size": "model width",
    "layers": "decoder layers",
    "heads": "attention heads",
    "short_len": "pre-training context (the model's original window)",
    "pretrain_steps": "pre-training optimizer steps",
    "pretrain_batch": "pre-training rows of --short-len tokens per step",
    "finetune_steps": "fine-tuning steps per regime and target",
    "finetune_tokens_per_step": "fine-tuning tokens per step (rows = this / target)",
    "warmup_steps": "linear warmup steps of every run",
    "eval_tokens": "held-out tokens scored",
    "pretrain_lr": "peak pre-training learning rate (cosine to 10%%)",
    "finetune_lr": "full fine-tuning learning rate (constant)",
    "lora_lr": "LoRA+ learning rate (constant)",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default."""


def build_parser() -> argparse.ArgumentParser:
    d = Settings.__dataclass_fields__
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--train-book", type=Path, default=FIXTURES / "austen-emma.txt", help="pre-training text")
    p.add_argument("--eval-book", type=Path, default=FIXTURES / "austen-prideprejudice.txt", help="held out")
    p.add_argument("--seeds", type=int, nargs="+", default=d["seeds"].default_factory(), help="one run each")
    p.add_argument(
        "--targets",
        type=int,
        nargs="+",
        default=d["targets"].default_factory(),
        help="extended lengths (columns), full fine-tuning",
    )
    p.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES), help="training attention")
    p.add_argument(
        "--lora-targets",
        type=int,
        nargs="*",
        default=d["lora_targets"].default_factory(),
        help="target lengths that also get the LoRA+ rows, e.g. 1024 (about 5 more minutes per seed and target)",
    )
    for name in (
        "vocab_size",
        "hidden_size",
        "layers",
        "heads",
        "short_len",
        "pretrain_steps",
        "pretrain_batch",
        "finetune_steps",
        "finetune_tokens_per_step",
        "warmup_steps",
        "eval_tokens",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=d[name].default, help=HELP[name])
    for name in ("pretrain_lr", "finetune_lr", "lora_lr"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=d[name].default, help=HELP[name])
    p.add_argument(
        "--dtype",
        choices=("bf16", "fp32"),
        default=d["dtype"].default,
        help="training precision (bf16 autocast, the paper's, ~1.35x faster on CPUs with AVX512-BF16); "
        "evaluation is always fp32",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: tiny model, few steps, few eval tokens (numbers mean nothing)",
    )
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "reproduce-table1")
    p.add_argument(
        "--fresh", action="store_true", help="delete --workdir first (otherwise finished stages are reused)"
    )
    p.add_argument("--output", type=Path, default=ROOT / "results" / "table1-small.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "table1-small.png")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given on the command line still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    for book in (args.train_book, args.eval_book):
        if not book.is_file():
            print(
                f"error: {book} not found; pass --train-book/--eval-book or set LONGLORA_FIXTURES",
                file=sys.stderr,
            )
            return 2
    if args.train_book.resolve() == args.eval_book.resolve():
        print("error: --eval-book must be held out: pass a different book than --train-book", file=sys.stderr)
        return 2
    if any(t <= args.short_len for t in [*args.targets, *args.lora_targets]):
        print(f"error: --targets must all exceed --short-len {args.short_len}", file=sys.stderr)
        return 2
    s = Settings(
        train_book=str(args.train_book.resolve()),
        eval_book=str(args.eval_book.resolve()),
        **{
            k: getattr(args, k) for k in Settings.__dataclass_fields__ if k not in ("train_book", "eval_book")
        },
    )
    plan, regimes = plan_of(s), list(s.regimes)

    work = args.workdir
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != s.key():
        print(
            f"error: {work} holds a run with other settings; pass --fresh to start over or another --workdir",
            file=sys.stderr,
        )
        return 2
    stamp.write_text(json.dumps(s.key(), indent=2) + "\n")

    started = time.perf_counter()
    tokenizer_dir = train_tokenizer(s, work / "tokenizer")
    per_seed = [run_seed(s, work, tokenizer_dir, seed) for seed in s.seeds]
    this_run = time.perf_counter() - started
    seconds = sum(r["seconds"] for r in per_seed)  # every stage's wall time, even if run by an earlier call

    at_target = summarize(per_seed, plan, regimes, "target")
    at_short = summarize(per_seed, plan, regimes, "short")
    seeds = ", ".join(map(str, s.seeds))
    print()
    print(
        format_table(
            at_target,
            plan,
            regimes,
            s.short_len,
            f"Held-out perplexity at the target length, full attention (mean over seeds {seeds}; ± half the range)",
        )
    )
    print()
    print(format_table(at_short, plan, regimes, s.short_len, f"... and at the short length {s.short_len}"))
    gaps = paired_gaps(per_seed, plan, regimes)
    print()
    print(
        format_gaps(
            gaps,
            plan,
            regimes,
            s.short_len,
            "Perplexity above full-attention fine-tuning (same seed, same method), at the target length:"
            " mean (per seed)",
        )
    )
    base = [r["pretrained"][str(s.short_len)] for r in per_seed]
    print(f"\npre-trained model at {s.short_len} tokens: {statistics.fmean(base):.2f} (seeds: {base})")
    print(
        f"took {seconds / 60:.1f} min for {len(per_seed)} seed(s) (wall time of every stage; "
        f"this invocation: {this_run / 60:.1f} min)"
    )

    payload = {
        "kind": "table1-small",
        "settings": asdict(s),
        "seconds": round(seconds, 1),
        "seconds_this_invocation": round(this_run, 1),
        "pretrained_ppl_short": base,
        "ppl_at_target": at_target,
        "ppl_at_short": at_short,
        "gap_to_full_attention_pct": gaps,
        "per_seed": per_seed,
        "versions": _versions(),
    }
    from longlora.eval.common import write_json

    write_json(args.output, payload)
    plot(at_target, gaps, plan, regimes, s.short_len, args.plot)
    print(f"wrote {args.output} and {args.plot}")
    return 0


def _versions() -> dict:
    import platform

    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
