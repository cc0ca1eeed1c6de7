"""Why S2-Attn falls behind full attention at 4x: where the loss goes, and where attention goes.

Reads the models ``reproduce_table1.py`` trained (``--workdir``; each seed's pre-trained model and the
models fine-tuned at ``--target`` with full fine-tuning under each attention regime) and scores them all
the way they are tested, with full attention over rows of ``--target`` tokens of the held-out book:

- **loss by position**: mean next-token loss in eight equal bins of the row. A model trained in
  groups of G = target/4 tokens never attended further than about G tokens back; if its deficit
  against full-attention training grows with the position, what it misses is the long range itself.
- **attention to the first tokens**: the share of each query's attention that goes to the first 1 and 4
  tokens of the row (the "attention sink" of StreamingLLM), by layer, for queries past the first group.
  Under S2 every group after the first trains without the row's first tokens, so each group's own first
  tokens play the sink; at test time, with the real first tokens back in view, the model puts its
  attention differently from one trained with full attention. SinkLoRA (2024) blames this for most of
  S2-Attn's gap; this measures it here.
- the same share for the pre-trained model at its own short window (what pre-training taught).

Usage (CPU, a minute per seed; after ``reproduce_table1.py`` has trained the models)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/table1_diagnosis.py --workdir out/reproduce-table1 \\
        --seeds 0 1 2 --output results/table1-diagnosis.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT.parent / "shared" / "fixtures"
REGIMES = ("full", "short", "s2", "s2-sink")
BINS = 8
SINKS = (1, 4)


def attention_profile(model, rows, first_query: int) -> dict:
    """Per layer, the mean attention share on the first k tokens (k in SINKS) of queries at
    positions >= ``first_query``, and the per-bin next-token loss, over ``rows`` (N, T)."""
    import torch

    layers = model.config.num_hidden_layers
    mass = {k: [0.0] * layers for k in SINKS}
    T = rows.shape[1]
    bin_loss = torch.zeros(BINS)
    with torch.no_grad():
        for row in rows:
            out = model(input_ids=row[None], output_attentions=True)
            losses = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), row[1:], reduction="none")
            bin_loss += torch.stack([chunk.mean() for chunk in losses.tensor_split(BINS)])
            for layer, att in enumerate(out.attentions):  # (1, H, T, T)
                late = att[0, :, first_query:, :]  # (H, T - first_query, T)
                for k in SINKS:
                    mass[k][layer] += late[..., :k].sum(-1).mean().item()
    n = rows.shape[0]
    return {
        "loss": (bin_loss.mean() / n).item(),
        "loss_by_bin": (bin_loss / n).tolist(),
        "bin_tokens": T // BINS,
        "first_token_share_by_layer": {str(k): [m / n for m in mass[k]] for k in SINKS},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "reproduce-table1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--target", type=int, default=1024)
    p.add_argument("--short-len", type=int, default=256)
    p.add_argument("--eval-book", type=Path, default=FIXTURES / "austen-prideprejudice.txt")
    p.add_argument("--rows", type=int, default=24, help="rows of --target tokens scored per model")
    p.add_argument(
        "--extra",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="more fine-tuned models per seed; {seed} in PATH is the seed (e.g. probes of other settings)",
    )
    p.add_argument("--output", type=Path)
    args = p.parse_args(argv)

    import torch

    from longlora.eval.common import write_json
    from longlora.eval.tokens import load_eval_tokens
    from longlora.models import load_model
    from longlora.provenance import run_record

    group = args.target // 4
    result: dict = {"target": args.target, "group": group, "rows": args.rows, "seeds": {}}
    for seed in args.seeds:
        root = args.workdir / f"seed-{seed}"
        models = {"none": root / "pretrained"}
        models.update({r: root / f"full-{r}-{args.target}" for r in REGIMES})
        for spec in args.extra:
            name, _, path = spec.partition("=")
            models[name] = Path(path.format(seed=seed))
        per: dict = {}
        for name, path in models.items():
            if not (path / "config.json").is_file():
                continue
            model, tokenizer = load_model(str(path), dtype="fp32", context_length=args.target, status=None)
            model.set_attn_implementation("eager")
            model.eval()
            data = load_eval_tokens([str(args.eval_book)], tokenizer)
            rows = torch.as_tensor(data.tokens[: args.target * args.rows]).view(args.rows, args.target)
            per[name] = attention_profile(model, rows, first_query=group)
            print(f"seed {seed} {name:>8}: loss {per[name]['loss']:.4f} by bin "
                  + " ".join(f"{x:.3f}" for x in per[name]["loss_by_bin"])
                  + "  sink share (k=1) by layer "
                  + " ".join(f"{x:.3f}" for x in per[name]["first_token_share_by_layer"]["1"]),
                  flush=True)  # fmt: skip
        if (root / "pretrained" / "config.json").is_file():
            model, tokenizer = load_model(str(root / "pretrained"), dtype="fp32", status=None)
            model.set_attn_implementation("eager")
            model.eval()
            short_rows = torch.as_tensor(data.tokens[: args.short_len * args.rows]).view(
                args.rows, args.short_len
            )
            per["pretrained@short"] = attention_profile(model, short_rows, first_query=args.short_len // 4)
        result["seeds"][str(seed)] = per

    # the deficit against full-attention fine-tuning, by bin, per regime (mean over seeds)
    summary: dict = {}
    for regime in ("short", "s2", "s2-sink"):
        deltas = [
            [a - b for a, b in zip(per[regime]["loss_by_bin"], per["full"]["loss_by_bin"])]
            for per in result["seeds"].values()
            if regime in per and "full" in per
        ]
        if deltas:
            summary[regime] = {
                "loss_minus_full_by_bin": [statistics.fmean(d[i] for d in deltas) for i in range(BINS)]
            }
            print(f"{regime:>8} - full, by bin of {args.target // BINS}: "
                  + " ".join(f"{x:+.4f}" for x in summary[regime]["loss_minus_full_by_bin"]))  # fmt: skip
    result["summary"] = summary
    if args.output:
        write_json(args.output, {"kind": "table1-diagnosis", "provenance": run_record(), **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
