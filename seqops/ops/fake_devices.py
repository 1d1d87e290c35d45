"""The fake kernels of the C++ recurrent ops refuse tensors on different devices, as the C++ ops do. Without it,
one meta tensor among CPU ones (a meta bias, a Parameter left on meta after construction) made the Meta key win
the dispatch: the fake kernel ran and returned uninitialised CPU memory where torch raises."""

import functools
import inspect

import torch

# Packed sequences keep batch_sizes on the CPU whatever the data's device.
_ON_CPU = ("batch_sizes",)


def on_one_device(op):
    """Decorates the fake kernel of seqops::op: every tensor argument on one device, batch_sizes on the CPU."""

    def wrap(fake):
        signature = inspect.signature(fake)

        @functools.wraps(fake)
        def checked(*args, **kwargs):
            first = None
            for name, value in signature.bind(*args, **kwargs).arguments.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if name in _ON_CPU:
                    if value.device.type != "cpu":
                        raise RuntimeError(f"{op}: {name} must be a CPU tensor, got one on {value.device}")
                    continue
                if first is None:
                    first = (name, value.device)
                elif value.device != first[1]:
                    raise RuntimeError(f"{op}: {name} is on {value.device}, {first[0]} on {first[1]}; all tensors "
                                       "must be on one device")
            return fake(*args, **kwargs)

        return checked

    return wrap


def contiguous_like(t):
    """An empty tensor of t's shape, dtype and device, contiguous whatever t's strides: what the C++ ops return
    (empty_like keeps a transposed argument's strides, and a fake's strides must be the op's)."""
    return t.new_empty(t.shape)
