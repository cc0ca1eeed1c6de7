"""Causal-LM loss without the full-vocabulary logits: a chunked linear + cross-entropy.

A plain training step computes ``logits = hidden @ W.T`` for every token, a ``(T, V)`` matrix, then an
fp32 copy of it and its gradient. With SmolLM2's 49,152-token vocabulary that is 3.2 GB per copy at a
16k context, more than the rest of a checkpointed step. :func:`linear_cross_entropy` never holds it:

* **CUDA with Liger Kernel installed** (``pip install 'longlora[liger]'``): Liger's fused Triton
  ``LigerFusedLinearCrossEntropyLoss``.
* **Elsewhere**: :class:`ChunkedLinearCrossEntropy`, plain PyTorch. The forward pass walks the tokens
  ``chunk_size`` at a time, computes that chunk's logits in the compute dtype, upcasts them, and keeps
  only each token's fp32 log-sum-exp (``(N,)``). The backward pass recomputes each chunk's logits and
  turns them into gradients right away (``softmax - one_hot``), so at most one ``(chunk, V)`` block
  lives at a time. The extra cost is one more ``hidden @ W.T`` matmul, like gradient checkpointing.

Semantics match transformers' ``ForCausalLMLoss`` (label shift, ``ignore_index=-100``, mean over the
non-ignored tokens, or ``sum / num_items_in_batch`` when that is given, as in gradient accumulation;
a batch whose tokens are all ignored gives ``nan`` like ``F.cross_entropy``), Gemma 2's
``final_logit_softcapping``, tied embeddings and a bias on the LM head. :func:`causal_lm_loss` runs a
(peft-wrapped or plain) transformers model's decoder for the hidden states and applies the chunked loss
with the model's own output embedding, so LoRA+ (whose LM head is peft's ``modules_to_save`` copy tied to
the trained embedding) and gradient checkpointing work unchanged.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOGITS_BUDGET = 2**25  # elements of one (chunk, V) logits block: 128 MB in fp32
BACKENDS = ("auto", "chunked", "liger")

__all__ = [
    "CausalLMLoss",
    "ChunkedLinearCrossEntropy",
    "causal_lm_loss",
    "chunk_size_for",
    "linear_cross_entropy",
    "liger_available",
]


def chunk_size_for(vocab_size: int) -> int:
    """Tokens per chunk so that one ``(chunk, V)`` fp32 logits block stays near 128 MB."""
    return max(16, LOGITS_BUDGET // max(1, vocab_size))


def _chunk_logits(h, weight, bias, softcap):
    """fp32 logits of one chunk ``(c, V)`` (matmul in the compute dtype, as ``lm_head`` would run it)."""
    logits = F.linear(h, weight, bias).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``sum_i CE(hidden[i] @ W.T + b, labels[i]) / divisor`` without the ``(N, V)`` logits.

    hidden ``(N, H)``, weight ``(V, H)``, bias ``(V,)`` or None, labels ``(N,)`` long (``ignore_index``
    rows count nothing). Matmuls run in ``hidden.dtype``; log-sum-exp, softmax and the weight-gradient
    accumulation in fp32. Returns a 0-dim fp32 loss. Saved for backward: hidden, weight, bias, labels and
    the ``(M,)`` fp32 log-sum-exp of the ``M`` counted tokens; nothing of size ``V`` per token.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_size, ignore_index, softcap, divisor):
        dtype = hidden.dtype
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        rows = (labels != ignore_index).nonzero().squeeze(1)  # (M,)
        targets = labels[rows]
        lse = torch.empty(rows.numel(), dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for lo in range(0, rows.numel(), chunk_size):
            idx = rows[lo : lo + chunk_size]
            logits = _chunk_logits(hidden[idx], w, b, softcap)  # (c, V) fp32
            lse[lo : lo + idx.numel()] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, targets[lo : lo + idx.numel(), None]).squeeze(1)
            total += (lse[lo : lo + idx.numel()] - picked).sum()
            del logits
        ctx.save_for_backward(hidden, weight, bias, rows, targets, lse)
        ctx.chunk_size, ctx.softcap, ctx.divisor = chunk_size, softcap, divisor
        return total / divisor

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, rows, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, softcap = hidden.dtype, ctx.softcap
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        scale = grad_out.float() / ctx.divisor
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        for lo in range(0, rows.numel(), ctx.chunk_size):
            idx = rows[lo : lo + ctx.chunk_size]
            n = idx.numel()
            h = hidden[idx]  # (c, H)
            logits = _chunk_logits(h, w, b, softcap)  # (c, V) fp32
            grad = torch.exp(logits - lse[lo : lo + n, None])  # softmax
            grad[torch.arange(n, device=grad.device), targets[lo : lo + n]] -= 1.0
            grad *= scale
            if softcap is not None:  # d(cap * tanh(z / cap)) / dz = 1 - (capped / cap)^2
                grad *= 1.0 - (logits / softcap) ** 2
            del logits
            g = grad.to(dtype)  # the plain path's logits gradient reaches lm_head in the compute dtype
            if need_h:
                grad_h[idx] = g @ w
            if need_w:
                grad_w += (g.t() @ h).float()
            if need_b:
                grad_b += grad.sum(0)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def liger_available() -> bool:
    """True when Liger Kernel's fused linear cross-entropy can be imported (it needs CUDA + Triton)."""
    return importlib.util.find_spec("liger_kernel") is not None


