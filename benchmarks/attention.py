"""S2-Attn (with and without sink tokens) vs full causal SDPA vs the paper's naive Algorithm 1:
forward+backward time and peak memory.

Every case runs in its own subprocess (so peak memory is that case's high-water mark) and the ratios
are computed from numbers measured in this one run. Head shape defaults to the bundled model's
(9 query heads, 3 kv heads, head dim 64); G = T/4 as in the paper; S2 with sinks (``--attention
s2-sink``) sees the first ``--sink-tokens`` tokens of each document and every ``--sink-stride``-th earlier
token besides its group (the defaults of ``--attention s2-sink``: 4 and 8).

Usage (CPU):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/attention.py                  # T = 4k, 8k, 16k; fp32 and bf16
    OMP_WAIT_POLICY=PASSIVE python benchmarks/attention.py --seq-lens 4096 --dtypes bf16 --repeats 3
    python benchmarks/attention.py --device cuda                            # on a GPU (flash-attn if installed)
    OMP_WAIT_POLICY=PASSIVE python benchmarks/attention.py --packed --repeats 3   # packed rows, T = 4k-16k
    OMP_WAIT_POLICY=PASSIVE python benchmarks/attention.py --packed --quick --dtypes bf16  # 4k/8k rows only
    OMP_WAIT_POLICY=PASSIVE python benchmarks/attention.py --seq-lens 4096 --impls s2 s2-sink full  # sink cost
    OMP_WAIT_POLICY=PASSIVE python benchmarks/attention.py --interleaved --seq-lens 4096 8192 --dtypes bf16 \
        --impls s2 s2-sink full --repeats 5      # one process, repeats interleaved: ratios on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# s2: the "auto" kernel; s2-flex: S2 as one flex_attention call (CUDA); s2-sink(-flex): the same with sink
# tokens (the first --sink-tokens tokens of each document seen by every query) and strided keys (every
# --sink-stride-th earlier token)
IMPLS = ("s2", "full", "naive", "s2-flex", "s2-sink", "s2-sink-flex")
DEFAULT_IMPLS = ["s2", "s2-sink", "full", "naive"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_case(
    impl: str,
    seq_len: int,
    dtype_name: str,
    device: str,
    heads: int,
    kv_heads: int,
    dim: int,
    sink_tokens: int = 4,
    sink_stride: int = 8,
):
    """One implementation's forward+backward on fixed random inputs (seed 0, so every implementation gets
    the same q, k, v): a function that runs it once and waits for the device."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import naive_roll_s2

    from longlora.s2attn import s2_attention

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    group = seq_len // 4
    g = torch.Generator().manual_seed(0)

    def make(h):  # (B, T, H, D) projections viewed as (B, H, T, D), the layout attention layers pass
        return (
            torch.randn(1, seq_len, h, dim, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
        )

    q_, k_, v_ = make(heads), make(kv_heads), make(kv_heads)
    grad = torch.randn(1, heads, seq_len, dim, generator=g).to(device=device, dtype=dtype)

    def step():
        q, k, v = q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2)
        if impl.startswith("s2"):
            sinks, stride = (sink_tokens, sink_stride) if impl.startswith("s2-sink") else (0, 0)
            backend = "flex" if impl.endswith("-flex") else "auto"
            out = s2_attention(q, k, v, group, backend=backend, sink_tokens=sinks, sink_stride=stride)
        elif impl == "full":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            out = naive_roll_s2(q, k, v, group)
        out.backward(grad)
        q_.grad = k_.grad = v_.grad = None
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _sink_fields(impl: str, sink_tokens: int, sink_stride: int) -> dict:
    return {"sink_tokens": sink_tokens, "sink_stride": sink_stride} if impl.startswith("s2-sink") else {}


