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
   short``), S2-Attn (``--attention s2``) and S2-Attn whose groups also see the first
   ``--sink-tokens`` tokens and every ``--sink-stride``-th earlier token of each document (``--attention
   s2-sink``), group size = 1/4 of the target
   as in the paper (``--regimes`` picks among them);
   LoRA+ rows (``--method lora+``) are added at ``--lora-targets`` (e.g. ``--lora-targets 1024``);
   the paper's Table 2 rows at ``--table2-targets``: full fine-tuning, LoRA, LoRA + norms, LoRA +
   embedding and LoRA+ (both), each trained with S2-Attn (plus full attention with full fine-tuning,
   the reference of the gaps);
4. evaluates every model with full attention (``python -m longlora.eval.perplexity``) on the held-out
   book at its target length and at the short length, plus the extended model with no fine-tuning;
5. repeats for each seed (initialisation, data order) and prints the table in the paper's shape
   (rows: regimes, columns: target lengths), the paired gaps, how much of short attention's gap to full
   attention S2 and S2 with sinks close (``(short - X) / (short - full)`` per seed), Table 2, and writes a
   JSON and a plot.

Every stage's output is kept in ``--workdir``; a rerun (after a crash or a kill) skips what is done, and
a rerun that asks for more rows (another regime, ``--lora-targets``, ``--table2-targets``, more seeds)
runs only those.

Usage (CPU; a run's wall time is the ``seconds`` field of its JSON; each regime, method and target adds
one fine-tuning run and its evaluation per seed)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py
    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py --quick            # smoke run, ~30 s
    # the shorter pre-training with LoRA+ rows of results/table1-small-pretrain300.json
    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py --pretrain-steps 300 --lora-targets 1024 \
        --workdir out/table1-pretrain300 --output results/table1-small-pretrain300.json \
        --plot docs/table1-small-pretrain300.png
    # Table 2's methods at 4x, three seeds
    OMP_WAIT_POLICY=PASSIVE python benchmarks/reproduce_table1.py --table2-targets 1024 --seeds 0 1 2
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

REGIMES = ("full", "short", "s2", "s2-sink")
REGIME_NAMES = {
    "full": "Full attention",
    "short": "Short attention, no shift",
    "s2": "S2-Attn (short + shift)",
    "s2-sink": "S2-Attn + sink tokens",
    "none": "PI, no fine-tuning",
}
# row order of the tables: Table 1's methods, then the rest of Table 2's
METHOD_NAMES = {
    "full": "full FT",
    "lora+": "LoRA+",
    "lora": "LoRA",
    "lora+norm": "LoRA + norms",
    "lora+embed": "LoRA + embedding",
}
TABLE2_METHODS = ("full", "lora", "lora+norm", "lora+embed", "lora+")  # the paper's Table 2, top to bottom
TABLE2_REGIME = "s2"  # Table 2 trains every method with S2-Attn
# the numerator of "gap closed": what each of these recovers of short attention's gap to full attention
GAP_CLOSERS = ("s2", "s2-sink")
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
    table2_targets: list[int] = field(default_factory=list)
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
    sink_tokens: int = 4
    sink_stride: int = 8

    def key(self) -> dict:
        """The settings that decide results (seeds, rows and columns may grow between runs of one workdir).
        Settings added after workdirs were made enter only when they differ from their default, so that
        those workdirs stay reusable."""
        d = asdict(self)
        for name in ("seeds", "targets", "regimes", "lora_targets", "table2_targets"):
            d.pop(name)
        for name, default in ADDED_LATER.items():
            if d[name] == default:
                d.pop(name)
        return d


ADDED_LATER = {"sink_tokens": 4, "sink_stride": 8}


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


