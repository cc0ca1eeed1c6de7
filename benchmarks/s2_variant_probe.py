"""Explore training-attention variants for Table 1 at 4x before writing a kernel for one (dense masks).

``python benchmarks/s2_variant_probe.py VARIANT -- <python -m longlora.finetune flags with --attention s2>``
trains with a dense boolean-mask attention instead of the S2 kernel (same cost as full attention, any
speed: for deciding *what* to build, not for timing). VARIANT, on top of S2's two head halves:

- ``sink:K``       also the row's first K tokens;
- ``stride:S``     also every S-th earlier token (positions p with p % S == S - 1);
- ``sinkstride:S`` the first 4 tokens and every S-th (what ``--attention s2-sink`` implements);
- ``dilated:S``    the shifted half also sees every S-th earlier token counted back from the query.

Rows must be single documents (``--mode pretrain`` on one book). The probe takes the place of the S2
adapter for this process only (``longlora.s2attn.s2_attention_forward`` is swapped before it is
registered), so ``--attention s2`` runs the variant. The measured variants and their perplexities are in
``results/s2-variant-probes.json`` (see docs/table1.md).
"""

import sys

import torch

VARIANT = sys.argv[1]
argv = sys.argv[3:]
_masks = {}


def build_mask(T, H, G, device):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= i
    g_un = (i // G) == (j // G)
    s = G // 2
    g_sh = ((i + s) // G) == ((j + s) // G)
    kind, _, arg = VARIANT.partition(":")
    arg = int(arg) if arg else 0
    extra = torch.zeros(T, T, dtype=torch.bool)
    if kind == "sink":
        extra = (j < arg).expand(T, T)
    elif kind == "stride":
        extra = ((j % arg) == arg - 1).expand(T, T)
    elif kind == "sinkstride":
        extra = (j < 4) | ((j % arg) == arg - 1)
        extra = extra.expand(T, T)
    m_un = causal & (g_un | extra)
    m_sh = causal & (g_sh | extra)
    if kind == "dilated":  # shifted half replaced by every arg-th token across the row
        m_sh = causal & (g_sh | (((i - j) % arg) == 0))
    heads = [m_un] * (H // 2) + [m_sh] * (H - H // 2)
    return torch.stack(heads)[None].to(device)  # (1, H, T, T)


def probe(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    T = query.shape[2]
    if not module.training or key.shape[2] != T:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    H = query.shape[1]
    G = int(T * module.config.s2_group_size_ratio)
    k = (T, H, G)
    if k not in _masks:
        _masks[k] = build_mask(T, H, G, query.device)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=_masks[k], scale=scaling, enable_gqa=key.shape[1] != H
    )
    return out.transpose(1, 2), None


def main() -> int:
    import longlora.s2attn as s2mod  # the probe takes the adapter's place for this process only

    s2mod.s2_attention_forward = probe
    s2mod.register_s2_attention()
    print("probe attention:", VARIANT, file=sys.stderr)
    from longlora.finetune import main as finetune

    return finetune(argv)


if __name__ == "__main__":
    raise SystemExit(main())
