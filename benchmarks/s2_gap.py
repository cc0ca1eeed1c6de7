"""Why S2-Attn starts with a higher loss than short attention on a model never trained with it.

One forward pass (no training, train-mode attention) per attention pattern over the same rows of
held-out text, with per-token losses:

- ``full``: causal attention over the row (what the model was trained with, up to its window);
- ``short``: every head in groups ``[0, G), [G, 2G), ...`` (the paper's "short attention" ablation);
- ``shifted``: every head in groups shifted by G/2 (``[0, G/2), [G/2, 3G/2), ...``);
- ``s2``: half the heads in each pattern: S2-Attn.

``short`` and ``shifted`` give each token one context in all heads; ``s2`` gives the two halves of the
heads different contexts. If ``s2`` loses more than both, the cost is the disagreement between head
halves, not the groups themselves. The losses are also reported by position inside the group (the
distance from the last unshifted boundary, in eighths of G): where ``s2`` pays, compared with ``short``.

Usage:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/s2_gap.py --model default --context-length 16384 \\
        --rows 2 --output results/s2-gap-base.json
    python benchmarks/s2_gap.py --model out/smollm2-16k/merged --rows 2 --output results/s2-gap-recipe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = ("full", "short", "shifted", "s2")
_MODE = {"pattern": "full"}


def probe_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """An attention backend for the probe: the pattern in ``_MODE`` (full causal SDPA otherwise)."""
    import torch

    from longlora.s2attn import group_size_for, s2_attention

    pattern = _MODE["pattern"]
    if pattern == "full":
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
        )
        return out.transpose(1, 2), None
    group = group_size_for(module.config, query.shape[2])
    if pattern == "shifted":  # every head shifted: the second half of S2 over a doubled set of heads
        heads = query.shape[1]
        out = s2_attention(
            torch.cat([query, query], 1),
            torch.cat([key, key], 1),
            torch.cat([value, value], 1),
            group,
            scaling=scaling,
        )[:, heads:]
    else:
        out = s2_attention(query, key, value, group, scaling=scaling, shift=pattern == "s2")
    return out.transpose(1, 2), None


def token_losses(model, ids, chunk: int = 1024):
    """Per-token next-token losses (T-1,), the vocabulary projection in chunks of ``chunk`` tokens."""
    import torch

    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, :-1]
        targets = ids[0, 1:]
        out = []
        for start in range(0, hidden.shape[0], chunk):
            logits = model.lm_head(hidden[start : start + chunk]).float()
            out.append(
                torch.nn.functional.cross_entropy(logits, targets[start : start + chunk], reduction="none")
            )
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="'default' (bundled), a model folder or hub id")
    p.add_argument("--context-length", default="16k", help="row length (PI applied above the window)")
    p.add_argument("--rope-type", default="linear", help="RoPE scaling when the length is past the window")
    p.add_argument("--text", default=str(ROOT / "data" / "books" / "heldout"), help="held-out text")
    p.add_argument("--rows", type=int, default=2, help="consecutive rows of the text to score")
    p.add_argument("--group-ratio", type=float, default=0.25, help="G as a fraction of the row")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--output", type=Path, help="write the losses as JSON (with provenance)")
    args = p.parse_args(argv)

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    sys.path.insert(0, str(ROOT))
    from longlora.eval.tokens import load_eval_tokens
    from longlora.model_flags import parse_length
    from longlora.models import load_model
    from longlora.provenance import run_record

    length = parse_length(args.context_length)
    AttentionInterface.register("s2_probe", probe_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("s2_probe", sdpa_mask)
    model, tokenizer = load_model(
        args.model, dtype=args.dtype, context_length=length, rope_type=args.rope_type, status=None
    )
    model.set_attn_implementation("s2_probe")
    model.config.s2_group_size_ratio = args.group_ratio
    model.train()  # no dropout in these models; train mode is what S2 runs in
    data = load_eval_tokens([args.text], tokenizer)
    tokens = torch.as_tensor(data.tokens[: length * args.rows]).view(args.rows, length)
    group = int(length * args.group_ratio)
    position = torch.arange(1, length) % group  # the target token's place inside its unshifted group
    bucket = (position * 8 // group).tolist()
    result = {"model": args.model, "length": length, "group": group, "rows": args.rows, "patterns": {}}
    for pattern in PATTERNS:
        _MODE["pattern"] = pattern
        losses = torch.stack([token_losses(model, row[None]) for row in tokens])  # (rows, T-1)
        by_eighth = [losses[:, [i for i, b in enumerate(bucket) if b == e]].mean().item() for e in range(8)]
        result["patterns"][pattern] = {
            "loss": losses.mean().item(),
            "loss_per_row": losses.mean(1).tolist(),
            "loss_by_eighth_of_group": by_eighth,
        }
        print(f"{pattern:>8}: loss {losses.mean().item():.4f}  by eighth of G: "
              + " ".join(f"{x:.3f}" for x in by_eighth), flush=True)  # fmt: skip
    base = result["patterns"]
    for name in ("short", "shifted", "s2"):
        print(f"{name} - full: {base[name]['loss'] - base['full']['loss']:+.4f}")
    if args.output:
        args.output.write_text(
            json.dumps({"kind": "s2-gap", "provenance": run_record(), **result}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
