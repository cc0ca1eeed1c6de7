"""Long-context perplexity at several context lengths in one run.

Two protocols:

- ``sliding`` (default): standard sliding-window perplexity. Windows of ``seq_len`` tokens advance
  by ``--stride`` tokens; each window predicts the next token at every position and only the
  targets not scored by an earlier window count, so every token after the first is scored exactly
  once with between ``seq_len - stride + 1`` and ``seq_len`` tokens of context (the first window:
  1..seq_len). The default stride is ``seq_len``: disjoint windows, the cheapest run, each target
  with 1..seq_len tokens of context. ``--stride 0.5`` (a fraction of each seq-len) overlaps windows
  by half, closer to "full context for every token" at twice the cost.
- ``longlora``: the original LongLoRA ``eval.py`` protocol, for comparison with the paper's tables
  (Tables 1-6 report PG19 / proof-pile perplexity this way). Windows of ``seq_len`` tokens start
  every 256 tokens (``range(0, N - seq_len, 256)`` with the last start dropped); each window is
  scored on all its ``seq_len - 1`` in-window next-token predictions (``labels = input_ids``);
  perplexity is exp of the mean window loss. Tokens are scored many times.

Perplexity is ``exp(total NLL / tokens scored)``; logits are computed in chunks so an 8k window
with a 50k vocabulary never materialises all its logits at once.

Usage (CPU example first)::

    python -m longlora.eval.perplexity --model default \\
        --data ../shared/fixtures/austen-emma.txt --seq-len 1k 2k 4k 8k --max-tokens 16k \\
        --torch-dtype bfloat16 --output results/ppl-smollm2-emma.json --plot docs/ppl-smollm2.png

    # a LongLoRA model on the original PG19 uint16 token file, paper protocol, on a GPU
    python -m longlora.eval.perplexity --model Yukang/Llama-2-7b-longlora-32k-ft \\
        --data pg19/test.bin --token-dtype uint16 --protocol longlora --seq-len 2k:32k:2k \\
        --attention flash --output results/pg19.json

    # Position Interpolation without fine-tuning, and the "test with S2-Attn" ablation
    python -m longlora.eval.perplexity --model default --context-length 16k --seq-len 16k ...
    python -m longlora.eval.perplexity --model merged-dir --attention s2 ...

Several result files on one plot: ``python -m longlora.eval.plot a.json b.json -o ppl.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from data_tools.errors import DataError
from longlora.eval.common import (
    add_model_arguments,
    add_output_arguments,
    check_addressable,
    emit_results,
    load_eval_model,
    model_config_record,
    parse_lengths,
)
from longlora.eval.tokens import load_eval_tokens

PROTOCOLS = ("sliding", "longlora")
LOGITS_CHUNK = 1024  # positions per lm_head chunk


class Window(NamedTuple):
    """The model reads ``tokens[start:stop]`` and is scored on targets ``tokens[first:last]``.

    The target at index ``t`` is predicted from ``tokens[start:t]`` (so ``start < first`` and
    ``last <= stop + 1``).
    """

    start: int
    stop: int
    first: int
    last: int


def resolve_stride(stride: int | float | None, seq_len: int) -> int:
    """Stride in tokens: ``None`` -> ``seq_len``; a float in (0, 1] -> that fraction of ``seq_len``."""
    if stride is None:
        return seq_len
    if isinstance(stride, float):
        if not 0 < stride <= 1:
            raise ValueError(f"a fractional --stride must be in (0, 1], got {stride}")
        return max(1, int(seq_len * stride))
    return int(stride)


def parse_stride(text: str) -> int | float:
    """``"512"``/``"1k"`` -> tokens; ``"0.5"`` -> fraction of each seq-len."""
    if "." in str(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"cannot read --stride {text!r}; give tokens (512, 1k) or a fraction (0.5)"
            ) from None
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"a fractional --stride must be in (0, 1], got {text}")
        return value
    return parse_lengths([text])[0]


def sliding_windows(num_tokens: int, seq_len: int, stride: int | float | None = None) -> list[Window]:
    """Windows of the standard sliding-window protocol; every target ``1..N-1`` scored once."""
    stride = resolve_stride(stride, seq_len)
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise ValueError(f"--stride must be between 1 and --seq-len {seq_len}, got {stride}")
    if num_tokens < seq_len + 1:
        raise DataError(
            f"the data has {num_tokens} tokens, too few for --seq-len {seq_len}: the sliding-window "
            f"protocol needs at least seq-len + 1 = {seq_len + 1} tokens"
        )
    windows = []
    prev_stop = 0  # index of the last target scored so far
    stop = seq_len
    while True:
        stop = min(stop, num_tokens - 1)
        windows.append(Window(start=stop - seq_len, stop=stop, first=prev_stop + 1, last=stop + 1))
        if stop == num_tokens - 1:
            return windows
        prev_stop = stop
        stop += stride


def longlora_windows(num_tokens: int, seq_len: int, step: int = 256) -> list[Window]:
    """Windows of the original LongLoRA ``eval.py`` (``get_as_batch`` with ``sliding_window=step``)."""
    if step < 1:
        raise ValueError(f"--window-step must be positive, got {step}")
    starts = list(range(0, num_tokens - seq_len, step))
    if len(starts) < 2:
        raise DataError(
            f"the data has {num_tokens} tokens, too few for --seq-len {seq_len} with the longlora protocol: "
            f"it needs at least seq-len + window-step + 1 = {seq_len + step + 1} tokens"
        )
    starts.pop()  # the original drops the last start
    return [Window(start=s, stop=s + seq_len, first=s + 1, last=s + seq_len) for s in starts]


def make_windows(num_tokens: int, seq_len: int, *, protocol: str = "sliding", stride=None, window_step=256):
    if protocol == "sliding":
        return sliding_windows(num_tokens, seq_len, stride)
    if protocol == "longlora":
        return longlora_windows(num_tokens, seq_len, window_step)
    raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")


def _uses_plain_head(model) -> bool:
    """True when logits are exactly ``lm_head(last_hidden_state)`` (up to Gemma-style softcapping)."""
    config = model.config
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return False
    if getattr(config, "logits_scaling", None) not in (None, 1, 1.0):
        return False
    try:
        return model.get_output_embeddings() is not None and model.get_decoder() is not model
    except (AttributeError, NotImplementedError, ValueError):
        return False


@torch.no_grad()
def prediction_nll(model, input_ids: torch.Tensor, lo: int, hi: int, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (float32, ``(B, hi - lo)``) of ``targets`` predicted at positions ``lo..hi-1``.

    input_ids: (B, T) on the model's device; targets: (B, hi - lo), ``targets[:, j]`` is the token
    that follows position ``lo + j``.
    """
    if not _uses_plain_head(model):
        logits = model(input_ids=input_ids, use_cache=False).logits[:, lo:hi].float()  # (B, K, V)
        return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    out = []
    for a in range(lo, hi, LOGITS_CHUNK):
        b = min(a + LOGITS_CHUNK, hi)
        logits = head(hidden[:, a:b]).float()  # (B, C, V)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out.append(F.cross_entropy(logits.transpose(1, 2), targets[:, a - lo : b - lo], reduction="none"))
    return torch.cat(out, dim=1)


