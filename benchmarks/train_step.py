"""One training step of a real model: S2-Attn vs full vs short attention, one long document vs packed ones.

Each configuration (context length x method x data x attention) runs in a fresh subprocess, so its peak
memory (RSS on a CPU, max allocated on CUDA) is its own, and does what ``longlora.finetune`` does per
micro-step: Position Interpolation to the length, S2/short attention (G = N/4) or SDPA, LoRA+ (or full
fine-tuning), gradient checkpointing, bf16 activations with fp32 trainable weights under autocast, the
chunked cross-entropy (no tokens x vocabulary logits), AdamW. It reports training tokens/s (from the
median of the timed steps after ``--warmup`` untimed ones; every step's time is kept in ``step_s``),
forward-only tokens/s of the same model in the same dtype (no_grad, train mode so S2 is used; one pass
after the training steps, in the same warm process), their ratio, and the peak. Ratios are computed from
numbers of this one run.

Full attention on ``packed`` rows is what a user of transformers gets on a CPU: the SDPA backend with
the 4-D block-diagonal mask transformers builds from the restarting positions (a dense T x T mask; on a
CPU no kernel skips the masked blocks: flex_attention has no CPU backward, flash-attn varlen needs CUDA).
It is therefore slower than full attention over the same tokens as one document, and ``S2/full`` on
packed rows measures S2 against that, not against an ideal per-document kernel.

Data: ``book`` is one row cut from one long book (``--book``, a fixture by default); ``packed`` is the
same tokens cut into documents of log-normal lengths (median ~600 tokens) and packed as
``longlora.training.data.PackedDataset`` packs them (positions restart per document, no attention across
documents, document starts carry no loss).

Random weights: ``--config-json llama-3.1-8b`` (or any ``config.json``) trains a model of that shape with
random weights saved once under ``--workdir``, on rows of UTF-8 bytes of the book (no download, no
tokenizer; ``benchmarks/random_models.py``). ``--loss-backend`` picks the loss kernel (``auto``: Liger's
fused kernel on CUDA when installed, else the chunked one; each result records which ran) and
``--tiled-mlp`` runs the MLPs in slices, as ``longlora.finetune``'s flag does.

Usage (CPU examples first):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py                     # 8k and 16k, bundled model
    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_step.py --long              # adds 32k
    python benchmarks/train_step.py --lengths 8192 --methods lora+ --attentions s2 --data book
    python benchmarks/train_step.py --quick --model path/to/tiny-model          # 256/512 tokens, smoke run
    python benchmarks/train_step.py --device cuda --output results/train-step-cuda.json
    python benchmarks/train_step.py --device cuda --config-json llama-3.1-8b --lengths 16384 --methods lora+ \\
        --attentions s2 --data book --loss-backend liger --offload-activations --tiled-mlp
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LONGLORA_FIXTURES") or ROOT.parent / "shared" / "fixtures")
METHODS = ("lora+", "lora", "full", "qlora")
# s2-flex: S2 through one flex_attention call (CUDA); s2-sink: --attention s2-sink (--sink-tokens/--sink-stride)
ATTENTIONS = ("s2", "full", "short", "s2-flex", "s2-sink")
DATA = ("book", "packed")
RESULT = "RESULT "


# ----------------------------------------------------------------------------- one configuration (child)


def _load_for_training(spec: dict):
    """The model as longlora.finetune prepares it: PI to the length, S2/short/full, method, compute dtype."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from longlora.lora import prepare_model
    from longlora.models import bnb_4bit_config
    from longlora.position import apply_position_interpolation, bake_context_window
    from longlora.s2attn import enable_s2_attention

    device, dtype, method = torch.device(spec["device"]), _dtype(spec["dtype"]), spec["method"]
    config = AutoConfig.from_pretrained(spec["model"])
    if spec["length"] > bake_context_window(config):
        apply_position_interpolation(config, spec["length"], rope_type="linear")
    kwargs = dict(config=config, attn_implementation="sdpa", use_safetensors=True)
    kwargs["dtype"] = torch.float32 if method == "full" else dtype  # full: fp32 master weights + autocast
    if method == "qlora":
        kwargs.update(quantization_config=bnb_4bit_config(dtype), device_map={"": device})
    model = AutoModelForCausalLM.from_pretrained(spec["model"], **kwargs)
    if method != "qlora":
        model.to(device)
    model.config.use_cache = False
    if spec["attention"] != "full":
        enable_s2_attention(
            model,
            group_size_ratio=0.25,
            shift=spec["attention"] != "short",
            backend="flex" if spec["attention"] == "s2-flex" else "auto",
            **(
                {"sink_tokens": spec["sink_tokens"], "sink_stride": spec["sink_stride"]}
                if spec["attention"] == "s2-sink"
                else {}
            ),
        )
    compute = None if dtype == torch.float32 else dtype
    model = prepare_model(model, method, gradient_checkpointing=True, compute_dtype=compute).train()
    if spec.get("tiled_mlp"):
        from longlora.tiled_mlp import enable_tiled_mlp

        enable_tiled_mlp(model, spec.get("tiled_mlp_shards"))
    return model


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]


