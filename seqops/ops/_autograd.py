"""Helpers shared by the autograd registrations of the recurrent ops."""

import torch

from seqops.nn._autocast import ops_own_precision

# op -> (setup_context, backward): the autograd each op registers with torch.library, also run by _EagerAutograd.
_AUTOGRAD = {}
# op -> its pure-PyTorch twin: the same arguments, the same outputs (None for workspace outputs), for the
# differentiation torch.library's custom-op autograd does not give (see _differentiated_outside_autograd).
_DIFFERENTIABLE = {}


def register_autograd(name, backward, setup_context, differentiable):
    """torch.library.register_autograd for the op seqops::name, remembered for call_op's eager path, with the
    op's differentiable pure-PyTorch twin."""
    torch.library.register_autograd(f"seqops::{name}", backward, setup_context=setup_context)
    op = getattr(torch.ops.seqops, name).default
    _AUTOGRAD[op] = (setup_context, backward)
    _DIFFERENTIABLE[op] = differentiable


class _EagerAutograd(torch.autograd.Function):
    """An op's registered setup_context and backward, as a plain autograd.Function for eager calls.

    torch.library's autograd kernel normalises the arguments on every call (torch._library.utils.fill_defaults
    rebuilds the schema's argument list each time): measured 25-30 us a call, more than the kernels of a small
    step (B=1, H=16: a vanilla RNN layer's training step took 134 us against torch.nn's 77). Same graph, same
    saved tensors, same backward; only the entry is leaner."""

    @staticmethod
    def forward(ctx, op, *args):
        setup_context, backward = _AUTOGRAD[op]
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*args)
        ctx.seqops_backward = backward
        setup_context(ctx, args, output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        needs_input_grad = ctx.needs_input_grad
        ctx.needs_input_grad = needs_input_grad[1:]  # as the registered backward sees it: without op
        try:
            return (None, *ctx.seqops_backward(ctx, *grads))
        finally:
            ctx.needs_input_grad = needs_input_grad


def _needs_graph(args):
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def _has_tangent(args):
    unpack = torch.autograd.forward_ad.unpack_dual
    return any(isinstance(a, torch.Tensor) and unpack(a).tangent is not None for a in args)


def _differentiated_outside_autograd(args, transforms_active):
    """Whether the call is differentiated by something the ops' registered autograd cannot serve:

    - forward-mode AD (dual tensors): the ops have no jvp formula, and a dual input that does not require grad
      would lose its tangent without a word;
    - a torch.func grad or jvp transform (grad, vjp, jacrev, jacfwd, hessian): torch.library's generated
      autograd.Function has no setup_context, which functorch requires (pytorch/pytorch#170834, #179652).
    vmap alone is served: it runs the op per sample."""
    if torch.autograd.forward_ad._current_level >= 0 and _has_tangent(args):
        return True
    if not transforms_active:
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())


def run_twin(op, *args):
    """The op's registered pure-PyTorch twin on the op's arguments, with autocast off as the op runs."""
    device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    with ops_own_precision(device):
        return _DIFFERENTIABLE[getattr(op, "default", op)](*args)


def call_op(op, *args):
    """op(*args), the way that costs least per call where it makes no difference to the result:

    - grad mode off, or no input requiring grad: below its autograd kernel, which would only redispatch there
      (~4 us a call, which step-by-step decoding pays every step; the guard is torch.library's own);
    - eager with a graph to record: _EagerAutograd, the same registered autograd without torch.library's
      per-call argument handling;
    - under torch.compile, torch.jit.trace or vmap: the op itself, so the tracer and the transforms see the
      registered custom op and its autograd (a trace of the Function would hold a Python op that
      torch.jit.save cannot export);
    - under forward-mode AD or a torch.func grad/jvp transform (any transform inside a compiled region, whose
      transform stack Dynamo cannot read): the op's pure-PyTorch twin, with autocast off as the op runs; the
      same numbers, at the reference's speed.
    """
    if torch.jit.is_tracing():
        return op(*args)
    transforms_active = torch._C._are_functorch_transforms_active()
    if torch.compiler.is_compiling():
        # Dynamo cannot read the transform stack; under a transform inside a compiled region the twin serves
        # whichever transform it is (torch.compile of torch.func.grad: the op's autograd cannot)
        return run_twin(op, *args) if transforms_active else op(*args)
    if _differentiated_outside_autograd(args, transforms_active):
        return run_twin(op, *args)
    if transforms_active:
        return op(*args)
    return eager_call(op, *args)


