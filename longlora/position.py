"""Position Interpolation (PI): stretch a model's RoPE so it covers a longer context.

LongLoRA (paper Sec. 3 and 4.1, after Chen et al. 2023, "Extending Context Window ... via Positional
Interpolation") extends a model from its original context ``L`` to ``N`` by scaling RoPE linearly with the
integer factor ``ceil(N / L)``: position ``x`` is rotated like position ``x / factor`` was during
pretraining. YaRN is offered as an alternative; a model that already uses llama3 or longrope scaling is
extended within its own scheme. Dynamic NTK cannot record a fine-tuned window and is refused.

The scaling lives in ``config.rope_parameters`` (transformers 5.x), so it travels with every saved config
and every later ``from_pretrained`` uses it. Existing settings are composed, never overwritten:
``rope_theta``, ``partial_rotary_factor`` and YaRN's ``beta_*`` stay; an already scaled model keeps its
scheme and its factor grows with its window (see "Composition" below). Call this on a config *before* the
model is built: rotary tables are computed at construction.

    >>> cfg = AutoConfig.from_pretrained("some/llama-8k")
    >>> apply_position_interpolation(cfg, 32768)          # linear, factor 4
    {'rope_theta': 10000.0, 'rope_type': 'linear', 'factor': 4.0}
    >>> model = AutoModelForCausalLM.from_pretrained("some/llama-8k", config=cfg)

The window: :func:`context_window` is the one definition of how many tokens a config addresses, used
by loading, fine-tuning, merging, evaluation and the QA engine. It is ``max_position_embeddings``, read
the way transformers builds each rotary embedding:

- ``default``, ``linear``, ``llama3``, ``longrope``: ``max_position_embeddings``. Real checkpoints bake the
  scaled window into it (Llama-3.1: 131072 with llama3 factor 8 over 8192; Llama-3.2: 131072 with factor
  32; Phi-3: 131072 with longrope over 4096; Gemma 3: 131072 with linear factor 8), so ``original x
  factor`` is *not* the window (it would say 262144 for Llama-3.2).
- ``yarn``: transformers reads ``factor`` as the ratio of the window to
  ``original_max_position_embeddings``. A config that leaves ``max_position_embeddings`` at the original
  length (Qwen2.5's recipe: 32768 with yarn factor 4) addresses ``original x factor`` = 131072.
- ``dynamic``: ``max_position_embeddings`` is the pretraining length; the NTK rule rescales at run time
  past it (untrained), so the window is ``max_position_embeddings``.

:func:`bake_context_window` writes the window into ``max_position_embeddings`` (only the yarn case
changes; the rotary tables do not), and :func:`apply_position_interpolation` always leaves
``max_position_embeddings`` equal to the window it scaled to, which is the length training then uses.

Composition: extending a window ``W`` at factor ``f`` to ``N`` grows the factor to ``ceil(f x N / W)`` and
the window by the same ratio. For a plain model that is the paper's ``ceil(N / L)``; for an already
scaled one it divides positions by the same extra amount whatever the scheme (llama3 keeps its
frequency bands; longrope stretches its long factors). The original LongLoRA releases wrote
``max_position_embeddings`` 4096 beside linear factor 8 (trained at 32768): their window reads as 4096
here; set ``max_position_embeddings`` 32768 in their ``config.json`` once to use the full window.
Models that alternate sliding-window and global layers with per-layer RoPE (Gemma 3) scale only the
global layers: a sliding layer never sees a relative distance beyond its window.
"""

from __future__ import annotations

import copy
import math
from typing import Any

ROPE_TYPES = ("linear", "yarn", "dynamic", "llama3", "longrope")
"""RoPE scaling schemes ``--rope-type`` accepts. ``llama3`` and ``longrope`` only extend a model that already
uses them (``linear``, the default, extends those too); ``dynamic`` cannot be fine-tuned to a longer
window (see :func:`apply_position_interpolation`)."""