def _batch(spec: dict, vocab_size: int, device) -> dict:
    """(1, L) input_ids/labels (+ position_ids for packed rows): from the row file, or random tokens."""
    import numpy as np
    import torch

    if spec.get("rows"):
        row = np.load(spec["rows"])
        batch = {k: torch.from_numpy(row[k])[None] for k in row.files}
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab_size, (1, spec["length"]), generator=g)
        batch = {"input_ids": ids, "labels": ids.clone()}
    return {k: v.to(device) for k, v in batch.items()}


def measure(spec: dict) -> dict:
    """Run ``warmup + steps`` training steps (and ``forward`` no-grad passes) of one configuration.

    spec keys: model, length, method, attention, dtype, device, steps, warmup, forward, rows (an .npz
    row file, or None for random tokens), chunk_size, offload, memory_cap_gb (CUDA only), compact_memory
    (``--compact-cpu-memory``), tiled_mlp and tiled_mlp_shards (``--tiled-mlp``), loss_backend.
    """
    import torch

    from longlora.lora import trainable_parameters
    from longlora.loss import causal_lm_loss, liger_available
    from longlora.training.offload import offload_activations

    torch.manual_seed(0)
    if spec.get("compact_memory"):  # as longlora.finetune --compact-cpu-memory does, before the weights load
        from longlora.training.cpu_memory import compact_cpu_memory

        compact_cpu_memory()
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if cuda and spec.get("memory_cap_gb"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_cap_gb"] * 2**30 / total), device)
    model = _load_for_training(spec)
    batch = _batch(spec, model.get_output_embeddings().weight.shape[0], device)
    tokens = batch["input_ids"].numel()
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-5, betas=(0.9, 0.95))
    dtype = _dtype(spec["dtype"])
    backend = spec.get("loss_backend") or "auto"
    if backend == "auto":  # the kernel linear_cross_entropy's "auto" picks, recorded with the result
        backend = "liger" if cuda and liger_available() else "chunked"

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def train_step() -> float:
        with autocast(), offload_activations(spec.get("offload", False), device):
            loss = causal_lm_loss(model, chunk_size=spec.get("chunk_size"), backend=backend, **batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], float("nan")
    for i in range(spec["warmup"] + spec["steps"]):
        sync()
        t0 = time.perf_counter()
        loss = train_step()
        sync()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes()
    out = {
        "tokens": tokens,
        "loss": round(loss, 4),
        "warmup_steps": spec["warmup"],
        "step_s": [round(t, 3) for t in times],  # every timed step, after the untimed warm-up ones
        # the median timed step; with several, the range is in step_s
        "tokens_per_s": round(tokens / sorted(times)[len(times) // 2], 2) if times else None,
        "peak_mb": round(peak / 2**20, 1),
        "peak_kind": "max_allocated" if cuda else "rss",
        "loss_backend": backend,
    }
    if spec.get("forward"):
        with torch.no_grad(), autocast():
            sync()
            t0 = time.perf_counter()
            causal_lm_loss(model, chunk_size=spec.get("chunk_size"), backend=backend, **batch)
            sync()
        out["forward_tokens_per_s"] = round(tokens / (time.perf_counter() - t0), 2)
        if out["tokens_per_s"]:
            out["train_over_forward"] = round(out["tokens_per_s"] / out["forward_tokens_per_s"], 3)
    return out


def _peak_rss_bytes() -> int:
    """This process's peak RSS. Linux's ``ru_maxrss`` keeps the RSS the process had before ``exec`` (the
    forked copy of the parent: ~1.4 GB inside a test run), so read the current image's high-water mark
    ``VmHWM`` where there is one."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child_main(spec_json: str) -> int:
    sys.path.insert(0, str(ROOT))
    spec = json.loads(spec_json)
    try:
        result = measure(spec)
    except Exception as err:  # reported to the parent as this configuration's outcome
        import torch

        oom = isinstance(err, torch.OutOfMemoryError)
        print(RESULT + json.dumps({"error": f"{type(err).__name__}: {err}"[:500], "oom": oom}), flush=True)
        return 3
    print(RESULT + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------- parent


def run_child(spec: dict, *, watch_rss_bytes: int | None = None, timeout: float | None = None) -> dict:
    """Run one configuration in a fresh interpreter; return its result dict (``error`` on failure).

    ``watch_rss_bytes``: kill the child as soon as its resident memory passes this (a CPU memory budget
    that must not push a shared machine into swap).
    """
    import psutil

    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=str(ROOT))
        started, over = time.monotonic(), None
        while proc.poll() is None:
            time.sleep(0.05)
            if watch_rss_bytes:
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(proc.pid).memory_info().rss
                    if rss > watch_rss_bytes:
                        over = rss
                        proc.kill()
            if timeout and time.monotonic() - started > timeout:
                proc.kill()
        proc.wait()
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith(RESULT)]
        stderr_tail = err.read()[-800:]
    if over is not None:
        return {"error": f"over the memory budget (RSS reached {over / 2**30:.2f} GB)", "oom": True}
    if lines:
        return json.loads(lines[-1][len(RESULT) :])
    killed = proc.returncode in (-9, 137)
    reason = "killed (out of memory?)" if killed else f"exit code {proc.returncode}"
    return {"error": f"{reason}: {stderr_tail.strip()[-400:]}", "oom": killed}


def device_and_dtype(device_name: str, dtype_name: str):
    """For the --device and --dtype flags: (torch device, dtype label "bf16" / "fp32" / "fp16", the
    hardware as every benchmark prints it: the GPU's name, or the CPU and its native bf16 support)."""
    import torch

    from longlora.models import resolve_device, resolve_dtype

    device = resolve_device(device_name)
    labels = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, bf16 {cpu_bf16_support()}"
    return device, labels[resolve_dtype(dtype_name, device)], hw


def cpu_bf16_support() -> str:
    """Native bf16 on this CPU as torch probes it (AVX512-BF16 or AMX), for every printed number."""
    import torch

    sys.path.insert(0, str(ROOT))
    from longlora.models import cpu_has_fast_bf16

    capability = torch.backends.cpu.get_cpu_capability()
    return f"{'native' if cpu_has_fast_bf16() else 'none (emulated)'} ({capability})"


def write_rows(
    model: str, book: Path, lengths: list[int], data: list[str], workdir: Path, vocab_size: int | None = None
) -> dict:
    """Tokenize the book once (or, with ``vocab_size``, take its UTF-8 bytes: a random-weights model has
    no tokenizer); write one .npz row per (length, data) for the children."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from longlora.training import data as D

    if vocab_size is None:
        from transformers import AutoTokenizer

        stream = D.read_pretrain_stream([str(book)], AutoTokenizer.from_pretrained(model))
    else:
        from random_models import utf8_token_ids

        stream = D.TokenStream(utf8_token_ids(Path(book).read_text(encoding="utf-8"), vocab_size))
    need = max(lengths)
    if len(stream) < need:
        raise SystemExit(f"error: --book {book} has {len(stream):,} tokens, fewer than --lengths {need}")
    rng = np.random.default_rng(0)
    paths = {}
    for length in lengths:
        tokens = np.asarray(stream.tokens[:length], dtype=np.int64)
        for kind in data:
            starts = np.zeros(1, dtype=np.int64)
            if kind == "packed":  # log-normal document lengths, median ~600 tokens (sigma 1)
                sizes = np.maximum(1, rng.lognormal(np.log(600), 1.0, size=length)).astype(np.int64)
                starts = np.concatenate([[0], np.cumsum(sizes)])
                starts = starts[starts < length]
            row = D.PackedDataset(D.TokenStream(tokens, starts), length)[0]
            path = workdir / f"row-{kind}-{length}.npz"
            np.savez(path, **{k: v.numpy() for k, v in row.items()})
            paths[(kind, length)] = (str(path), len(starts))
    return paths


def _fmt(x, spec="{:.1f}") -> str:
    return "-" if x is None else spec.format(x)


def summarise_rounds(results: list[dict]) -> list[str]:
    """With ``--rounds N``: for each configuration, the step time of every attention over S2's within each
    round (rounds ran one after another, so a busy spell slows one round's configurations alike), as the
    median and range over the rounds."""
    by = {(r.get("round", 0), r["length"], r["method"], r["data"], r["attention"]): r for r in results}
    lines = []
    for length, method, data in sorted({(r["length"], r["method"], r["data"]) for r in results}):
        for attention in ATTENTIONS:
            if attention == "s2":
                continue
            ratios = []
            for rnd in sorted({r.get("round", 0) for r in results}):
                a, b = (
                    by.get((rnd, length, method, data, attention)),
                    by.get((rnd, length, method, data, "s2")),
                )
                if a and b and a.get("tokens_per_s") and b.get("tokens_per_s"):
                    ratios.append(b["tokens_per_s"] / a["tokens_per_s"])  # step time attention / S2
            if ratios:
                ordered = sorted(ratios)
                lines.append(
                    f"{length:>6} {method:<5} {data:<6}  step time {attention}/s2 median "
                    f"{ordered[len(ordered) // 2]:.2f}x (range {ordered[0]:.2f}-{ordered[-1]:.2f}, "
                    f"{len(ratios)} rounds: {', '.join(f'{x:.2f}' for x in ratios)})"
                )
    return lines


def summarise(results: list[dict]) -> list[str]:
    """Ratio lines from one run: S2 vs full/short, packed vs book, memory, against the targets."""
    lines = []
    rounds = sorted({r.get("round", 0) for r in results})
    if len(rounds) > 1:  # one line per configuration pair from every round, then the last round's lines
        lines += summarise_rounds(results)
        results = [r for r in results if r.get("round", 0) == rounds[-1]]
    by = {(r["length"], r["method"], r["data"], r["attention"]): r for r in results if "tokens_per_s" in r}

    def ratio(a, b, field="tokens_per_s"):
        if a in by and b in by and by[a].get(field) and by[b].get(field):
            return by[a][field] / by[b][field]
        return None

    for length, method in sorted({(r["length"], r["method"]) for r in results}):
        for data in DATA:
            s2, full, short, s2_flex, s2_sink = ((length, method, data, a) for a in ATTENTIONS)
            target = 1.8 if data == "book" else 1.5
            r = ratio(s2, full)
            if r is None and ratio(s2, short) is None:
                continue
            ok = "" if r is None else f" (target >= {target:.1f}x: {'met' if r >= target else 'NOT met'})"
            lines.append(
                f"{length:>6} {method:<5} {data:<6}  S2/full tokens/s {_fmt(r, '{:.2f}x')}{ok}  "
                f"S2/short {_fmt(ratio(s2, short), '{:.2f}x')}  "
                f"peak S2/full {_fmt(ratio(s2, full, 'peak_mb'), '{:.2f}')}"
                + (f"  S2 flex/auto tokens/s {ratio(s2_flex, s2):.2f}x" if ratio(s2_flex, s2) else "")
                + (f"  step time S2-sink/S2 {ratio(s2, s2_sink):.2f}x" if ratio(s2, s2_sink) else "")
            )
        r = ratio((length, method, "packed", "s2"), (length, method, "book", "s2"))
        if r is not None:
            lines.append(
                f"{length:>6} {method:<5} S2 packed/book tokens/s {r:.2f} (target >= 0.90: "
                f"{'met' if r >= 0.9 else 'NOT met'})"
            )
    return lines


def add_step_options(p: argparse.ArgumentParser) -> None:
    """The training step's memory and loss options, shared by the benchmarks that run it."""
    p.add_argument("--chunk-size", type=int, default=None, help="loss chunk in tokens (default ~128 MB)")
    p.add_argument("--offload-activations", action="store_true", help="CUDA: checkpoints in pinned CPU RAM")
    p.add_argument(
        "--tiled-mlp", action="store_true", help="as finetune's flag: MLPs run in slices (deepspeed)"
    )
    p.add_argument(
        "--tiled-mlp-shards", type=int, default=None, help="slices for --tiled-mlp (default: auto)"
    )
    p.add_argument(
        "--loss-backend",
        choices=("auto", "chunked", "liger"),
        default="auto",
        help="loss kernel (default auto: Liger's fused one on CUDA when installed, else chunked)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="'default' (bundled SmolLM2-135M) or a model folder")
    p.add_argument(
        "--config-json", help="random weights of this architecture instead: a config.json, or llama-3.1-8b"
    )
    p.add_argument("--workdir", default=None, help="random-weights models (default: the longlora cache)")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384], help="context lengths")
    p.add_argument("--long", action="store_true", help="add 32768 to --lengths")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["lora+", "full"], help="trainable sets")
    p.add_argument(
        "--attentions", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS[:3]), help="attention"
    )
    p.add_argument("--data", nargs="+", choices=DATA, default=list(DATA), help="one long book / packed docs")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="bf16", help="compute dtype")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--book", default=str(FIXTURES / "austen-emma.txt"), help="the long document")
    p.add_argument(
        "--steps", type=int, default=3, help="timed training steps per configuration (median kept)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps before them")
    add_step_options(p)
    p.add_argument(
        "--compact-cpu-memory", action="store_true", help="as finetune's flag: freed memory returned at once"
    )
    p.add_argument(
        "--sink-tokens", type=int, default=4, help="--attention s2-sink: sink tokens per document (default 4)"
    )
    p.add_argument(
        "--sink-stride", type=int, default=8, help="--attention s2-sink: every S-th earlier token (default 8)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration this many times, one round after another; the ratios to S2 are "
        "then reported per round as median and range",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: one row of 256 tokens")
    p.add_argument("--output", help="also write every result as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child_main(sys.argv[2])
    args = build_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from longlora.models import resolve_model_path

    device, dtype, hw = device_and_dtype(args.device, args.dtype)
    lengths = [256] if args.quick else sorted(set(args.lengths + ([32768] if args.long else [])))
    warmup = args.warmup
    vocab_size = None  # rows through the model's tokenizer
    if args.config_json:
        from random_models import random_model_dir, read_config

        from data_tools.bundled import cache_dir

        config = read_config(args.config_json)
        model = str(random_model_dir(config, Path(args.workdir or cache_dir() / "max_context"), device.type))
        vocab_size = int(config["vocab_size"])
    else:
        model = resolve_model_path(args.model)
    print(
        f"model {model}\ndevice {device} ({hw}), dtype {dtype}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}; steps {warmup} untimed + {args.steps} timed per configuration; "
        f"allocator {'compact (--compact-cpu-memory)' if args.compact_cpu_memory else 'default'}; loss "
        f"{args.loss_backend}; tiled MLP {'on' if args.tiled_mlp else 'off'}; activation offloading "
        f"{'on' if args.offload_activations else 'off'}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_rows(model, Path(args.book), lengths, args.data, Path(tmp), vocab_size)
        header = (
            f"{'length':>6} {'method':<5} {'data':<6} {'attn':<5} {'docs':>4} {'tok/s':>8} {'fwd tok/s':>9} "
            f"{'train/fwd':>9} {'peak MB':>8} {'loss':>7} kernel"
        )
        print(header)
        for rnd, length in ((rnd, n) for rnd in range(args.rounds) for n in lengths):
            for method in args.methods:
                for data in args.data:
                    for attention in args.attentions:
                        path, docs = rows[(data, length)]
                        spec = dict(
                            model=model,
                            length=length,
                            method=method,
                            attention=attention,
                            dtype=dtype,
                            device=str(device),
                            steps=args.steps,
                            warmup=warmup,
                            forward=True,
                            rows=path,
                            chunk_size=args.chunk_size,
                            offload=args.offload_activations,
                            compact_memory=args.compact_cpu_memory,
                            tiled_mlp=args.tiled_mlp,
                            tiled_mlp_shards=args.tiled_mlp_shards,
                            loss_backend=args.loss_backend,
                            sink_tokens=args.sink_tokens,
                            sink_stride=args.sink_stride,
                        )
                        r = {**spec, "data": data, "documents": docs, "round": rnd, **run_child(spec)}
                        results.append(r)
                        if "error" in r:
                            print(f"{length:>6} {method:<5} {data:<6} {attention:<5} failed: {r['error']}")
                            continue
                        print(
                            f"{length:>6} {method:<5} {data:<6} {attention:<5} {docs:>4} {r['tokens_per_s']:>8.1f} "
                            f"{_fmt(r.get('forward_tokens_per_s')):>9} {_fmt(r.get('train_over_forward'), '{:.3f}'):>9} "
                            f"{r['peak_mb']:>8.0f} {r['loss']:>7.3f} {r['loss_backend']}",
                            flush=True,
                        )
    print("\nratios (this run):")
    for line in summarise(results):
        print("  " + line)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        from longlora.provenance import run_record

        payload = {"provenance": run_record(), "device": hw, "dtype": dtype, "results": results}
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, out)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
