"""What a provider is, and the forward / backward / forward+backward closures every provider shares."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


class Unavailable(Exception):
    """The provider's code is missing here (seqops not built, an op not written yet, no FlexAttention)."""


class Unsupported(Exception):
    """The provider cannot run this case: a dtype, device or shape it does not support."""


@dataclass(frozen=True)
class Provider:
    name: str
    suite: str  # "cell" | "rnn" | "attn"
    # setup(case, device) -> a zero-argument callable that runs case.mode once. Raises Unavailable or
    # Unsupported when it cannot; inputs, weights and (for "bwd") the forward graph are built here.
    setup: Callable
    devices: tuple = ("cpu", "cuda")
    compiles: bool = False  # torch.compile inside: long warm-up; left out of quick and CPU runs by default
    description: str = ""


def seqops_attr(*path):
    """seqops.<path...>, imported when a provider is set up, so a missing piece is one row, not a crash."""
    try:
        obj = importlib.import_module("seqops")
    except Exception as err:  # ImportError when unbuilt, anything else while the lead rebuilds
        raise Unavailable(f"import seqops failed: {err}") from err
    for name in path:
        try:
            obj = getattr(obj, name)
        except AttributeError as err:
            raise Unavailable(f"seqops has no {'.'.join(path)} yet") from err
    return obj


def reference_fn(*names):
    """The first of seqops.reference.<names> that exists."""
    ref = seqops_attr("reference")
    for name in names:
        if hasattr(ref, name):
            return getattr(ref, name)
    raise Unavailable(f"seqops.reference has none of {names}")


def allow_recompiles(per_function=256):
    """Dynamo compiles a function for at most recompile_limit (8) shapes and then runs it eagerly, with a
    warning only. The suite compiles one function at many shapes, so raise the limits, and make hitting
    them an error: a failed row, never an eager time under a compiled provider's name."""
    config = torch._dynamo.config
    for names, value in ((("recompile_limit", "cache_size_limit"), per_function),
                         (("accumulated_recompile_limit", "accumulated_cache_size_limit"), 8 * per_function)):
        for name in names:
            if hasattr(config, name):
                setattr(config, name, max(getattr(config, name), value))
                break
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True


def random_tensor(shape, device, dtype, requires_grad=True, scale=1.0):
    t = torch.randn(shape, device=device, dtype=torch.float32) * scale
    return t.to(dtype).requires_grad_(requires_grad)


def tensors_in(out):
    """The tensors in out (a tensor, nested tuples/lists of them, or anything else: none)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if not isinstance(out, (tuple, list)):
        return []
    return [t for item in out for t in tensors_in(item)]


def mode_fn(mode, forward, leaves):
    """The timed callable for one mode.

    forward() runs the op and returns its outputs (tensors, possibly nested in tuples); leaves are the
    tensors whose gradients the backward computes (inputs, states, weights). Forward runs with grad enabled,
    as in training; "infer" runs it under no_grad, as in serving. The backward of "bwd" replays one retained
    graph; each call clears the leaves' .grad first so the timing holds no accumulation into old gradients.
    The output gradients are the callable's .grads."""
    if mode == "fwd":
        return forward
    if mode == "infer":

        def inference():
            with torch.no_grad():
                return forward()

        return inference
    outs = [t for t in tensors_in(forward()) if t.requires_grad]
    if not outs:
        raise Unsupported("the forward output does not require grad")
    grads = [torch.randn_like(t) for t in outs]

    def clear():
        for leaf in leaves:
            leaf.grad = None

    if mode == "bwd":

        def backward():
            clear()
            torch.autograd.backward(outs, grads, retain_graph=True)

        backward.grads = grads
        return backward
    if mode == "fwdbwd":

        def forward_backward():
            clear()
            fresh = [t for t in tensors_in(forward()) if t.requires_grad]
            torch.autograd.backward(fresh, grads)

        forward_backward.grads = grads
        return forward_backward
    raise ValueError(f"unknown mode {mode!r}")


def require_device(device, *types):
    if torch.device(device).type not in types:
        raise Unsupported(f"runs on {'/'.join(types)} only")
