"""Which weights train: LoRA+ (the LongLoRA recipe), plain LoRA, full fine-tuning, or QLoRA.

LongLoRA (paper Sec. 3.3, Table 2) finds plain LoRA on the attention projections too weak for long
context: making the input embedding and every normalization layer trainable as well ("LoRA+") closes
the gap to full fine-tuning (PG19 ppl at 32k: LoRA 11.44, +norm 10.49, +embed 8.29, +both 8.12, full 8.08).

==============  ======================================================================================
method          trainable parameters
==============  ======================================================================================
``lora+``       LoRA A/B on q,k,v,o (r=8, alpha=16, dropout 0) + ``embed_tokens`` + every normalization layer
``lora``        LoRA A/B on q,k,v,o only
``lora+norm``   LoRA A/B on q,k,v,o + every normalization layer (Table 2's "+ Norm")
``lora+embed``  LoRA A/B on q,k,v,o + ``embed_tokens`` (Table 2's "+ Embed"; a tied LM head follows it)
``full``        every parameter
``qlora``       ``lora+`` on top of a 4-bit NF4 base (bitsandbytes)
==============  ======================================================================================

The embedding and norm layers go through peft's ``modules_to_save``, so one adapter folder holds
everything (the original LongLoRA shipped them as a separate ``trainable_params.bin``). peft matches
``modules_to_save`` by name suffix, so the norm names are collected from the model's module *classes*
(``*Norm*``): ``input_layernorm``, ``post_attention_layernorm``, ``norm`` for Llama, plus ``q_norm`` /
``k_norm`` where a model has them. With tied input/output embeddings (SmolLM2, small Llamas) peft's
``ensure_weight_tying`` makes the LM head use the trained embedding copy, so logits stay consistent
through training, saving and merging.
"""

from __future__ import annotations

import torch

