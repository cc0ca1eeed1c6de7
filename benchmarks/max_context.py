"""The longest context at which one LoRA+ S2-Attn training step fits a memory budget.

Each length is tried in a fresh subprocess (``benchmarks/train_step.py``'s step: Position Interpolation,
S2-Attn with G = N/4 on one row of text, gradient checkpointing, bf16 activations, the chunked
cross-entropy, AdamW). The text is ``--text`` (the project's training novels by default), tokenized once
and repeated when a row is longer than it; the result records how many tokens it had and whether the
longest row repeated it. Random-weights models have no tokenizer: the bundled model's tokenizes the text
(ids beyond the vocabulary wrap), and ``--quick``'s tiny model reads UTF-8 bytes. Lengths double from ``--start`` until a step fails, then bisection narrows
the limit to ``--granularity`` tokens.

"Fits" means: on a CPU, the step finishes and its resident memory never passes ``--budget-gb`` (the
parent watches the child's RSS and kills it at the budget, so the search never pushes the machine into
swap); on CUDA, the step finishes under ``torch.cuda.set_per_process_memory_fraction(budget / total)``
(an allocation past the cap raises out-of-memory).

The model is any model folder, or a random-weights model built from a config (``--config-json``, e.g.
the Llama-3.1-8B ``config.json``: no download, the weights are random and saved once under
``--workdir``). For reference, the best single-GPU figure published for Llama-3.1-8B is 342,733 tokens
(QLoRA, 80 GB, unsloth, with chunked cross-entropy and offloaded checkpoints); plain HF + FA2: 28,454.
At such lengths the MLP's (tokens x intermediate) tensors dominate a layer's backward: ``--tiled-mlp``
runs them in slices (``longlora.tiled_mlp``). ``--tokenizer bytes`` feeds UTF-8 bytes instead of the
bundled model's tokens, for a machine that has no bundled model (``benchmarks/gpu_check.sh``).

Usage (CPU example first):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/max_context.py                # bundled model, 20 GB of RAM
    python benchmarks/max_context.py --budget-gb 8 --start 16384 --granularity 4096
    python benchmarks/max_context.py --quick                                # tiny random model, small budget
    # on one GPU, random Llama-3.1-8B weights, 80 GB cap
    python benchmarks/max_context.py --device cuda --config-json llama-3.1-8b --method qlora \\
        --budget-gb 80 --start 65536 --granularity 8192 --offload-activations --tiled-mlp --tokenizer bytes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_models import PRESETS, QUICK_CONFIG, random_model_dir, read_config  # noqa: E402,F401
from train_step import add_step_options, device_and_dtype, run_child  # noqa: E402


def search(try_length, start: int, granularity: int, max_length: int) -> tuple[int, list[dict]]:
    """Doubling from ``start`` then bisection; ``try_length(n) -> dict`` with ``fits``. Returns the
    longest fitting length (0 when even ``start`` fails) and every trial in order."""
    trials: list[dict] = []

    def fits(n: int) -> bool:
        trial = {"length": n, **try_length(n)}
        trials.append(trial)
        return trial["fits"]

    good, bad, n = 0, None, start
    while n <= max_length:
        if not fits(n):
            bad = n
            break
        good, n = n, n * 2
    if bad is None:
        return good, trials
    while bad - good > granularity:
        mid = (good + bad) // 2 // granularity * granularity
        if mid <= good:
            break
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, trials


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/max_context.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="'default' (bundled SmolLM2-135M) or a model folder")
    p.add_argument(
        "--config-json", help="random weights of this architecture: a config.json, or llama-3.1-8b"
    )
    p.add_argument(
        "--method", choices=("lora+", "lora", "qlora", "full"), default="lora+", help="trainable set"
    )
    p.add_argument(
        "--attention", choices=("s2", "full", "short"), default="s2", help="attention while training"
    )
    p.add_argument(
        "--budget-gb", type=float, default=None, help="memory budget (default: 20 on CPU, 80 on CUDA)"
    )
    p.add_argument("--start", type=int, default=16384, help="first length tried (default %(default)s)")
    p.add_argument(
        "--granularity", type=int, default=4096, help="bisection step in tokens (default %(default)s)"
    )
    p.add_argument("--max-length", type=int, default=1 << 20, help="stop doubling here (default %(default)s)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="bf16", help="compute dtype")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    add_step_options(p)
    p.add_argument(
        "--tokenizer",
        choices=("default", "bytes"),
        default="default",
        help="text -> ids: the model's tokenizer (the bundled model's for random weights), or UTF-8 bytes",
    )
    p.add_argument(
        "--compact-cpu-memory", action="store_true", help="as finetune's flag: freed memory returned at once"
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one trial step")
    p.add_argument("--workdir", default=None, help="random-weights models (default: the longlora cache)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny random model, 1 GB budget, 1k-4k tokens"
    )
    p.add_argument(
        "--text",
        nargs="+",
        default=[str(ROOT / "data" / "books" / "train")],
        help="text files or folders of .txt files the rows are cut from (default: data/books/train)",
    )
    p.add_argument("--output", help="also write the trials and the result as JSON here")
    return p


def text_files(specs: list[str]) -> list[Path]:
    """The documents named by ``--text`` (files, folders, globs), by the reader's rules and messages."""
    from data_tools.errors import InputError
    from data_tools.reader import find_sources

    try:
        return [source.path for source in find_sources(specs, ("document",), flag="--text")]
    except InputError as err:
        raise SystemExit(f"error: {err}") from None


