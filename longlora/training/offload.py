"""Activation offloading (``--offload-activations``): keep the activations saved for backward in pinned
CPU memory instead of GPU memory.

With gradient checkpointing (on by default in ``longlora.finetune``) what a step keeps between forward
and backward is mostly each decoder layer's input, ``(B, T, hidden)`` per layer: 28 MB per layer for
SmolLM2 at 16k in bf16, 1 GB per layer for Llama-3.1-8B at 128k, 32 GB over its 32 layers. PyTorch's
non-reentrant checkpointing saves those inputs through the ordinary saved-tensor hooks, so
``torch.autograd.graph.save_on_cpu(pin_memory=True)`` around the forward pass moves each of them to
pinned host memory as it is saved and copies it back when backward needs it. The library does the work;
this module only decides when it applies.

Cost: every saved tensor crosses PCIe twice (device -> host in forward, host -> device in backward),
synchronously; about 2 x (layers x T x hidden x 2 bytes) per step, e.g. 2 x 1 GB per layer of an 8B
model at 128k, roughly 2 x 40 ms per layer at ~25 GB/s, plus pinned host RAM of the same size. Use it
when GPU memory, not time, limits the context. On a CPU there is nothing to offload to, so asking for it
there is an error rather than a silent no-op.
"""

from __future__ import annotations

import contextlib

import torch


def check_offload_device(device: torch.device | str) -> None:
    """Raise when activation offloading is asked for on a device that has no separate memory."""
    from data_tools.errors import InputError

    if torch.device(device).type != "cuda":
        raise InputError(
            f"--offload-activations moves activations from GPU memory to pinned CPU memory, but training "
            f"runs on {torch.device(device).type!r}; drop --offload-activations (on a CPU the activations are "
            "already in host memory)"
        )


def offload_activations(enabled: bool, device: torch.device | str = "cuda"):
    """Context manager for the forward pass: saved activations go to pinned CPU memory when ``enabled``.

    Wrap only the forward (the loss computation included); backward runs outside it and brings each
    tensor back as it is needed::

        with offload_activations(cfg.offload_activations, accelerator.device):
            loss = causal_lm_loss(model, **batch)
        accelerator.backward(loss)

    ``enabled=False`` is a no-op on any device; ``enabled=True`` off CUDA raises ``InputError``.
    """
    if not enabled:
        return contextlib.nullcontext()
    check_offload_device(device)
    return torch.autograd.graph.save_on_cpu(pin_memory=True)
