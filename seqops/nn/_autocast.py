"""Autocast for the drop-in RNN modules and cells.

seqops' ops have no autocast kernels, so under ``torch.autocast`` the modules do what autocast does for
cuDNN's RNNs: cast the floating inputs, states and weights to the autocast dtype and run the op with autocast
off (so that nothing inside it is cast again). float64 is left alone, as autocast leaves it.

The result's dtype is torch's. On CUDA that is the autocast dtype. On the CPU, autocast lists only oneDNN's
unpacked LSTM; torch's other CPU RNNs are composites in which the autocast GEMMs meet the carried state in
pointwise math, and where the state is float32 type promotion makes the result float32. So ``lstm_cell``,
``gru_cell``, ``nn.LSTMCell``, ``nn.GRUCell``, ``nn.GRU`` and ``nn.LSTM`` on packed input return
promote(autocast dtype, dtype of the carried state) (c for the LSTMs; the input's dtype where the state
defaults to zeros), and so does the c_n of a projected LSTM (its h is a GEMM's output); the vanilla RNNs and
the unpacked LSTM return the autocast dtype (measured on torch 2.14, bf16 and fp16). seqops returns torch's
dtypes, computing in the widest of them: where torch's result is float32, seqops' is float32 throughout
(more accurate than torch's mix, and no slower: the CPU layer ops compute fp16/bf16 in float32 anyway).
"""

import contextlib
import functools

import torch
from torch.nn.utils.rnn import PackedSequence

_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(device_type):
    """The dtype to compute in on ``device_type``, or None when autocast is off there (or has no such device,
    as for meta tensors, where torch.is_autocast_enabled raises)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def cast(value, dtype):
    """value (a tensor, PackedSequence, tuple/list of them, or None) with eligible tensors cast."""
    if value is None:
        return None
    if isinstance(value, PackedSequence):
        return value._replace(data=cast(value.data, dtype))
    if isinstance(value, (tuple, list)):
        return type(value)(cast(v, dtype) for v in value)
    return value.to(dtype) if value.dtype in _ELIGIBLE else value


def result_dtype(device_type, dtype, state_dtype):
    """torch's result dtype under autocast (dtype) for an RNN whose carried state has state_dtype on the CPU;
    state_dtype None: an RNN whose result is the autocast dtype everywhere."""
    if device_type != "cpu" or state_dtype is None or state_dtype not in _ELIGIBLE:
        return dtype
    return torch.promote_types(dtype, state_dtype)


def autocast_off(device_type, dtype):
    return torch.autocast(device_type, enabled=False) if dtype is not None else contextlib.nullcontext()


def ops_own_precision(device_type):
    """A context in which ATen ops on device_type run in their inputs' dtypes. For ops that choose their own
    precision (the attention ops' float32 products on their reference route): an autocast region of their
    caller, forward or backward, would otherwise cast those products back down."""
    return autocast_off(device_type, autocast_dtype(device_type))


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


def with_autocast(fn=None, *, carried_state=None):
    """Decorates a functional op: under autocast, its floating tensor arguments are cast to the autocast dtype
    and it runs with autocast off, so the GEMMs inside are not cast again against its own saved tensors.
    carried_state(*args, **kwargs) -> the state tensor whose dtype decides the result's (and so the compute
    dtype) on the CPU (see the module docstring); None for an op whose result is the autocast dtype."""
    if fn is None:
        return functools.partial(with_autocast, carried_state=carried_state)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = _first_tensor((*args, *kwargs.values()))
        device_type = first.device.type if first is not None else None
        dtype = autocast_dtype(device_type) if first is not None else None
        if dtype is None:
            return fn(*args, **kwargs)
        state = carried_state(*args, **kwargs) if carried_state is not None else None
        dtype = result_dtype(device_type, dtype, state.dtype if isinstance(state, torch.Tensor) else None)
        args = tuple(_cast_any(a, dtype) for a in args)
        kwargs = {k: _cast_any(v, dtype) for k, v in kwargs.items()}
        with autocast_off(device_type, dtype):
            return fn(*args, **kwargs)

    return wrapper