def run_one(
    impl: str,
    seq_len: int,
    dtype_name: str,
    device: str,
    repeats: int,
    heads: int,
    kv_heads: int,
    dim: int,
    sink_tokens: int = 4,
    sink_stride: int = 8,
):
    """Time forward+backward of one implementation after one untimed call; returns the median seconds of
    ``repeats``, their range, and the peak MB."""
    import torch

    step = make_case(impl, seq_len, dtype_name, device, heads, kv_heads, dim, sink_tokens, sink_stride)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        step_small = torch.ones(8, device=device) * 2  # touch the allocator before the baseline
        del step_small
        base = _peak_rss_mb()
    step()  # untimed: CUDA context, kernel selection, compilation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = _peak_rss_mb() - base
    times.sort()
    return {
        "impl": impl,
        "seq_len": seq_len,
        "dtype": dtype_name,
        "seconds": times[len(times) // 2],  # median of the timed repeats
        "seconds_range": [times[0], times[-1]],
        "repeats": repeats,
        "peak_mb": peak,
        **_sink_fields(impl, sink_tokens, sink_stride),
    }


def run_interleaved(args) -> list[dict]:
    """Every implementation in this one process for each (dtype, T): one untimed call each, then
    ``repeats`` rounds that time each implementation once in turn, so a busy machine slows all of them
    alike. Returns one dict per case with the median, the range and every round's seconds (no peak memory:
    the process's high-water mark is shared)."""
    import torch

    print(
        f"interleaved: {args.repeats} rounds, each timing {', '.join(args.impls)} once in turn "
        f"(torch threads={torch.get_num_threads()}, CPU bf16 support: {cpu_bf16_flags()}, "
        f"load average before: {os.getloadavg()[0]:.2f})",
        flush=True,
    )
    results = []
    for dtype in args.dtypes:
        for seq_len in args.seq_lens:
            steps = {
                impl: make_case(
                    impl,
                    seq_len,
                    dtype,
                    args.device,
                    args.heads,
                    args.kv_heads,
                    args.head_dim,
                    args.sink_tokens,
                    args.sink_stride,
                )
                for impl in args.impls
            }
            for step in steps.values():
                step()  # untimed
            rounds = {impl: [] for impl in steps}
            for _ in range(args.repeats):
                for impl, step in steps.items():
                    t0 = time.perf_counter()
                    step()
                    rounds[impl].append(time.perf_counter() - t0)
            for impl, times in rounds.items():
                ordered = sorted(times)
                results.append(
                    {
                        "impl": impl,
                        "seq_len": seq_len,
                        "dtype": dtype,
                        "seconds": ordered[len(ordered) // 2],
                        "seconds_range": [ordered[0], ordered[-1]],
                        "rounds": times,
                        "repeats": args.repeats,
                        "interleaved": True,
                        **_sink_fields(impl, args.sink_tokens, args.sink_stride),
                    }
                )
                print(f"{dtype:>5} {seq_len:>6} {impl:>12} {ordered[len(ordered) // 2]:9.3f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    return results


# ----------------------------------------------------------------------------- packed rows


def packed_mixes(seq_len: int, seed: int = 0) -> dict[str, list[int]]:
    """Document lengths filling one row of ``seq_len`` tokens, the three mixes measured on real data.

    ``lognormal-600``: log-normal lengths around a median of 600 (with seed 0, 22 documents of median 527 in
    a 16k row); ``lognormal-150``: around a median of 150 (74 documents of median 176 at 16k);
    ``long+tiny``: one document of 61% of the row (10,000 of 16k) followed by documents of 10-60 tokens
    (179 of them at 16k). The last document is cut to fill the row exactly.
    """
    import numpy as np

    rng = np.random.default_rng(seed)

    def fill(first: list[int], draw) -> list[int]:
        lengths = list(first)
        while sum(lengths) < seq_len:
            lengths.append(max(1, int(draw())))
        lengths[-1] -= sum(lengths) - seq_len
        return [n for n in lengths if n > 0]

    return {
        "lognormal-600": fill([], lambda: rng.lognormal(np.log(600), 1.0)),
        "lognormal-150": fill([], lambda: rng.lognormal(np.log(150), 0.75)),
        "long+tiny": fill([int(seq_len * 10000 / 16384)], lambda: rng.integers(10, 61)),
    }


def run_packed(
    seq_len: int,
    dtype_name: str,
    device: str,
    repeats: int,
    heads: int,
    kv_heads: int,
    dim: int,
    sink_tokens: int = 4,
    sink_stride: int = 8,
):
    """Forward+backward of S2 on one packed row vs the same documents one by one vs full causal attention
    over the row, and S2 with sink tokens on the packed row (``packed_sink``). Repeats are interleaved
    across the cases so that a busy machine slows all of them alike;
    each case runs once untimed first, then the median of ``repeats`` is kept with the range. On CUDA two more
    cases: S2 as one flex_attention call (``packed_flex``) and full attention inside each document
    (``full_docs``, one flex_attention call). Returns one dict per mix."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from longlora.s2attn import s2_attention

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    group = seq_len // 4
    g = torch.Generator().manual_seed(0)

    def make(h):  # (1, T, H, D) projections viewed as (1, H, T, D), the layout attention layers pass
        return (
            torch.randn(1, seq_len, h, dim, generator=g).to(device=device, dtype=dtype).requires_grad_(True)
        )

    q_, k_, v_ = make(heads), make(kv_heads), make(kv_heads)
    grad = torch.randn(1, heads, seq_len, dim, generator=g).to(device=device, dtype=dtype)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        q_.grad = k_.grad = v_.grad = None
        return time.perf_counter() - t0

    def qkv():
        return q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2)

    def full():
        q, k, v = qkv()
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(grad)

    cuda = device == "cuda"

    results, full_best = [], None
    for mix, lengths in packed_mixes(seq_len).items():
        bounds = [0]
        for n in lengths:
            bounds.append(bounds[-1] + n)
        cu = torch.tensor(bounds, device=device)

        def packed(cu=cu, backend="auto", sinks=0, stride=0):
            q, k, v = qkv()
            out = s2_attention(
                q, k, v, group, cu_seqlens=cu, backend=backend, sink_tokens=sinks, sink_stride=stride
            )
            out.backward(grad)

        # full causal attention inside each document, one flex_attention call; its block mask is built
        # once here, as S2's is built once per layout and then cached (a training step builds it once)
        doc_mask = document_block_mask(cu, seq_len) if cuda else None

        def full_docs(mask=doc_mask):
            q, k, v = qkv()
            full_document_attention(q, k, v, mask).backward(grad)

        # each document its own leaf tensors, as if it were a row of its own (slices of the packed leaves
        # would make every document's backward write a row-sized gradient)
        alone = [
            tuple(x[:, a:b].detach().clone().requires_grad_(True) for x in (q_, k_, v_))
            for a, b in zip(bounds[:-1], bounds[1:])
        ]

        def one_by_one(bounds=bounds, alone=alone):
            for (a, b), (qd, kd, vd) in zip(zip(bounds[:-1], bounds[1:]), alone):
                out = s2_attention(qd.transpose(1, 2), kd.transpose(1, 2), vd.transpose(1, 2), group)
                out.backward(grad[:, :, a:b])
                qd.grad = kd.grad = vd.grad = None

        # full attention over the row does not depend on the mix: measured once, beside the first mix
        cases = {
            "packed": packed,
            "packed_sink": lambda cu=cu: packed(cu, sinks=sink_tokens, stride=sink_stride),
            "one_by_one": one_by_one,
            **({"full": full} if full_best is None else {}),
        }
        if cuda:  # S2 as one flex_attention call, and full attention that respects the documents
            cases.update(
                packed_flex=lambda cu=cu: packed(cu, "flex"),
                packed_sink_flex=lambda cu=cu: packed(cu, "flex", sink_tokens, sink_stride),
                full_docs=full_docs,
            )
        for fn in cases.values():
            timed(fn)  # untimed: CUDA context, kernel selection, compilation
        times = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn))
        best = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}  # medians
        ranges = {f"{name}_range": [min(ts), max(ts)] for name, ts in times.items()}
        full_best = best.setdefault("full", full_best)
        results.append(
            {
                "mix": mix,
                "seq_len": seq_len,
                "dtype": dtype_name,
                "group": group,
                "docs": len(lengths),
                "median_len": sorted(lengths)[len(lengths) // 2],
                "sink_tokens": sink_tokens,
                "sink_stride": sink_stride,
                "repeats": repeats,
                **best,
                **ranges,
            }
        )
    return results


def document_block_mask(cu, seq_len: int):
    """The flex_attention block mask of causal attention inside each document of a packed row."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    doc = torch.searchsorted(cu, torch.arange(seq_len, device=cu.device), right=True)

    def causal_in_document(b, h, i, j):
        return (doc[i] == doc[j]) & (j <= i)

    return create_block_mask(causal_in_document, 1, 1, seq_len, seq_len, device=cu.device)


def full_document_attention(q, k, v, mask):
    """Full causal attention of every document of a packed row (what full-attention fine-tuning computes
    on packed rows) in one flex_attention call: q (1, H, T, D), k/v (1, H_kv, T, D)."""
    from longlora.s2flex import _compiled_flex

    return _compiled_flex()(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def cpu_bf16_flags() -> str:
    """The CPU's native bf16 support as /proc/cpuinfo names it (``none`` when it has neither flag)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return "+".join(found) or "none"


def print_packed(args) -> list[dict]:
    """The packed-row section: one table row per (dtype, T, mix), ratios from this run."""
    import torch

    seq_lens = [4096, 8192] if args.quick else args.seq_lens
    print(
        f"\npacked rows: S2 with cu_seqlens vs the same documents one by one vs full causal attention over "
        f"the row, and S2 with {args.sink_tokens} sink tokens and every {args.sink_stride}th token per document on "
        f"the packed row "
        f"(forward+backward, median of {args.repeats}, G=T/4, H={args.heads} H_kv={args.kv_heads} "
        f"D={args.head_dim}, device={args.device}, torch threads={torch.get_num_threads()}, "
        f"CPU bf16 support: {cpu_bf16_flags()})",
        flush=True,
    )
    print(
        f"{'dtype':>5} {'T':>6} {'mix':>14} {'docs':>5} {'median':>6} {'packed s':>9} {'1-by-1 s':>9} "
        f"{'packed/1-by-1':>13} {'full s':>8} {'packed/full':>11} {'sink s':>8} {'sink/packed':>11} "
        f"{'sink/full':>9}"
        + (
            f" {'flex s':>8} {'flex/full':>10} {'docfull s':>9} {'flex/docfull':>14} {'sink flex s':>11}"
            if args.device == "cuda"
            else ""
        )
    )
    results = []
    for dtype in args.dtypes:
        for seq_len in seq_lens:
            for r in run_packed(
                seq_len,
                dtype,
                args.device,
                args.repeats,
                args.heads,
                args.kv_heads,
                args.head_dim,
                args.sink_tokens,
                args.sink_stride,
            ):
                results.append(r)
                print(
                    f"{dtype:>5} {seq_len:>6} {r['mix']:>14} {r['docs']:>5} {r['median_len']:>6} "
                    f"{r['packed']:9.3f} {r['one_by_one']:9.3f} {r['packed'] / r['one_by_one']:12.2f}x "
                    f"{r['full']:8.3f} {r['packed'] / r['full']:10.2f}x "
                    f"{r['packed_sink']:8.3f} {r['packed_sink'] / r['packed']:10.2f}x "
                    f"{r['packed_sink'] / r['full']:8.2f}x"
                    + (
                        f" {r['packed_flex']:8.3f} {r['packed_flex'] / r['full']:9.2f}x "
                        f"{r['full_docs']:9.3f} {r['packed_flex'] / r['full_docs']:13.2f}x "
                        f"{r['packed_sink_flex']:11.3f}"
                        if "full_docs" in r
                        else ""
                    ),
                    flush=True,
                )
    return results


def run_each_in_a_process(args) -> list[dict]:
    """Every (dtype, T, implementation) in its own subprocess (``--one``), so each peak memory is its own."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    print(f"{'dtype':>5} {'T':>6} {'impl':>12} {'seconds':>9} {'peak MB':>9}")
    results = []
    for dtype in args.dtypes:
        for seq_len in args.seq_lens:
            for impl in args.impls:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    impl,
                    str(seq_len),
                    dtype,
                    "--repeats",
                    str(args.repeats),
                    "--heads",
                    str(args.heads),
                    "--kv-heads",
                    str(args.kv_heads),
                    "--head-dim",
                    str(args.head_dim),
                    "--device",
                    args.device,
                    "--sink-tokens",
                    str(args.sink_tokens),
                    "--sink-stride",
                    str(args.sink_stride),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(
                        f"{dtype:>5} {seq_len:>6} {impl:>12}   failed: {proc.stderr.strip().splitlines()[-1:]}"
                    )
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                results.append(res)
                print(
                    f"{dtype:>5} {seq_len:>6} {impl:>12} {res['seconds']:9.3f} {res['peak_mb']:9.0f}",
                    flush=True,
                )
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192, 16384], help="sequence lengths T")
    p.add_argument(
        "--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"], help="precisions"
    )
    p.add_argument("--impls", nargs="+", default=DEFAULT_IMPLS, choices=IMPLS, help="implementations to run")
    p.add_argument(
        "--sink-tokens", type=int, default=4, help="sink tokens per document of the s2-sink implementations"
    )
    p.add_argument(
        "--sink-stride",
        type=int,
        default=8,
        help="strided keys of the s2-sink implementations: every S-th earlier token (0: sinks only)",
    )
    p.add_argument(
        "--interleaved",
        action="store_true",
        help="time every implementation in this one process, the repeats interleaved across them (ratios "
        "that hold on a shared machine; peak memory is then not per case and is not reported)",
    )
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per case (the median is kept)")
    p.add_argument("--heads", type=int, default=9, help="query heads")
    p.add_argument("--kv-heads", type=int, default=3, help="key/value heads")
    p.add_argument("--head-dim", type=int, default=64, help="head dimension")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--packed",
        action="store_true",
        help="only the packed-row section: S2 on documents packed into one row (cu_seqlens) vs the same "
        "documents one by one vs full attention over the row, for three length mixes",
    )
    p.add_argument(
        "--quick", action="store_true", help="packed section on 4k and 8k rows instead of --seq-lens"
    )
    p.add_argument("--output", type=Path, help="write all measurements as JSON here")
    p.add_argument("--one", nargs=3, metavar=("IMPL", "T", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        impl, seq_len, dtype = args.one
        res = run_one(
            impl,
            int(seq_len),
            dtype,
            args.device,
            args.repeats,
            args.heads,
            args.kv_heads,
            args.head_dim,
            args.sink_tokens,
            args.sink_stride,
        )
        print(json.dumps(res))
        return

    if args.packed:
        results = print_packed(args)
        if args.output:
            write_results(args.output, "attention-packed", results)
        return

    print(
        f"H={args.heads} H_kv={args.kv_heads} D={args.head_dim} G=T/4 device={args.device} "
        f"(forward+backward, median of {args.repeats} after one untimed call)",
        flush=True,
    )
    results = run_interleaved(args) if args.interleaved else run_each_in_a_process(args)

    print("\nratios (measured in this run):")
    print(
        f"{'dtype':>5} {'T':>6} {'full/s2 time':>13} {'naive/s2 time':>14} {'full/s2 mem':>12} {'naive/s2 mem':>13}"
        f" {'s2-flex/s2 time':>16} {'s2-sink/s2 time':>16} {'s2-sink/s2 mem':>15} {'s2-sink/full time':>18}"
    )
    by = {(r["dtype"], r["seq_len"], r["impl"]): r for r in results}
    for dtype in args.dtypes:
        for seq_len in args.seq_lens:
            s2 = by.get((dtype, seq_len, "s2"))
            if not s2:
                continue

            def ratio(impl, field, over="s2", dtype=dtype, seq_len=seq_len):
                top, bottom = by.get((dtype, seq_len, impl)), by.get((dtype, seq_len, over))
                if not top or not bottom or field not in top:
                    return "-"
                return f"{top[field] / max(bottom[field], 1e-9):.2f}x"

            print(
                f"{dtype:>5} {seq_len:>6} {ratio('full', 'seconds'):>13} {ratio('naive', 'seconds'):>14} "
                f"{ratio('full', 'peak_mb'):>12} {ratio('naive', 'peak_mb'):>13} {ratio('s2-flex', 'seconds'):>16}"
                f" {ratio('s2-sink', 'seconds'):>16} {ratio('s2-sink', 'peak_mb'):>15}"
                f" {ratio('s2-sink', 'seconds', 'full'):>18}"
            )
    if args.output:
        write_results(args.output, "attention", results)


def write_results(path: Path, kind: str, results: list[dict]) -> None:
    """The measurements with their provenance (command, commit, machine, date)."""
    sys.path.insert(0, str(ROOT))
    from longlora.provenance import run_record

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"kind": kind, "provenance": run_record(), "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