_LOCAL_LAYER_TYPES = ("sliding_attention", "chunked_attention")


def _rope_dicts(config, *, scaled_only: bool = False) -> list[dict[str, Any]]:
    """The flat RoPE parameter dict(s) of ``config``: one, or one per layer type when nested.

    ``scaled_only`` leaves out the dicts of sliding-window layer types, which PI does not touch.
    """
    params = getattr(config, "rope_parameters", None)
    if not params:
        raise ValueError(
            f"{type(config).__name__} has no RoPE parameters (config.rope_parameters is empty): Position "
            "Interpolation only applies to rotary-position models such as Llama, Mistral, Qwen2 or SmolLM2."
        )
    nested = (
        config.nested_rope_parameter_keys(params) if hasattr(config, "nested_rope_parameter_keys") else []
    )
    if not nested:
        return [params]
    keys = [k for k in nested if params[k] is not None]
    global_keys = [k for k in keys if k not in _LOCAL_LAYER_TYPES]
    return [params[k] for k in (global_keys if scaled_only and global_keys else keys)]


def _type(rope: dict[str, Any]) -> str:
    return rope.get("rope_type", rope.get("type", "default"))


def context_window(config) -> int:
    """How many tokens ``config`` addresses: the one definition (see the module docstring).

    >>> cfg = LlamaConfig(max_position_embeddings=131072, rope_parameters={"rope_type": "llama3",
    ...     "factor": 32.0, "original_max_position_embeddings": 8192, ...})
    >>> context_window(cfg)
    131072
    """
    window = int(config.max_position_embeddings)
    for rope in _rope_dicts(config, scaled_only=True):
        original = rope.get("original_max_position_embeddings")
        if _type(rope) == "yarn" and rope.get("factor") and original and window == int(original):
            window = max(window, int(round(int(original) * float(rope["factor"]))))
    return window


current_context_length = context_window  # the earlier name, same definition


def bake_context_window(config) -> int:
    """Write :func:`context_window` into ``config.max_position_embeddings`` (the rotary tables stay the
    same); return it. Afterwards ``max_position_embeddings`` is the window for every reader."""
    window = context_window(config)
    config.max_position_embeddings = window
    return window


def _factor(config, rope: dict[str, Any], window: int) -> float:
    """The scheme's current scale factor (longrope without one: window over its original length)."""
    if _type(rope) == "default":
        return 1.0
    if rope.get("factor"):
        return float(rope["factor"])
    original = rope.get("original_max_position_embeddings") or getattr(
        config, "original_max_position_embeddings", None
    )
    return window / int(original) if original else 1.0


def original_context_length(config) -> int:
    """The context length the model was pretrained with, before any RoPE scaling.

    The recorded pretraining length when there is one (``original_max_position_embeddings``), else the
    window divided by the scheme's factor (``max_position_embeddings`` for an unscaled model).
    """
    rope = _rope_dicts(config, scaled_only=True)[0]
    if rope.get("original_max_position_embeddings"):
        return int(rope["original_max_position_embeddings"])
    if _type(rope) in ("linear", "longrope") and getattr(config, "original_max_position_embeddings", None):
        return int(config.original_max_position_embeddings)
    window = context_window(config)
    if _type(rope) == "dynamic":
        return window
    return int(round(window / _factor(config, rope, window)))


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


def _check_scheme(existing: str, rope_type: str, rope: dict[str, Any]) -> None:
    if "dynamic" in (existing, rope_type):
        raise ValueError(
            "rope_type 'dynamic' (dynamic NTK) rescales RoPE at run time from the input length, measured "
            "against max_position_embeddings, so no config can record a longer trained window for it (a "
            "model fine-tuned at the new length would still say its old window). Use --rope-type linear "
            "(the paper's Position Interpolation) or yarn."
        )
    if existing == "default":
        if rope_type in ("llama3", "longrope"):
            raise ValueError(
                f"rope_type {rope_type!r} only extends a model that already uses it; use 'linear' (the "
                "paper's Position Interpolation) or 'yarn'."
            )
        return
    if existing != rope_type and not (existing in ("llama3", "longrope") and rope_type == "linear"):
        raise ValueError(
            f"the model already uses {existing!r} RoPE scaling (factor {rope.get('factor')}); extending "
            f"it with {rope_type!r} would change the positions it learned. Pass --rope-type {existing} "
            "to compose with its current scaling."
        )