def plain_eager():
    """Whether this call runs in plain eager mode: no torch.compile, torch.jit.trace, torch.func transform or
    forward-mode AD level (a level may be open with no dual tensor among the arguments, which costs only a
    slower route). Where it holds, ``eager_call`` runs an op as ``call_op`` would, with none of its checks; the
    drop-in modules test it first, for their lean path (onnx export runs under a tracer or on fake tensors)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch._C._are_functorch_transforms_active()
                or torch.autograd.forward_ad._current_level >= 0)


def plain_tensor(value):
    """A torch.Tensor or nn.Parameter, not another subclass (torch.export's fake tensors, DTensor, ...)."""
    return type(value) in (torch.Tensor, torch.nn.Parameter)


def plain_tensor_call(input):
    """Whether an op or module is called in plain eager mode (plain_eager) on a plain tensor (plain_tensor) on
    the CPU or a CUDA device, with autocast off there: where the drop-ins' lean paths may serve it."""
    if not plain_eager() or not plain_tensor(input):
        return False
    if input.is_cpu:
        return not torch.is_autocast_enabled("cpu")
    return input.is_cuda and not torch.is_autocast_enabled("cuda")


def eager_call(op, *args):
    """call_op(op, *args) in plain eager mode (plain_eager): below the op's autograd kernel without a graph to
    record, else through _EagerAutograd."""
    if torch.is_grad_enabled() and _needs_graph(args):
        return _EagerAutograd.apply(getattr(op, "default", op), *args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def bias_grads(grad_bias, b_ih, b_hh):
    """(grad of b_ih, grad of b_hh) for ops whose two biases add up, so share one gradient: two tensors, not one
    twice (torch.nn returns two; a caller scaling one in place, or an in-place gradient hook, must not change
    the other)."""
    if b_ih is None or b_hh is None:
        return (grad_bias if b_ih is not None else None, grad_bias if b_hh is not None else None)
    return grad_bias, grad_bias.clone()


def zeros_if_none(grad, like):
    """Autograd passes None for an output the loss did not use; the fused backward wants a tensor."""
    return torch.zeros_like(like) if grad is None else grad


def double_backward_through(reference, inputs, outputs_grads):
    """The backward as differentiable PyTorch ops, for create_graph=True (double backward).

    The fused backward op has no derivative of its own; under create_graph autograd runs a backward with grad
    mode on, and then the gradient is recomputed through the pure-PyTorch reference, whose graph hangs off
    the original inputs, so second derivatives are exact. Slower, and only taken when asked for. With autocast
    off: a reference that upcasts (attention's) must not have its products cast back down.
    """
    device = next(x.device.type for x in inputs if isinstance(x, torch.Tensor))
    with ops_own_precision(device):
        return _double_backward(reference, inputs, outputs_grads)


def _double_backward(reference, inputs, outputs_grads):
    # Each slot reads its own view: a tensor passed in two slots (b_ih is b_hh, a state fed back as the input)
    # then gets each slot's partial gradient, which autograd sums over the slots, not the total in both.
    wants = [isinstance(x, torch.Tensor) and x.requires_grad for x in inputs]
    slots = [x.view_as(x) if want else x for x, want in zip(inputs, wants)]
    outputs, grads = [], []
    for out, grad in zip(reference(*slots), outputs_grads):
        if grad is not None:
            outputs.append(out)
            grads.append(grad)
    wanted = [x for x, want in zip(slots, wants) if want]
    if not outputs or not wanted:
        return tuple(None for _ in inputs)
    found = iter(torch.autograd.grad(outputs, wanted, grads, create_graph=True, allow_unused=True))
    return tuple(next(found) if want else None for want in wants)


def workspace_outputs(ctx, *tensors):
    """Outputs that only carry saved state to the backward: no gradient flows into them, and unused output
    gradients stay None instead of being materialised as zero tensors (a [T*B, 4H] fill per call otherwise)."""
    ctx.mark_non_differentiable(*tensors)
    ctx.set_materialize_grads(False)
