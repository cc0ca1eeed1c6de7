"""Activation offloading (``longlora.training.offload.offload_activations``), tested on the CPU.

``offload_activations(True, device)`` checks only the *training* device: with ``device="cuda"`` it returns
its offloading context on any machine, and the CPU tensors of these tests then go through it as a GPU's
would (each saved tensor copied into separate host memory, pinned where CUDA is available). So the tests
call the project's function itself: the saved activations are held as separate CPU copies, backward
reads those copies, and the gradients equal the plain ones. Plus the error off CUDA, the no-op, and the
premise that checkpointed layer inputs pass through the outer saved-tensor hooks.
"""

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


def test_saved_activations_are_held_as_separate_cpu_copies():
    """What the forward saves for backward is a copy in host memory (pinned when CUDA is there), not the
    live tensor; without offloading autograd keeps the live tensor itself."""
    x = torch.randn(64, requires_grad=True)
    with offload_activations(True, "cuda"):
        y = x.exp()  # exp saves its result for backward
    saved = y.grad_fn._saved_result  # what backward will read
    assert saved.device.type == "cpu"
    assert saved.data_ptr() != y.data_ptr(), "the saved activation is the live tensor: nothing was offloaded"
    assert saved.is_pinned() == torch.cuda.is_available()
    torch.testing.assert_close(saved, y.detach(), rtol=0, atol=0)
    with offload_activations(False, "cuda"):
        plain = x.exp()
    assert plain.grad_fn._saved_result.data_ptr() == plain.data_ptr()  # the control: kept in place


def _lora_grads(offload: bool, overwrite_layer_inputs: bool = False) -> dict[str, torch.Tensor]:
    """LoRA+ gradients of one checkpointed step of the tiny Llama, the forward inside
    ``offload_activations(offload, "cuda")``. ``overwrite_layer_inputs`` zeroes every decoder layer's
    input in place after the forward (behind autograd's back, through ``.data``): a backward that reads
    the live tensors then recomputes from zeros, one that reads offloaded copies does not notice."""
    model = prepare_model(tiny_model("llama"), "lora+", gradient_checkpointing=True).train()
    layers = model.base_model.model.model.layers
    inputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for layer in layers]
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    with offload_activations(offload, "cuda"):
        loss = causal_lm_loss(model, ids, ids)
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(layers)
    if overwrite_layer_inputs:
        for hidden in inputs:
            hidden.data.zero_()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainable_parameters(model).items() if p.grad is not None}
    assert grads, "no trainable parameter received a gradient"
    return grads


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=lambda m, name=name: f"{name}: {m}")


def test_offloaded_gradients_equal_the_plain_ones():
    """Offloading round-trips every saved tensor through host memory; the gradients must not change."""
    plain = _lora_grads(offload=False)
    _assert_same(_lora_grads(offload=True), plain)


def test_backward_reads_the_offloaded_copies_of_the_layer_inputs():
    """Overwriting the live layer inputs after the forward changes the plain gradients (backward
    recomputes each layer from its live input) but not the offloaded ones (it recomputes from the copies
    taken during the forward): the checkpointed activations really were held elsewhere."""
    plain = _lora_grads(offload=False)
    changed = _lora_grads(offload=False, overwrite_layer_inputs=True)
    assert any(not torch.allclose(changed[n], plain[n]) for n in plain), "the overwrite must matter"
    _assert_same(_lora_grads(offload=True, overwrite_layer_inputs=True), plain)
