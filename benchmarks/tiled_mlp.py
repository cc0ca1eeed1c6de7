"""Peak memory of one training step with and without ``--tiled-mlp`` (DeepSpeed's TiledMLP).

Both steps are ``benchmarks/train_step.py``'s: what ``longlora.finetune`` does by default (Position
Interpolation to the length, S2-Attn with G = N/4, LoRA+, gradient checkpointing, bf16 activations, the
chunked loss, AdamW) on one row of a book, each in a fresh process, so each peak (RSS on a CPU, max
allocated on CUDA) is its own; the only difference is ``--tiled-mlp``. Both numbers come from this one run.

Why it matters: with gradient checkpointing a step keeps each layer's input, ``(T, hidden)``, and
recomputes one layer at a time in backward; that layer's MLP then holds ``(T, intermediate)`` tensors
(gate, up, activation, product and their gradients), for SmolLM2-135M (hidden 576, intermediate 1536)
about 200 MB each at 64k in bf16. Tiled, they exist for ``ceil(T / hidden)`` slices one at a time.

Usage (CPU examples first):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/tiled_mlp.py --output results/tiled-mlp-64k.json   # 64k, bundled
    python benchmarks/tiled_mlp.py --quick                        # tiny random Llama, 1,024 tokens
    python benchmarks/tiled_mlp.py --device cuda --config-json llama-3.1-8b --length 131072
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_models import random_model_dir, read_config  # noqa: E402
from train_step import FIXTURES, device_and_dtype, run_child, write_rows  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/tiled_mlp.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="'default' (bundled SmolLM2-135M) or a model folder")
    p.add_argument(
        "--config-json", help="random weights of this architecture instead: a config.json, or llama-3.1-8b"
    )
    p.add_argument("--length", type=int, default=65536, help="tokens in the row (default %(default)s)")
    p.add_argument(
        "--method", choices=("lora+", "lora", "full", "qlora"), default="lora+", help="trainable set"
    )
    p.add_argument("--shards", type=int, default=None, help="--tiled-mlp-shards (default: auto)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="bf16", help="compute dtype")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "--book", default=str(FIXTURES / "austen-emma.txt"), help="the text the row is cut from (a fixture)"
    )
    p.add_argument(
        "--compact-cpu-memory", action="store_true", help="as finetune's flag: freed memory returned at once"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds allowed for each step")
    p.add_argument("--workdir", default=None, help="random-weights models (default: the longlora cache)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny random Llama, 1,024 tokens")
    p.add_argument("--output", help="also write both results and their ratio as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from data_tools.bundled import cache_dir
    from longlora.models import resolve_model_path
    from longlora.provenance import run_record

    device, dtype, hw = device_and_dtype(args.device, args.dtype)
    cuda = device.type == "cuda"
    length, vocab_size = (1024 if args.quick else args.length), None
    book = Path(args.book)
    if args.quick or args.config_json:
        config = read_config("quick" if args.quick else args.config_json)
        workdir = Path(args.workdir or cache_dir() / "max_context")
        model = str(random_model_dir(config, workdir, device.type))
        vocab_size = int(config["vocab_size"])  # rows of UTF-8 bytes: random weights have no tokenizer
        if args.quick and not book.is_file():
            book = ROOT / "data" / "books" / "dev" / "austen-emma.txt"
    else:
        model = resolve_model_path(args.model)
    provenance = run_record()  # at the start: the commit and tree the two steps ran on
    print(
        f"model {model}\none {args.method} S2 step of {length:,} tokens, dtype {dtype}, device {device} ({hw}); "
        f"peak {'max allocated' if cuda else 'RSS'}; allocator "
        f"{'compact' if args.compact_cpu_memory else 'default'}; each configuration in its own process",
        flush=True,
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_rows(model, book, [length], ["book"], Path(tmp), vocab_size)
        for tiled in (False, True):
            spec = dict(
                model=model, length=length, method=args.method, attention="s2", dtype=dtype,
                device=str(device), steps=1, warmup=0, forward=False, rows=rows[("book", length)][0],
                chunk_size=None, offload=False, compact_memory=args.compact_cpu_memory, tiled_mlp=tiled,
                tiled_mlp_shards=args.shards,
            )  # fmt: skip
            r = run_child(spec, timeout=args.timeout)
            name = "tiled" if tiled else "plain"
            results[name] = {"tiled_mlp": tiled, **r}
            if "error" in r:
                print(f"  {name:<6} failed: {r['error']}", flush=True)
            else:
                print(
                    f"  {name:<6} peak {r['peak_mb']:>9,.0f} MiB   {r['tokens_per_s']:>8.1f} tokens/s   "
                    f"loss {r['loss']:.4f}",
                    flush=True,
                )
    plain, tiled = results["plain"], results["tiled"]
    summary = {}
    if "peak_mb" in plain and "peak_mb" in tiled:
        summary = {
            "saved_mb": round(plain["peak_mb"] - tiled["peak_mb"], 1),
            "peak_ratio": round(tiled["peak_mb"] / plain["peak_mb"], 3),
            "speed_ratio": round(tiled["tokens_per_s"] / plain["tokens_per_s"], 3),
        }
        change = "lower" if summary["saved_mb"] >= 0 else "higher"
        print(
            f"tiled MLP: peak {abs(summary['saved_mb']):,.0f} MiB {change} ({summary['peak_ratio']:.3f}x the "
            f"plain peak), {summary['speed_ratio']:.2f}x the tokens/s (this run)"
        )
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": model, "length": length, "method": args.method, "attention": "s2", "dtype": dtype,
            "device": hw, "gradient_checkpointing": True, "compact_cpu_memory": args.compact_cpu_memory,
            "tiled_mlp_shards": args.shards or "auto", "book": str(book), "results": results, **summary,
            "provenance": provenance,
        }  # fmt: skip
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, out)
    return 0 if summary else 1


if __name__ == "__main__":
    raise SystemExit(main())
