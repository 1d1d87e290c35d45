"""Autocast for the drop-in RNN modules and cells.

seqops' ops have no autocast kernels, so under ``torch.autocast`` the modules do what autocast does for
cuDNN's RNNs: cast the floating inputs, states and weights to the autocast dtype and run the op with autocast
off (so that nothing inside it is cast again). float64 is left alone, as autocast leaves it.
"""

import contextlib
import functools

import torch
from torch.nn.utils.rnn import PackedSequence

_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(device_type):
    """The dtype to compute in on ``device_type``, or None when autocast is off there."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def cast(value, dtype):
    """value (a tensor, PackedSequence, tuple/list of them, or None) with eligible tensors cast."""
    if value is None:
        return None
    if isinstance(value, PackedSequence):
        return value._replace(data=cast(value.data, dtype))
    if isinstance(value, (tuple, list)):
        return type(value)(cast(v, dtype) for v in value)
    return value.to(dtype) if value.dtype in _ELIGIBLE else value


def autocast_off(device_type, dtype):
    return torch.autocast(device_type, enabled=False) if dtype is not None else contextlib.nullcontext()


def _first_tensor(values):
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, PackedSequence):
            return v.data
        if isinstance(v, (tuple, list)):
            found = _first_tensor(v)
            if found is not None:
                return found
    return None


def _cast_any(value, dtype):
    if isinstance(value, (torch.Tensor, PackedSequence, tuple, list)):
        return cast(value, dtype)
    return value


def with_autocast(fn):
    """Decorates a functional op: under autocast, its floating tensor arguments are cast to the autocast dtype
    and it runs with autocast off, so the GEMMs inside are not cast again against its own saved tensors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = _first_tensor((*args, *kwargs.values()))
        dtype = autocast_dtype(first.device.type) if first is not None else None
        if dtype is None:
            return fn(*args, **kwargs)
        args = tuple(_cast_any(a, dtype) for a in args)
        kwargs = {k: _cast_any(v, dtype) for k, v in kwargs.items()}
        with autocast_off(first.device.type, dtype):
            return fn(*args, **kwargs)

    return wrapper