def apply_position_interpolation(config, context_length: int, rope_type: str = "linear") -> dict[str, Any]:
    """Scale ``config``'s RoPE so the model covers ``context_length`` tokens; mutate and return it.

    Args:
        config: a transformers ``PreTrainedConfig`` of a RoPE model (mutated in place).
        context_length: the target context ``N``; must be at least the pretraining context ``L``.
        rope_type: ``"linear"`` (Position Interpolation, the paper's choice) or ``"yarn"`` for an unscaled
            model; ``"llama3"``/``"longrope"`` (or ``"linear"``) extend a model that already uses them.

    Returns:
        A copy of the new RoPE parameters (the first scaled layer type's when they are nested).

    With window ``W`` (:func:`context_window`) at factor ``f``, the factor becomes ``ceil(f x N / W)`` and
    ``max_position_embeddings`` grows by the same ratio, so it always holds the new window (``>= N``).
    For an unscaled model that is the paper's ``ceil(N / L)``; extending an extended model composes (a
    Llama-2 model at linear factor 2 (8k) extended to 32k gets factor 8). A config that already covers
    ``N`` only gets its window baked into ``max_position_embeddings``.

    Raises:
        ValueError: ``N < L``, an unknown ``rope_type``, ``dynamic``, or a ``rope_type`` different from
            the scheme the model already uses (switching schemes would change what the model learned).
    """
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {rope_type!r}: choose one of {', '.join(ROPE_TYPES)}")
    context_length = int(context_length)
    dicts = _rope_dicts(config, scaled_only=True)
    original = original_context_length(config)
    if context_length < original:
        raise ValueError(
            f"context length {context_length} is below the model's original context {original}: Position "
            f"Interpolation only extends a context. Pass --context-length {original} or more, or leave it out."
        )
    window = bake_context_window(config)
    if context_length <= window:
        return copy.deepcopy(dicts[0])
    for rope in dicts:
        _check_scheme(_type(rope), rope_type, rope)

    old = _factor(config, dicts[0], window)
    new = float(math.ceil(old * context_length / window))
    growth = new / old
    for rope in dicts:
        current = _factor(config, rope, window)
        if _type(rope) == "longrope":
            _grow_longrope(config, rope, window, growth)
            continue
        if _type(rope) == "default":
            rope["rope_type"] = rope_type
            if rope_type == "yarn":
                rope["original_max_position_embeddings"] = window
        rope["factor"] = current * growth
    if _type(dicts[0]) == "linear":
        config.original_max_position_embeddings = original
    config.max_position_embeddings = int(math.ceil(window * growth - 1e-9))
    if hasattr(config, "validate_rope"):
        config.validate_rope()
    return copy.deepcopy(dicts[0])


def _grow_longrope(config, rope: dict[str, Any], window: int, growth: float) -> None:
    """Divide the long-context frequencies by ``growth`` (short ones serve inputs up to the original
    length and stay), keeping the attention temperature the model was trained with."""
    original = int(rope.get("original_max_position_embeddings") or config.original_max_position_embeddings)
    if rope.get("attention_factor") is None:
        implied = float(rope.get("factor") or window / original)
        rope["attention_factor"] = (
            1.0 if implied <= 1.0 else math.sqrt(1 + math.log(implied) / math.log(original))
        )
    rope["long_factor"] = [float(x) * growth for x in rope["long_factor"]]
    if rope.get("factor"):
        rope["factor"] = float(rope["factor"]) * growth
