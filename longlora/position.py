"""Position Interpolation (PI): stretch a model's RoPE so it covers a longer context.

LongLoRA (paper Sec. 3 and 4.1, after Chen et al. 2023, "Extending Context Window ... via Positional
Interpolation") extends a model from its original context ``L`` to ``N`` by scaling RoPE linearly with the
integer factor ``ceil(N / L)``: position ``x`` is rotated like position ``x / factor`` was during
pretraining. YaRN and dynamic NTK scaling are offered as alternatives.

The scaling lives in ``config.rope_parameters`` (transformers 5.x), so it travels with every saved config
and every later ``from_pretrained`` uses it. Existing settings are composed, never overwritten:
``rope_theta``, ``partial_rotary_factor`` and YaRN's ``beta_*`` stay; an already scaled model keeps its
scheme and gets the factor relative to its *pretraining* context. Call this on a config *before* the
model is built: rotary tables are computed at construction.

    >>> cfg = AutoConfig.from_pretrained("some/llama-8k")
    >>> apply_position_interpolation(cfg, 32768)          # linear, factor 4
    {'rope_theta': 10000.0, 'rope_type': 'linear', 'factor': 4.0}
    >>> model = AutoModelForCausalLM.from_pretrained("some/llama-8k", config=cfg)

Conventions (matching transformers' RoPE functions):

- ``linear``: ``max_position_embeddings`` becomes ``original * factor`` and the pretraining context is
  kept as ``config.original_max_position_embeddings`` so a later extension composes correctly. A linear
  config without that record (the original LongLoRA releases: ``max_position_embeddings`` 4096 with
  factor 8) is read as "``max_position_embeddings`` is the pretraining context".
- ``yarn`` / ``llama3``: the pretraining context is ``rope_parameters["original_max_position_embeddings"]``.
- ``dynamic``: transformers uses ``max_position_embeddings`` itself as the pretraining context, so it is
  left unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any

ROPE_TYPES = ("linear", "yarn", "dynamic", "llama3")
"""RoPE scaling schemes this module writes. ``llama3`` only extends a model that already uses it."""

_SCALED_TYPES = ("linear", "yarn", "dynamic", "llama3", "longrope")


def _rope_dicts(config) -> list[dict[str, Any]]:
    """The flat RoPE parameter dict(s) of ``config``: one, or one per layer type when nested."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        raise ValueError(
            f"{type(config).__name__} has no RoPE parameters (config.rope_parameters is empty): Position "
            "Interpolation only applies to rotary-position models such as Llama, Mistral, Qwen2 or SmolLM2."
        )
    nested = (
        config.nested_rope_parameter_keys(params) if hasattr(config, "nested_rope_parameter_keys") else []
    )
    if nested:
        return [params[k] for k in nested if params[k] is not None]
    return [params]


def _pretrain_length(config, rope: dict[str, Any]) -> int:
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    if rope.get("rope_type", "default") == "linear" and getattr(
        config, "original_max_position_embeddings", None
    ):
        return int(config.original_max_position_embeddings)
    return int(config.max_position_embeddings)


def original_context_length(config) -> int:
    """The context length the model was pretrained with, before any RoPE scaling.

    For an unscaled model this is ``max_position_embeddings``; for a scaled one it is the recorded
    pretraining length (see the module docstring for each scheme).
    """
    rope = _rope_dicts(config)[0]
    return _pretrain_length(config, rope)


def current_context_length(config) -> int:
    """The context length the config covers now: pretraining length times the RoPE factor."""
    rope = _rope_dicts(config)[0]
    factor = float(rope.get("factor") or 1.0) if rope.get("rope_type", "default") in _SCALED_TYPES else 1.0
    return max(int(config.max_position_embeddings), int(round(_pretrain_length(config, rope) * factor)))


def pi_factor(target_len: int, original_len: int) -> int:
    """The Position Interpolation factor ``ceil(target_len / original_len)`` (paper Sec. 4.1).

    >>> pi_factor(32768, 4096), pi_factor(5000, 4096), pi_factor(4096, 4096)
    (8, 2, 1)
    """
    if original_len <= 0:
        raise ValueError(f"original context length must be positive, got {original_len}")
    if target_len <= 0:
        raise ValueError(f"context length must be positive, got {target_len}")
    return max(1, math.ceil(target_len / original_len))


def apply_position_interpolation(config, context_length: int, rope_type: str = "linear") -> dict[str, Any]:
    """Scale ``config``'s RoPE so the model covers ``context_length`` tokens; mutate and return it.

    Args:
        config: a transformers ``PreTrainedConfig`` of a RoPE model (mutated in place).
        context_length: the target context ``N``; must be at least the pretraining context ``L``.
        rope_type: ``"linear"`` (Position Interpolation, the paper's choice), ``"yarn"`` or ``"dynamic"``
            (NTK-aware, scales only beyond ``L`` at inference). ``"llama3"`` extends a model that
            already uses Llama-3 scaling.

    Returns:
        A copy of the new RoPE parameters (the first layer type's when they are nested).

    The factor is ``ceil(N / L)`` relative to the pretraining context, so extending an already
    extended model composes: a Llama-2 model at linear factor 2 (8k) extended to 32k gets factor 8.
    If the config already covers ``N`` nothing changes (factor 1 for ``N == L``).

    Raises:
        ValueError: ``N < L``, an unknown ``rope_type``, or a ``rope_type`` different from the scheme
            the model already uses (switching schemes would change what the model learned).
    """
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {rope_type!r}: choose one of {', '.join(ROPE_TYPES)}")
    context_length = int(context_length)
    dicts = _rope_dicts(config)
    original = _pretrain_length(config, dicts[0])
    if context_length < original:
        raise ValueError(
            f"context length {context_length} is below the model's original context {original}: Position "
            f"Interpolation only extends a context. Pass --context-length {original} or more, or leave it out."
        )
    if context_length <= current_context_length(config):
        return copy.deepcopy(dicts[0])

    factor = float(pi_factor(context_length, original))
    for rope in dicts:
        existing = rope.get("rope_type", "default")
        if existing == "default":
            if rope_type == "llama3":
                raise ValueError(
                    "rope_type 'llama3' only extends a model that already uses Llama-3 RoPE scaling; "
                    "use 'linear' (the paper's Position Interpolation), 'yarn' or 'dynamic'."
                )
            rope["rope_type"] = rope_type
        elif existing != rope_type and not (existing == "llama3" and rope_type == "linear"):
            raise ValueError(
                f"the model already uses {existing!r} RoPE scaling (factor {rope.get('factor')}); extending "
                f"it with {rope_type!r} would change the positions it learned. Pass --rope-type {existing} "
                "to compose with its current scaling."
            )
        # A Llama-3 model keeps its frequency-dependent scheme; its factor grows (how Meta extends it).
        rope["factor"] = factor
        if rope["rope_type"] in ("yarn", "llama3"):
            rope["original_max_position_embeddings"] = original
    new_type = dicts[0]["rope_type"]
    if new_type == "linear":
        config.original_max_position_embeddings = original
    if new_type != "dynamic":
        # dynamic NTK reads max_position_embeddings as the pretraining context: leave it.
        config.max_position_embeddings = int(original * factor)
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    return copy.deepcopy(dicts[0])
