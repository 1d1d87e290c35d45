"""``seqops.convert(model)``: swap torch.nn's recurrent (and attention) modules for their seqops twins.

A twin takes over the original module's state as it is: the same ``Parameter`` objects (so optimizers,
weight tying, ``requires_grad`` flags and DDP's parameter lists keep working), buffers, hooks (the same hook
dicts, so a handle registered before the conversion still removes its hook), training mode and any attribute
set on it. Device and dtype follow from the shared parameters. This works because
every twin is built on the same torch.nn base class as the module it replaces and adds no state of its own.
"""

import copy
import importlib
import warnings

import torch
from torch import nn

from seqops.nn.cells import GRUCell, LSTMCell, RNNCell
from seqops.nn.rnn import GRU, LSTM, RNN

__all__ = ["convert"]

_RNN_TWINS = {
    nn.LSTM: LSTM,
    nn.GRU: GRU,
    nn.RNN: RNN,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
    nn.RNNCell: RNNCell,
}


def _twins():
    """torch.nn class -> seqops class. Exact classes only: a user's subclass may override forward, and a
    parametrized module (torch.nn.utils.parametrize) is an instance of a generated subclass."""
    twins = dict(_RNN_TWINS)
    try:  # written separately; swapped once it exists
        mha = importlib.import_module("seqops.nn.multihead_attention").MultiheadAttention
    except (ImportError, AttributeError):
        mha = None
    if mha is not None and issubclass(mha, nn.MultiheadAttention):
        twins[nn.MultiheadAttention] = mha
    return twins


def _twin_of(module, twin_class):
    twin = twin_class.__new__(twin_class)
    # One level of copying: the twin gets its own parameter / buffer / submodule dicts and _flat_weights list
    # (so later edits to one module do not leak into the other) holding the same objects. The hook dicts are
    # shared instead: a RemovableHandle registered before the conversion points at its dict, and its remove()
    # must still take the hook off the module that now runs.
    twin.__dict__.update(
        {k: v if "hooks" in k else copy.copy(v) if isinstance(v, (dict, list, set)) else v
         for k, v in module.__dict__.items()}
    )
    compiled = module.__dict__.get("_compiled_call_impl")
    if compiled is not None:
        # Module.compile(disable=True) (or with dynamo disabled) stores the original's own call: nothing compiled
        uncompiled = getattr(compiled, "__self__", None) is module
        twin._compiled_call_impl = None if uncompiled else _compiled_like(compiled, twin)
    return twin


def _compiled_like(compiled, twin):
    """twin's call compiled as ``compiled`` (Module.compile()'s torch.compile of the original's call) was:
    that one runs the original, not the twin. The settings (backend, mode, fullgraph, ...) live in the
    wrapper's dynamo context, which wraps the twin's call the same way; torch.compile's defaults where the
    wrapper has none (another torch)."""
    for cell in getattr(compiled, "__closure__", None) or ():
        context = cell.cell_contents
        if isinstance(context, torch._dynamo.eval_frame._TorchDynamoContext):
            return context(twin._call_impl)
    warnings.warn("seqops.convert: the converted module had been compiled with Module.compile(); its twin is "
                  "compiled with torch.compile's default settings (the original's could not be read)", stacklevel=3)
    return torch.compile(twin._call_impl)


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``nn.LSTM/GRU/RNN/LSTMCell/GRUCell/RNNCell`` (and ``nn.MultiheadAttention`` when seqops
    has it) inside ``model`` by its seqops twin, in place; returns ``model``, or the twin if ``model`` itself
    is such a module. A module used at several places becomes one twin used at the same places.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"seqops.convert expects a torch.nn.Module, got {type(model).__name__}")
    return _swap(model, _twins(), {})


def _swap(module, twins, done):
    """module's twin, or module with its children swapped; done: id(original) -> twin, one twin per module.
    A module-level function, not a closure calling itself: that closure is a reference cycle holding `done`,
    so the whole model (parameters included) would wait for Python's cyclic collector to be freed."""
    key = id(module)
    if key not in done:
        twin_class = twins.get(type(module))
        done[key] = module if twin_class is None else _twin_of(module, twin_class)
        if twin_class is None:
            for name, child in list(module._modules.items()):
                if child is not None:
                    module._modules[name] = _swap(child, twins, done)
    return done[key]
