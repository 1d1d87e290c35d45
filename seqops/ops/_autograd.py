"""Helpers shared by the autograd registrations of the recurrent ops."""

import torch


def call_op(op, *args):
    """op(*args); with grad mode off, below its autograd kernel: torch.library's autograd registration is a
    Python kernel that would only redispatch there (~4 us a call, which step-by-step decoding pays every step).
    The guard is the one torch.library's own no-grad redispatch uses."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def zeros_if_none(grad, like):
    """Autograd passes None for an output the loss did not use; the fused backward wants a tensor."""
    return torch.zeros_like(like) if grad is None else grad


def double_backward_through(reference, inputs, outputs_grads):
    """The backward as differentiable PyTorch ops, for create_graph=True (double backward).

    The fused backward op has no derivative of its own; under create_graph autograd runs a backward with grad
    mode on, and then the gradient is recomputed through the pure-PyTorch reference, whose graph hangs off
    the original inputs, so second derivatives are exact. Slower, and only taken when asked for.
    """
    wanted = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    outputs, grads = [], []
    for out, grad in zip(reference(*inputs), outputs_grads):
        if grad is not None:
            outputs.append(out)
            grads.append(grad)
    if not outputs or not wanted:
        return tuple(None for _ in inputs)
    found = torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True)
    by_id = {id(x): g for x, g in zip(wanted, found)}
    return tuple(by_id.get(id(x)) if isinstance(x, torch.Tensor) else None for x in inputs)


def workspace_outputs(ctx, *tensors):
    """Outputs that only carry saved state to the backward: no gradient flows into them, and unused output
    gradients stay None instead of being materialised as zero tensors (a [T*B, 4H] fill per call otherwise)."""
    ctx.mark_non_differentiable(*tensors)
    ctx.set_materialize_grads(False)