METHODS = ("lora+", "lora", "full", "qlora", "lora+norm", "lora+embed")
# the LoRA methods and the extra trainable modules each adds: Table 2's rows (+ Norm, + Embed, + both)
_EXTRAS = {
    "lora": (),
    "lora+norm": ("norm",),
    "lora+embed": ("embed",),
    "lora+": ("embed", "norm"),
    "qlora": ("embed", "norm"),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Phi-3 fuses q, k and v into one projection; LoRA on it adapts the same three (paper: LoRA on q,k,v,o).
FUSED_LORA_TARGETS = ("qkv_proj", "o_proj")
EMBEDDING_NAME = "embed_tokens"


def norm_module_names(model) -> list[str]:
    """Leaf names of the model's normalization modules (classes whose name contains 'Norm')."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if name and "norm" in type(mod).__name__.lower()
    }
    return sorted(names)


def has_tied_embeddings(model) -> bool:
    """True when the output projection shares its weight with the input embedding."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return inp is not None and out is not None and out.weight is inp.weight


def attention_lora_targets(model) -> tuple[str, ...]:
    """The attention projections LoRA adapts: q/k/v/o, or Phi-3's fused qkv and o."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for targets in (LORA_TARGETS, FUSED_LORA_TARGETS):
        if all(t in present for t in targets):
            return targets
    missing = [t for t in LORA_TARGETS if t not in present]
    raise ValueError(
        f"{type(model).__name__} has no {', '.join(missing)} projections; LoRA targets q_proj, k_proj, "
        "v_proj, o_proj as in Llama/Mistral/Qwen/Gemma-style models (or Phi-3's qkv_proj, o_proj)"
    )


def lora_config(model, method: str = "lora+", *, r: int = 8, alpha: int = 16, dropout: float = 0.0):
    """The peft ``LoraConfig`` for ``method`` (``lora+``/``qlora`` add the embedding and norms,
    ``lora+norm`` the norms, ``lora+embed`` the embedding)."""
    from peft import LoraConfig

    if method not in _EXTRAS:
        raise ValueError(f"method {method!r} uses no LoRA adapter; choose one of {', '.join(_EXTRAS)}")
    if r <= 0:
        raise ValueError(f"--lora-r must be a positive rank, got {r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"--lora-dropout must be in [0, 1), got {dropout}")
    targets = attention_lora_targets(model)
    extras = _EXTRAS[method]
    modules_to_save = [EMBEDDING_NAME] if "embed" in extras else []
    if "norm" in extras:
        modules_to_save += norm_module_names(model)
    # with tied embeddings the LM head must use the trained embedding copy (peft's ensure_weight_tying)
    tie = "embed" in extras and has_tied_embeddings(model)
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        modules_to_save=modules_to_save or None,
        ensure_weight_tying=tie,
        bias="none",
        task_type="CAUSAL_LM",
    )


from data_tools.errors import DependencyError  # noqa: E402


def require_qlora_support() -> None:
    """Raise a clear error when 4-bit loading cannot work here."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library
        raise DependencyError(
            f"--method qlora needs bitsandbytes with 4-bit support ({type(err).__name__}: {err}). Install it with "
            "`pip install 'bitsandbytes>=0.48'` (CUDA GPU, or a CPU build >= 0.48), or use --method lora+"
        ) from None


def prepare_model(
    model,
    method: str = "lora+",
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    gradient_checkpointing: bool = True,
    compute_dtype: torch.dtype | None = None,
):
    """Wrap or unfreeze ``model`` for ``method``; return the model to train (a PeftModel for LoRA methods).

    Trainable parameters are kept in float32 (the frozen base may be bf16 or 4-bit). ``compute_dtype``
    (e.g. bf16) keeps the activations in that dtype although those fp32 weights feed the residual stream
    (see :func:`keep_activations_in`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if gradient_checkpointing:
        enable_checkpointing(model)
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return keep_activations_in(model, compute_dtype)
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False):
            raise ValueError("--method qlora needs a base model loaded in 4 bits (load_in_4bit=True)")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    cfg = lora_config(model, method, r=r, alpha=alpha, dropout=dropout)
    peft_model = get_peft_model(model, cfg)
    upcast_trainable(peft_model)
    return keep_activations_in(peft_model, compute_dtype)


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant: works with frozen embeddings)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_adapter_trainable(peft_model, compute_dtype: torch.dtype | None = None):
    """Make a loaded (inference-mode) adapter trainable again: its LoRA and ``modules_to_save`` weights."""
    for cfg in peft_model.peft_config.values():
        cfg.inference_mode = False
    for name, p in peft_model.named_parameters():
        p.requires_grad_(".lora_" in name or ".modules_to_save." in name)
    upcast_trainable(peft_model)
    return keep_activations_in(peft_model, compute_dtype)


def keep_activations_in(model, dtype: torch.dtype | None):
    """Cast the outputs of the input embedding and of every normalization layer to ``dtype``.

    Trainable weights are fp32 master copies (:func:`upcast_trainable`; ``full`` loads fp32 and trains
    under autocast). The embedding and the norms write the residual stream, so with fp32 weights the
    whole stream, the RoPE tables built from it, and therefore q and k became fp32 while v (a linear
    layer under autocast) stayed bf16: twice the activation memory and no flash-attn. Casting just these
    outputs keeps every activation in ``dtype`` (the norms still compute their variance in fp32 inside)
    while gradients reach the fp32 weights through the cast. Public forward hooks, no patched classes.
    ``dtype`` None or fp32 removes the hooks. Returns ``model``.
    """
    for handle in getattr(model, "_longlora_cast_hooks", []):
        handle.remove()
    handles = []
    if dtype is not None and dtype != torch.float32:
        inp = model.get_input_embeddings()
        norms = (m for name, m in model.named_modules() if name and "norm" in type(m).__name__.lower())
        targets = [inp, *norms]
        hook = _cast_output_hook(dtype)
        handles = [m.register_forward_hook(hook) for m in targets if m is not None]
    model._longlora_cast_hooks = handles
    return model


def _cast_output_hook(dtype: torch.dtype):
    def hook(module, args, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point() and output.dtype != dtype:
            return output.to(dtype)
        return None

    return hook


def upcast_trainable(model) -> None:
    """Trainable weights in float32: AdamW updates of 2e-5 vanish in bf16."""
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Trainable parameters by name, each tensor once (tied weights count once)."""
    seen: set[int] = set()
    out: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    return out


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts, each tensor once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 4-bit packs 2 values a byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total