def _liger_loss(hidden, weight, bias, labels, ignore_index, softcap, divisor):
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fn = LigerFusedLinearCrossEntropyLoss(ignore_index=ignore_index, reduction="sum", softcap=softcap)
    return (
        fn(weight.to(hidden.dtype), hidden, labels, None if bias is None else bias.to(hidden.dtype)) / divisor
    )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch: int | torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against ``labels``, without the logits matrix.

    hidden ``(..., H)``, labels ``(...)`` aligned with it (already shifted), weight ``(V, H)``. Mean over
    non-ignored tokens, or their sum divided by ``num_items_in_batch`` when given. ``softcap`` applies
    ``softcap * tanh(logits / softcap)`` first (Gemma 2). ``backend``: ``auto`` (Liger on CUDA when
    installed, else chunked), ``chunked``, or ``liger``. Returns a 0-dim fp32 tensor.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown loss backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not line up")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        divisor = (labels != ignore_index).sum().item()
    else:
        divisor = float(
            num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        )
    divisor = divisor if divisor else float("nan")  # all tokens ignored: nan, like F.cross_entropy's mean
    use_liger = backend == "liger" or (backend == "auto" and hidden.is_cuda and liger_available())
    if use_liger:
        if not liger_available():
            from data_tools.errors import DependencyError

            raise DependencyError(
                "the liger loss backend needs Liger Kernel: `pip install 'longlora[liger]'` (CUDA only), "
                "or use the chunked backend"
            )
        return _liger_loss(hidden, weight, bias, labels, ignore_index, softcap, divisor)
    chunk = chunk_size or chunk_size_for(weight.shape[0])
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens, got {chunk}")
    return ChunkedLinearCrossEntropy.apply(
        hidden, weight, bias, labels, chunk, ignore_index, softcap, divisor
    )


# ----------------------------------------------------------------------------- transformers models


def _causal_lm(model):
    """The ``*ForCausalLM`` inside a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _output_head(lm) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) the model's own forward would use for its logits; refuses heads it cannot read."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    head = lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(lm).__name__} has no output embedding (lm_head); it is not a causal LM")
    if isinstance(head, BaseTunerLayer):
        raise ValueError(
            "the LM head carries a LoRA adapter; the chunked loss reads a plain weight. Leave lm_head out "
            "of the LoRA target modules, or compute the loss with model(**batch).loss"
        )
    weight = head.weight  # a peft ModulesToSaveWrapper resolves this to the active (trained) copy
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or type(weight).__name__ == "Params4bit":
        raise ValueError(
            f"the LM head of {type(lm).__name__} is not a plain (V, H) weight; compute the loss with "
            "model(**batch).loss"
        )
    return weight, getattr(head, "bias", None)


def _softcap(config) -> float | None:
    for name in ("logits_scaling", "logit_scale", "output_multiplier_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise ValueError(
                f"{type(config).__name__}.{name}={getattr(config, name)} rescales the logits, which the "
                "chunked loss does not do; compute the loss with model(**batch).loss"
            )
    cap = getattr(config, "final_logit_softcapping", None)
    return float(cap) if cap else None


def causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    **inputs,
) -> torch.Tensor:
    """``model(input_ids, labels=labels, **inputs).loss`` without materialising the logits.

    model: a transformers ``*ForCausalLM`` or a peft model around one. input_ids/labels ``(B, T)``;
    labels are *not* shifted (token t is predicted from tokens < t, as in transformers) and ``-100``
    marks tokens without loss. Other ``inputs`` (``position_ids``, ``attention_mask``, ...) go to the
    decoder. Returns a 0-dim fp32 loss.
    """
    lm = _causal_lm(model)
    decoder = lm.get_decoder()
    hidden = decoder(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state  # (B, T, H)
    weight, bias = _output_head(lm)
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].to(hidden.device)  # (B, T)
    return linear_cross_entropy(
        hidden,
        weight,
        shift_labels,
        bias=bias,
        num_items_in_batch=num_items_in_batch,
        softcap=_softcap(lm.config),
        chunk_size=chunk_size,
        backend=backend,
    )


class CausalLMLoss(torch.nn.Module):
    """:func:`causal_lm_loss` as a module: ``CausalLMLoss(model)(**batch) -> loss``.

    DDP, DeepSpeed and FSDP only synchronise gradients (and gather sharded weights) when the step goes
    through the *wrapped* module's ``forward``; calling ``model.get_decoder()`` of an unwrapped model
    would bypass them. Wrap this module instead (``accelerator.prepare(CausalLMLoss(model), ...)``) and
    save ``unwrap_model(...).model``.
    """

    def __init__(self, model, *, chunk_size: int | None = None, backend: str = "auto"):
        super().__init__()
        self.model = model
        self.chunk_size, self.backend = chunk_size, backend

    def forward(self, input_ids, labels, **inputs):
        inputs.pop("use_cache", None)
        return causal_lm_loss(
            self.model, input_ids, labels, chunk_size=self.chunk_size, backend=self.backend, **inputs
        )


def _plain_loss(model, batch):
    return model(**batch, use_cache=False).loss


def _chunked_loss(model, batch):
    return causal_lm_loss(model, **batch)


def training_loss(chunked: bool = True, processes: int = 1, say=print):
    """The training step's loss function ``(model, batch) -> loss``: chunked (no tokens x vocabulary
    logits) on one process; the model's own loss with several processes (DDP/DeepSpeed/FSDP synchronise
    gradients only through the wrapped model's forward, which a call into the decoder would bypass) or
    when ``chunked`` is False."""
    if not chunked:
        return _plain_loss
    if processes > 1:
        say(
            "note: several processes: the loss goes through the model's logits (the chunked loss is single-process)"
        )
        return _plain_loss
    return _chunked_loss