def _shape(w: Window) -> tuple[int, int, int]:
    return (w.stop - w.start, w.first - w.start, w.last - w.start)


def _batches(windows: list[Window], batch_size: int):
    """Consecutive windows with the same shape, at most ``batch_size`` at a time."""
    batch: list[Window] = []
    for w in windows:
        if batch and (len(batch) == batch_size or _shape(w) != _shape(batch[0])):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def score_windows(model, tokens: np.ndarray, windows: list[Window], *, batch_size: int = 1, progress=None):
    """Total NLL (float64) and number of targets over ``windows``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(windows, batch_size):
        w0 = batch[0]
        inputs = torch.from_numpy(np.stack([tokens[w.start : w.stop] for w in batch])).to(device)
        targets = torch.from_numpy(np.stack([tokens[w.first : w.last] for w in batch])).to(device)
        nll = prediction_nll(model, inputs, w0.first - 1 - w0.start, w0.last - 1 - w0.start, targets)
        total += float(nll.double().sum())
        count += int(nll.numel())
        if progress is not None:
            progress.update(len(batch))
    return total, count


def evaluate_perplexity(
    model,
    tokens: np.ndarray,
    seq_len: int,
    *,
    protocol: str = "sliding",
    stride: int | None = None,
    window_step: int = 256,
    batch_size: int = 1,
    show_progress: bool = False,
) -> dict:
    """Perplexity of ``model`` on ``tokens`` at one context length; returns one result entry."""
    from tqdm.auto import tqdm

    windows = make_windows(len(tokens), seq_len, protocol=protocol, stride=stride, window_step=window_step)
    tokens = np.asarray(tokens, dtype=np.int64)
    t0 = time.perf_counter()
    with tqdm(
        total=len(windows),
        desc=f"seq-len {seq_len}",
        unit="win",
        disable=not show_progress,
        file=sys.stderr,
        leave=False,
    ) as bar:
        total, count = score_windows(model, tokens, windows, batch_size=batch_size, progress=bar)
    seconds = time.perf_counter() - t0
    loss = total / count
    entry = {
        "seq_len": seq_len,
        "ppl": math.exp(loss),
        "tokens": count,
        "seconds": round(seconds, 3),
        "loss": loss,
        "windows": len(windows),
        "protocol": protocol,
    }
    if protocol == "sliding":
        entry["stride"] = resolve_stride(stride, seq_len)
    else:
        entry["window_step"] = window_step
    return entry


def format_table(results: list[dict], label: str | None = None) -> str:
    head = f"{'seq_len':>8} {'ppl':>10} {'loss':>8} {'tokens':>9} {'windows':>8} {'seconds':>9} {'tok/s':>8}"
    lines = [f"# {label}"] if label else []
    lines += [head, "-" * len(head)]
    for r in results:
        rate = r["tokens"] / r["seconds"] if r["seconds"] else float("nan")
        lines.append(
            f"{r['seq_len']:>8} {r['ppl']:>10.3f} {r['loss']:>8.4f} {r['tokens']:>9} {r['windows']:>8} "
            f"{r['seconds']:>9.1f} {rate:>8.1f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m longlora.eval.perplexity",
        description="Perplexity of a (long-context) model at several context lengths.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage (CPU example first)::", 1)[1],
    )
    add_model_arguments(parser, token_dtype_dest="token_dtype")
    group = parser.add_argument_group("data and protocol")
    group.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="text/markdown/PDF files, JSONL with a 'text' field, data_tools .bin token files, "
        "or folders of these",
    )
    group.add_argument(
        "--token-dtype",
        default=None,
        choices=("uint16", "uint32"),
        help="token dtype of .bin files without a .bin.json sidecar (the original LongLoRA "
        "files are uint16; --dtype uint16 is read the same); files with a sidecar use the dtype it records",
    )
    group.add_argument(
        "--seq-len",
        nargs="+",
        default=["1k", "2k", "4k"],
        help="context lengths to evaluate: 4096, 4k, or ranges START:STOP:STEP (default: 1k 2k 4k)",
    )
    group.add_argument(
        "--protocol",
        default="sliding",
        choices=PROTOCOLS,
        help="sliding: standard sliding window, each token scored once (default); "
        "longlora: the original eval.py (windows every --window-step tokens, all scored)",
    )
    group.add_argument(
        "--stride",
        type=parse_stride,
        default=None,
        help="sliding protocol: tokens between window ends (512, 1k) or a fraction of each "
        "seq-len (0.5); default: seq-len, i.e. disjoint windows",
    )
    group.add_argument(
        "--window-step",
        type=int,
        default=256,
        help="longlora protocol: tokens between window starts (default: 256, as the original)",
    )
    group.add_argument(
        "--max-tokens",
        default=None,
        help="use only the first N tokens of the data (e.g. 16k) for a quick run",
    )
    group.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default: 1)")
    add_output_arguments(
        parser,
        output="write the results as JSON to this file",
        plot="write a PNG of perplexity against context length",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        seq_lens = parse_lengths(args.seq_len)
        max_tokens = None if args.max_tokens is None else parse_lengths([args.max_tokens])[0]
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if isinstance(args.stride, int) and args.protocol == "sliding" and args.stride > min(seq_lens):
        parser.error(
            f"--stride {args.stride} is larger than --seq-len {min(seq_lens)}; use a stride <= seq-len "
            f"or a fraction such as 0.5"
        )
    try:
        model, tokenizer = load_eval_model(args)
        for seq_len in seq_lens:
            check_addressable(model.config, seq_len, what="--seq-len", context_length=args.context_length)
        data = load_eval_tokens(
            args.data,
            tokenizer,
            token_dtype=args.token_dtype,
            max_tokens=max_tokens,
            vocab_size=model.get_input_embeddings().num_embeddings,
        )
        for seq_len in seq_lens:  # fail before any work if a length cannot be evaluated
            try:
                make_windows(
                    len(data),
                    seq_len,
                    protocol=args.protocol,
                    stride=args.stride,
                    window_step=args.window_step,
                )
            except DataError as err:
                cut = f" (cut to --max-tokens {max_tokens})" if data.truncated else ""
                raise DataError(
                    f"{err}{cut}; give a longer text, raise --max-tokens, or lower --seq-len"
                ) from None
    except ValueError as err:  # includes DataError, data_tools DocumentError, ModelLoadError
        print(f"error: {err}", file=sys.stderr)
        return 2

    config = model_config_record(args, model)
    config.update(
        {
            "protocol": args.protocol,
            "stride": args.stride,
            "window_step": args.window_step if args.protocol == "longlora" else None,
            "data": data.sources,
            "data_tokens": len(data),
            "max_tokens": max_tokens,
            "token_dtype": args.token_dtype,
            "batch_size": args.batch_size,
        }
    )
    results = []
    for seq_len in seq_lens:
        results.append(
            evaluate_perplexity(
                model,
                data.tokens,
                seq_len,
                protocol=args.protocol,
                stride=args.stride,
                window_step=args.window_step,
                batch_size=args.batch_size,
                show_progress=not args.no_progress,
            )
        )
        print(
            f"seq-len {seq_len}: ppl {results[-1]['ppl']:.3f} ({results[-1]['seconds']:.1f} s)",
            file=sys.stderr,
        )
    payload = {"kind": "perplexity", "config": config, "results": results}
    return emit_results(payload, args, format_table(results, config["label"]))


if __name__ == "__main__":
    raise SystemExit(main())
