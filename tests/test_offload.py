"""Activation offloading: the CPU-testable parts (the error off CUDA, the no-op, and the premise that
checkpointed layer inputs pass through the saved-tensor hooks that ``save_on_cpu`` installs)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from data_tools.errors import InputError
from longlora.lora import prepare_model, trainable_parameters
from longlora.loss import causal_lm_loss
from longlora.training.offload import offload_activations


def test_asking_for_offloading_off_cuda_is_a_clear_error():
    with pytest.raises(InputError, match="drop --offload-activations"):
        offload_activations(True, "cpu")


def test_disabled_is_a_no_op_anywhere():
    x = torch.randn(3, requires_grad=True)
    with offload_activations(False, "cpu"):
        y = (x * x).sum()
    y.backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_checkpointed_layer_inputs_reach_the_outer_saved_tensor_hooks():
    """With non-reentrant checkpointing the only (B, T, hidden) tensors kept for backward are each
    layer's input, and they go through an outer ``saved_tensors_hooks`` (which ``save_on_cpu`` is):
    so offloading catches exactly the checkpointed activations."""
    model = prepare_model(tiny_model("llama"), "lora+", gradient_checkpointing=True).train()
    layer_inputs = []
    layers = model.base_model.model.model.layers
    for layer in layers:
        layer.register_forward_pre_hook(lambda m, args: layer_inputs.append(args[0].data_ptr()))
    ids = torch.randint(3, 128, (1, 40))
    packed = []

    def pack(t):
        if t.dim() == 3 and t.shape[1] == 40:
            packed.append(t.data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = causal_lm_loss(model, ids, ids)
    layer_inputs = layer_inputs[: len(layers)]
    assert set(layer_inputs) <= set(packed)
    loss.backward()


def test_offloaded_gradients_equal_the_plain_ones():
    """save_on_cpu round-trips every saved tensor; on CPU (no pinning) the gradients must not change."""
    grads = []
    for offload in (False, True):
        model = prepare_model(tiny_model("llama"), "lora+", gradient_checkpointing=True).train()
        ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(0))
        ctx = torch.autograd.graph.save_on_cpu(pin_memory=False) if offload else offload_activations(False)
        with ctx:
            loss = causal_lm_loss(model, ids, ids)
        loss.backward()
        grads.append(
            {n: p.grad.clone() for n, p in trainable_parameters(model).items() if p.grad is not None}
        )
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])