def plan_of(s: Settings) -> dict[int, list[tuple[str, str]]]:
    """target length -> the (method, regime) fine-tuning runs there: full FT under every regime at
    --targets, LoRA+ under every regime at --lora-targets, Table 2's methods with S2-Attn (and full FT
    with full attention, the reference of their gaps) at --table2-targets."""
    plan: dict[int, list[tuple[str, str]]] = {}

    def add(target: int, method: str, regime: str) -> None:
        runs = plan.setdefault(target, [])
        if (method, regime) not in runs:
            runs.append((method, regime))

    for target in s.targets:
        for regime in s.regimes:
            add(target, "full", regime)
    for target in s.lora_targets:
        for regime in s.regimes:
            add(target, "lora+", regime)
    for target in s.table2_targets:
        add(target, "full", "full")
        for method in TABLE2_METHODS:
            add(target, method, TABLE2_REGIME)
    return dict(sorted(plan.items()))


def stage_name(method: str, regime: str, target: int) -> str:
    """The folder of one fine-tuning run in a seed's directory (``loraplus-s2-1024``); runs of earlier
    workdirs are found again by this name."""
    return f"{method.replace('+', 'plus')}-{regime}-{target}"


def covers(result: dict, s: Settings) -> bool:
    """Whether a seed's saved result holds every cell the settings ask for."""
    for target, runs in plan_of(s).items():
        cell = result.get("targets", {}).get(str(target), {})
        keys = ["none"] + [f"{m}/{r}" for m, r in runs]
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
    for target, runs in plan_of(s).items():
        cell: dict = {}
        earlier = previous.get("targets", {}).get(str(target), {})  # cells of an earlier invocation
        ppl = perplexity(
            s,
            base,
            root / f"ppl-pi{target}-none.json",
            [s.short_len, target],
            ["--context-length", str(target)],
        )
        cell["none"] = {"target": ppl[target], "short": ppl[s.short_len]}
        batch = max(1, s.finetune_tokens_per_step // target)
        for method, regime in runs:
            key = f"{method}/{regime}"
            lr = s.finetune_lr if method == "full" else s.lora_lr
            name = stage_name(method, regime, target)
            trained_before = (root / name / "longlora_args.json").is_file()
            sinks = []
            if regime == "s2-sink":
                sinks = ["--sink-tokens", str(s.sink_tokens), "--sink-stride", str(s.sink_stride)]
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
                    *sinks,
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
            if trained_before and key in earlier:  # the training time, not the time to find it done
                seconds = earlier[key]["seconds"]
            ppl = perplexity(s, model, root / f"ppl-{name}.json", [s.short_len, target])
            cell[key] = {
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


def rows_of(plan: dict[int, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """(key, label) of the table's rows: the un-tuned extension, then every (method, regime) some target
    runs, in the order of ``METHOD_NAMES`` and ``REGIMES``."""
    runs = {run for target_runs in plan.values() for run in target_runs}
    rows = [("none", REGIME_NAMES["none"])]
    for method in METHOD_NAMES:
        for regime in REGIMES:
            if (method, regime) in runs:
                rows.append((f"{method}/{regime}", f"{REGIME_NAMES[regime]} ({METHOD_NAMES[method]})"))
    return rows


def _cells(per_seed: list[dict], target: int, keys: list[str]) -> list[dict] | None:
    """Each seed's cells at ``target`` when every seed has all of ``keys`` there, else None."""
    cells = [r["targets"].get(str(target), {}) for r in per_seed]
    return cells if all(k in c for c in cells for k in keys) else None


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "seeds": values}


def summarize(per_seed: list[dict], plan, which: str) -> dict:
    """{row: {target: {"mean", "min", "max", "seeds"}}} of perplexity at the target or short length;
    a (row, target) pair that was not run is absent."""
    table: dict = {}
    for key, _ in rows_of(plan):
        for target in plan:
            cells = _cells(per_seed, target, [key])
            if cells is not None:
                table.setdefault(key, {})[str(target)] = _spread([c[key][which] for c in cells])
    return table


def paired_gaps(per_seed: list[dict], plan) -> dict:
    """{row: {target: {"mean", "seeds", "reference"}}}: % perplexity above full attention with the same
    seed, at the target length. The reference is full attention with the row's own method, or full
    fine-tuning with full attention for the un-tuned row and for methods trained with S2-Attn only (Table
    2's LoRA variants). Paired, so the seed's shift of every number (its own pre-trained model) cancels."""
    gaps: dict = {}
    for key, _ in rows_of(plan):
        method, _, regime = key.partition("/")
        if regime == "full":
            continue
        for target in plan:
            own = f"{method}/full"
            ref = own if key != "none" and _cells(per_seed, target, [own]) else "full/full"
            cells = _cells(per_seed, target, [key, ref])
            if cells is None:
                continue
            values = [100 * (c[key]["target"] / c[ref]["target"] - 1) for c in cells]
            gaps.setdefault(key, {})[str(target)] = {
                "mean": statistics.fmean(values),
                "seeds": values,
                "reference": ref,
            }
    return gaps


def gap_closed(per_seed: list[dict], plan) -> dict:
    """{method/X: {target: {"mean", "min", "max", "seeds"}}} for X in ``GAP_CLOSERS``: the % of short
    attention's perplexity gap to full attention that training with X closes, per seed,
    ``100 * (short - X) / (short - full)`` with the same seed and method at the target length (100: as good
    as full attention; 0: no better than short attention without shift)."""
    closed: dict = {}
    for method in METHOD_NAMES:
        for closer in GAP_CLOSERS:
            key = f"{method}/{closer}"
            for target in plan:
                cells = _cells(per_seed, target, [f"{method}/short", f"{method}/full", key])
                if cells is None:
                    continue
                ppl = [{r: c[f"{method}/{r}"]["target"] for r in ("short", "full", closer)} for c in cells]
                if any(p["short"] == p["full"] for p in ppl):  # no gap to close
                    continue
                values = [100 * (p["short"] - p[closer]) / (p["short"] - p["full"]) for p in ppl]
                closed.setdefault(key, {})[str(target)] = _spread(values)
    return closed


def gaps_to_full_finetuning(per_seed: list[dict], plan) -> dict:
    """{method/s2: {target: {"mean", "seeds"}}}: Table 2's comparison, % perplexity above full fine-tuning
    of each LoRA method, all trained with S2-Attn, same seed, at the target length."""
    ref = f"full/{TABLE2_REGIME}"
    gaps: dict = {}
    for method in TABLE2_METHODS:
        key = f"{method}/{TABLE2_REGIME}"
        for target in plan:
            cells = _cells(per_seed, target, [key, ref])
            if method == "full" or cells is None:
                continue
            values = [100 * (c[key]["target"] / c[ref]["target"] - 1) for c in cells]
            gaps.setdefault(key, {})[str(target)] = {"mean": statistics.fmean(values), "seeds": values}
    return gaps


def _grid(labels: dict, targets, short_len: int, title: str, column: int, cell) -> str:
    """Rows of ``labels`` x target columns of ``column`` characters; ``cell(key, target)`` -> its text."""
    width = max(len(v) for v in labels.values()) + 2
    head = "".join(f"{f'{t} ({t // short_len}x)':>{column}}" for t in targets)
    lines = [title, f"{'':<{width}}{head}"]
    for key, label in labels.items():
        lines.append(f"{label:<{width}}" + "".join(cell(key, t) for t in targets))
    return "\n".join(lines)


def format_per_seed(values: dict, labels: dict, targets, short_len: int, title: str, sign: str = "+") -> str:
    """Rows of per-seed percentages (gaps, gap closed): the mean, then each seed's value."""

    def cell(key, t):
        c = values[key].get(str(t))
        if c is None:
            return f"{'-':>32}"
        seeds = ", ".join(f"{v:{sign}.2f}" for v in c["seeds"])
        text = f"{c['mean']:{sign}.2f}% ({seeds})"
        return f"{text:>32}"

    return _grid({k: v for k, v in labels.items() if k in values}, targets, short_len, title, 32, cell)


def format_table(table: dict, labels: dict, targets, short_len: int, title: str) -> str:
    def cell(key, t):
        c = table.get(key, {}).get(str(t))
        if c is None:
            return f"{'-':>12}{'':<8}"
        spread = f" ±{(c['max'] - c['min']) / 2:.2f}" if len(c["seeds"]) > 1 else ""
        return f"{c['mean']:>12.2f}{spread:<8}"

    return _grid(labels, targets, short_len, title, 20, cell)


TABLE1_METHODS = ("full", "lora+")
MARKERS = {"full": "o", "short": "s", "s2": "^", "s2-sink": "v"}
COLORS = {
    "none": "tab:gray",
    "full": "tab:blue",
    "short": "tab:red",
    "s2": "tab:green",
    "s2-sink": "tab:purple",
}


def plot(table: dict, gaps: dict, plan, short_len: int, path: Path, table2_targets=()) -> None:
    """Left: perplexity of the fine-tuned models at their target length (un-tuned values in the legend).
    Middle: the paired gap to full-attention fine-tuning, one dot per seed. Right (with Table 2 targets):
    perplexity of Table 2's methods trained with S2-Attn, one dot per seed."""
    from longlora.eval.plot import _pyplot, _save

    plt = _pyplot()
    table2_targets = [t for t in plan if t in set(table2_targets)]
    panels = 3 if table2_targets else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.75 * panels, 4.4), layout="constrained")
    ax, bx = axes[0], axes[1]
    styles = {"full": "-", "lora+": "--"}
    targets = list(plan)
    labels = {k: v for k, v in rows_of(plan) if k == "none" or k.partition("/")[0] in TABLE1_METHODS}
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
            marker=MARKERS[regime],
            color=COLORS[regime],
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

    rows = [k for k in gaps if k != "none" and k in labels]
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
                color=COLORS[regime],
                alpha=0.85 if method == "full" else 0.45,
                hatch="" if method == "full" else "//",
                label=labels[key]
                if j == min(jj for jj, tt in enumerate(targets) if str(tt) in gaps[key])
                else None,
            )
            bx.plot([x] * len(cell["seeds"]), cell["seeds"], "k.", markersize=5)
    bx.axhline(0, color=COLORS["full"], linewidth=1.5, label="full attention (same seed, same method)")
    bx.set_xticks(range(len(targets)))
    bx.set_xticklabels([f"{t} ({t // short_len}x)" for t in targets])
    bx.set_ylabel("% perplexity above full attention")
    bx.set_title("Paired gap to full-attention fine-tuning (dots: seeds)")
    bx.grid(True, axis="y", alpha=0.3)
    bx.legend(fontsize=7)
    if table2_targets:
        _plot_table2(axes[2], table, table2_targets, short_len)
    fig.suptitle(
        f"Context extension from {short_len} tokens with Position Interpolation: Table 1"
        + (" and Table 2" if table2_targets else "")
        + " at small scale"
    )
    _save(fig, path)
    plt.close(fig)