def text_tokens(files: list[Path], tokenizer_dir: str | None, vocab_size: int):
    """The text as token ids below ``vocab_size``: through the tokenizer in ``tokenizer_dir``, or as UTF-8
    bytes when it is None."""
    import numpy as np

    from data_tools.reader import Source, read_texts

    text = "\n\n".join(t for f in files for _, t in read_texts(Source(f, "document")))
    if tokenizer_dir is None:
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    else:
        from transformers import AutoTokenizer

        ids = np.asarray(AutoTokenizer.from_pretrained(tokenizer_dir)(text)["input_ids"], dtype=np.int64)
    return ids % vocab_size


def write_row(tokens, length: int, workdir: Path) -> str:
    """One training row of ``length`` tokens cut from ``tokens`` (repeated when shorter), as train_step's
    children read it."""
    import numpy as np

    ids = np.resize(tokens, length)
    path = workdir / f"text-row-{length}.npz"
    np.savez(path, input_ids=ids, labels=ids)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from data_tools.bundled import cache_dir
    from longlora.models import resolve_model_path
    from longlora.provenance import run_record

    device, dtype, hw = device_and_dtype(args.device, args.dtype)
    cuda = device.type == "cuda"
    budget = args.budget_gb or (80.0 if cuda else 20.0)
    start, granularity, max_length = args.start, args.granularity, args.max_length
    if args.quick:
        budget = args.budget_gb or 1.0
        start, granularity, max_length = 1024, 1024, min(args.max_length, 4096)
    workdir = Path(args.workdir or cache_dir() / "max_context")
    if args.quick or args.config_json:
        config = QUICK_CONFIG if args.quick else read_config(args.config_json)
        model = str(random_model_dir(config, workdir, device.type))
        bytes_only = args.quick or args.tokenizer == "bytes"
        tokenizer_dir = None if bytes_only else resolve_model_path("default")
    else:
        model = tokenizer_dir = resolve_model_path(args.model)
        config = json.loads((Path(model) / "config.json").read_text())
        tokenizer_dir = None if args.tokenizer == "bytes" else tokenizer_dir
    files = text_files(args.text)
    tokens = text_tokens(files, tokenizer_dir, int(config["vocab_size"]))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"model {model}\n{args.method} {args.attention} step, dtype {dtype}, device {device} ({hw}), budget "
        f"{budget:g} GB ({'GPU memory cap' if cuda else 'peak RSS'}); start {start}, granularity {granularity}; "
        f"allocator {'compact' if args.compact_cpu_memory else 'default'}"
    )

    def try_length(n: int) -> dict:
        spec = dict(
            model=model, length=n, method=args.method, attention=args.attention, dtype=dtype, device=str(device),
            steps=1, warmup=0, forward=False, rows=write_row(tokens, n, workdir), chunk_size=args.chunk_size,
            offload=args.offload_activations, memory_cap_gb=budget if cuda else None,
            compact_memory=args.compact_cpu_memory, tiled_mlp=args.tiled_mlp,
            tiled_mlp_shards=args.tiled_mlp_shards, loss_backend=args.loss_backend,
        )  # fmt: skip
        t0 = time.perf_counter()
        r = run_child(spec, watch_rss_bytes=None if cuda else int(budget * 2**30), timeout=args.timeout)
        fits = "error" not in r and r["peak_mb"] <= budget * 1024
        trial = {"fits": fits, "seconds": round(time.perf_counter() - t0, 1)}
        trial.update({k: r[k] for k in ("peak_mb", "tokens_per_s", "loss_backend", "error") if k in r})
        what = (
            f"peak {r['peak_mb']:.0f} MB, {r['tokens_per_s']:.1f} tokens/s" if "peak_mb" in r else r["error"]
        )
        print(f"  {n:>8} tokens: {'fits' if fits else 'does not fit'} ({what})", flush=True)
        return trial

    def write(best: int, trials: list[dict], complete: bool) -> None:
        """The result so far: rewritten after every trial, so a search cut short by a time limit (a GPU
        lease) still leaves its trials, marked ``"complete": false``."""
        if not args.output:
            return
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        capped = complete and all(t["fits"] for t in trials)
        payload = {
            "model": model, "method": args.method, "attention": args.attention, "dtype": dtype, "device": hw,
            "budget_gb": budget, "compact_cpu_memory": args.compact_cpu_memory, "granularity": granularity, "max_context": best, "trials": trials,
            "offload_activations": args.offload_activations, "tiled_mlp": args.tiled_mlp, "tiled_mlp_shards": args.tiled_mlp_shards,
            "loss_backend": args.loss_backend, "tokenizer": "bytes" if tokenizer_dir is None else tokenizer_dir,
            "max_length": max_length, "capped": capped,  # capped: every length tried fit, the limit is above the cap
            "complete": complete,  # false: the search was still running when this was written
            "text": [str(f) for f in files], "text_tokens": int(len(tokens)), "text_repeated": best > len(tokens),
            "provenance": run_record(),
        }  # fmt: skip
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, out)

    done: list[dict] = []

    def try_and_record(n: int) -> dict:
        trial = try_length(n)
        done.append({"length": n, **trial})
        write(max([t["length"] for t in done if t["fits"]], default=0), done, complete=False)
        return trial

    best, trials = search(try_and_record, start, granularity, max_length)
    capped = all(t["fits"] for t in trials)
    print(
        f"longest context that fits {budget:g} GB: {best:,} tokens{' (the --max-length cap)' if capped else ''}"
    )
    write(best, trials, complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
