"""Tiled MLP (``--tiled-mlp``): every decoder layer's MLP runs over the sequence one slice at a time.

At long context a layer's MLP is the largest thing a checkpointed training step holds: while a layer is
recomputed and back-propagated, its MLP keeps ``(T, intermediate)`` tensors (the gate and up projections,
the activation and their product, and their gradients), several times the ``(T, hidden)`` layer input.
DeepSpeed's ``TiledMLP`` (Arctic Long Sequence Training, arXiv 2506.13996, Sec. 3.2) is a plain autograd
function that runs the MLP on ``shards`` slices of the sequence under ``no_grad`` and, in backward,
recomputes and back-propagates one slice at a time, so only one slice's intermediates exist at once. It
costs one more MLP forward per step. The MLP is position-wise (each token's output depends on that token
only), so slicing the sequence changes nothing but the memory.

This module only routes each MLP through that function, without touching any library class:
:func:`enable_tiled_mlp` replaces each decoder layer's ``mlp`` by a :class:`TiledMLP` that shares the
original module's submodules (so parameter names stay ``...mlp.gate_proj.weight``, peft's targeting,
saving and merging see the model they would see without it) and :func:`disable_tiled_mlp` puts the
originals back. ``shards=None`` (the default) picks ``ceil(T / hidden_size)`` per call, DeepSpeed's own
rule: slices of about ``hidden_size`` tokens, whose intermediates are about ``hidden x intermediate``.
"""

from __future__ import annotations

import math

import torch

from data_tools.errors import DependencyError

DEEPSPEED_HINT = "--tiled-mlp needs deepspeed: pip install deepspeed"

__all__ = ["TiledMLP", "auto_shards", "disable_tiled_mlp", "enable_tiled_mlp", "tiled_mlp_function"]


def tiled_mlp_function():
    """DeepSpeed's ``TiledMLP`` autograd function; a clear ``DependencyError`` when DeepSpeed is missing."""
    try:
        from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP as function
    except ImportError as err:
        raise DependencyError(f"{DEEPSPEED_HINT} ({type(err).__name__}: {err})") from None
    return function


def auto_shards(seq_len: int, hidden_size: int) -> int:
    """DeepSpeed's rule: ``ceil(T / hidden_size)`` slices, each about ``hidden_size`` tokens long."""
    return max(1, math.ceil(seq_len / max(1, hidden_size)))


def _run_mlp(mlp: torch.nn.Module, x: torch.Tensor, autocast: tuple) -> torch.Tensor:
    """One slice through the MLP under the autocast state of the forward pass: ``TiledMLP`` recomputes
    slices during backward, where no autocast is active, and must compute them as the forward did."""
    device_type, enabled, dtype = autocast
    with torch.autocast(device_type, dtype=dtype, enabled=enabled):
        return mlp(x)


class TiledMLP(torch.nn.Module):
    """Runs ``mlp`` on ``shards`` slices of the sequence through DeepSpeed's ``TiledMLP``.

    x ``(B, T, hidden)`` -> ``(B, T, hidden)``, equal to ``mlp(x)`` (forward and gradients). The wrapper
    owns the original module's submodule, parameter and buffer dictionaries (the same objects), so its
    state dict is the original's and a submodule replaced later (peft's LoRA layers) is replaced in both.
    The original stays reachable as ``.original`` without being registered a second time.
    """

    def __init__(self, mlp: torch.nn.Module, shards: int | None = None):
        super().__init__()
        if shards is not None and shards < 1:
            raise ValueError(f"--tiled-mlp-shards must be at least 1, got {shards}")
        self._function = tiled_mlp_function()
        self.__dict__["original"] = mlp  # unregistered: names stay mlp.gate_proj, not mlp.original.gate_proj
        self._modules = mlp._modules
        self._parameters = mlp._parameters
        self._buffers = mlp._buffers
        self._non_persistent_buffers_set = mlp._non_persistent_buffers_set
        self.shards = shards
        dropout = [n for n, m in mlp.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
        if dropout:  # TiledMLP recomputes slices without replaying the random state of the forward pass
            raise ValueError(
                f"--tiled-mlp recomputes the MLP in backward and cannot replay its dropout ({dropout[0]}); "
                "set that dropout to 0 or drop --tiled-mlp"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_len = x.shape[-2]
        shards = min(seq_len, self.shards or auto_shards(seq_len, x.shape[-1]))
        self.original.training = self.training  # the original is outside the module tree .train() walks
        if shards <= 1:  # one slice saves nothing; skip the extra recomputation
            return self.original(x)
        autocast = (
            x.device.type,
            torch.is_autocast_enabled(x.device.type),
            torch.get_autocast_dtype(x.device.type),
        )
        params = [p for p in self.original.parameters() if p.requires_grad]

        def run(mlp, x_slice):
            return _run_mlp(mlp, x_slice, autocast)

        return self._function.apply(run, self.original, x, shards, params)

    def extra_repr(self) -> str:
        return f"shards={self.shards or 'auto'}, original={type(self.original).__name__}"


def _mlp_slots(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(decoder layer, its ``mlp``) for every module that has an ``mlp`` submodule."""
    return [
        (module, module._modules["mlp"])
        for module in model.modules()
        if isinstance(module._modules.get("mlp"), torch.nn.Module)
    ]


def enable_tiled_mlp(model: torch.nn.Module, shards: int | None = None) -> int:
    """Route every decoder layer's ``mlp`` through :class:`TiledMLP`; returns how many were wrapped.

    Idempotent (a tiled MLP is not wrapped again; its shard count is updated). Works on a plain
    transformers model or a peft model around one, before or after peft adds its layers.
    """
    slots = _mlp_slots(model)
    if not slots:
        raise ValueError(
            f"{type(model).__name__} has no decoder layers with an `mlp` submodule; --tiled-mlp supports "
            "Llama/Mistral/Qwen/Gemma/Phi-3-style models (layer.mlp)"
        )
    for layer, mlp in slots:
        if isinstance(mlp, TiledMLP):
            mlp.shards = shards
        else:
            layer.mlp = TiledMLP(mlp, shards)
    return len(slots)


def disable_tiled_mlp(model: torch.nn.Module) -> int:
    """Put the original MLP modules back; returns how many were unwrapped."""
    count = 0
    for layer, mlp in _mlp_slots(model):
        if isinstance(mlp, TiledMLP):
            layer.mlp = mlp.original
            count += 1
    return count