def _plot_table2(cx, table: dict, targets: list[int], short_len: int) -> None:
    """Table 2's methods (trained with S2-Attn) as bars per target, seeds as dots, and full fine-tuning with
    full attention as a line."""
    width = 0.8 / len(targets)
    for j, t in enumerate(targets):
        for i, method in enumerate(TABLE2_METHODS):
            cell = table.get(f"{method}/{TABLE2_REGIME}", {}).get(str(t))
            if cell is None:
                continue
            x = i + (j - (len(targets) - 1) / 2) * width
            cx.bar(
                x,
                cell["mean"],
                width * 0.9,
                color=COLORS[TABLE2_REGIME],
                alpha=0.85 - 0.4 * j / len(targets),
                label=f"{t} ({t // short_len}x)" if i == 0 else None,
            )
            cx.plot([x] * len(cell["seeds"]), cell["seeds"], "k.", markersize=5)
        ref = table.get("full/full", {}).get(str(t))
        if ref is not None:
            cx.axhline(
                ref["mean"],
                color=COLORS["full"],
                linestyle=":" if j else "-",
                linewidth=1.2,
                label=f"full FT, full attention at {t}",
            )
    cx.set_xticks(range(len(TABLE2_METHODS)))
    cx.set_xticklabels([METHOD_NAMES[m].replace(" + ", "\n+ ") for m in TABLE2_METHODS], fontsize=8)
    cx.set_ylabel("held-out perplexity at the target, full attention")
    cx.set_title("Table 2: trainable sets, all with S2-Attn (dots: seeds)")
    cx.grid(True, axis="y", alpha=0.3)
    cx.legend(fontsize=7)


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
    "lora_lr": "learning rate of the LoRA methods (constant)",
    "sink_tokens": "--attention s2-sink: first tokens of each document every query also attends to",
    "sink_stride": "--attention s2-sink: every query also attends to every this-many-th earlier token (0: none)",
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
        help="target lengths that also get the LoRA+ rows under every regime, e.g. 1024",
    )
    p.add_argument(
        "--table2-targets",
        type=int,
        nargs="*",
        default=d["table2_targets"].default_factory(),
        help="target lengths that get Table 2's rows, e.g. 1024: full FT, LoRA, LoRA + norms, LoRA + "
        "embedding and LoRA+ trained with S2-Attn (and full FT with full attention, their reference)",
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
        "sink_tokens",
        "sink_stride",
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
    if any(t <= args.short_len for t in [*args.targets, *args.lora_targets, *args.table2_targets]):
        print(
            f"error: --targets, --lora-targets and --table2-targets must all exceed --short-len {args.short_len}",
            file=sys.stderr,
        )
        return 2
    groups = [t // 4 for t in [*args.targets, *args.lora_targets]]  # G = 1/4 of the target
    if "s2-sink" in args.regimes and not 1 <= args.sink_tokens < min(groups):
        print(
            f"error: --sink-tokens {args.sink_tokens} must be at least 1 and below the smallest group size, "
            f"{min(groups)} tokens (1/4 of the shortest target)",
            file=sys.stderr,
        )
        return 2
    if args.sink_stride == 1 or args.sink_stride < 0:
        print(f"error: --sink-stride {args.sink_stride} must be 0 (none) or at least 2", file=sys.stderr)
        return 2
    s = Settings(
        train_book=str(args.train_book.resolve()),
        eval_book=str(args.eval_book.resolve()),
        **{
            k: getattr(args, k) for k in Settings.__dataclass_fields__ if k not in ("train_book", "eval_book")
        },
    )
    plan = plan_of(s)

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

    at_target = summarize(per_seed, plan, "target")
    at_short = summarize(per_seed, plan, "short")
    targets, labels = list(plan), dict(rows_of(plan))
    seeds = ", ".join(map(str, s.seeds))
    print()
    print(
        format_table(
            at_target,
            labels,
            targets,
            s.short_len,
            f"Held-out perplexity at the target length, full attention (mean over seeds {seeds}; ± half the range)",
        )
    )
    print()
    print(format_table(at_short, labels, targets, s.short_len, f"... and at the short length {s.short_len}"))
    gaps = paired_gaps(per_seed, plan)
    print()
    print(
        format_per_seed(
            gaps,
            labels,
            targets,
            s.short_len,
            "Perplexity above full-attention fine-tuning (same seed; same method, else full FT), at the target "
            "length: mean (per seed)",
        )
    )
    closed = gap_closed(per_seed, plan)
    if closed:
        print()
        print(
            format_per_seed(
                closed,
                labels,
                targets,
                s.short_len,
                "Share of short attention's gap to full attention closed, (short - X) / (short - full) per seed:"
                " mean (per seed)",
                sign="",
            )
        )
    to_full_ft = gaps_to_full_finetuning(per_seed, plan)
    table2_targets = [t for t in targets if t in set(s.table2_targets)]
    if table2_targets:
        table2 = {f"{m}/{TABLE2_REGIME}": labels[f"{m}/{TABLE2_REGIME}"] for m in TABLE2_METHODS}
        print()
        print(
            format_table(
                at_target,
                {"full/full": labels["full/full"], **table2},
                table2_targets,
                s.short_len,
                "Table 2: trainable sets, all trained with S2-Attn: held-out perplexity at the target length",
            )
        )
        print(
            format_per_seed(
                to_full_ft,
                table2,
                table2_targets,
                s.short_len,
                "... above full fine-tuning with S2-Attn (same seed): mean (per seed)",
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
        "gap_closed_pct": closed,
        "gap_to_full_finetuning_pct": to_full_ft,
        "per_seed": per_seed,
        "versions": _versions(),
    }
    from longlora.eval.common import write_json

    write_json(args.output, payload)
    plot(at_target, gaps, plan, s.short_len, args.plot, s.table2_targets)
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
