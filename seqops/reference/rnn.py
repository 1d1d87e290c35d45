"""Pure-PyTorch LSTM / GRU / RNN: the oracles of seqops' fused recurrent ops.

Written for obviousness, not speed: one Python step per timestep, torch.nn's gate orders and shapes.
Everything is differentiable by autograd. ``upcast=True`` computes fp16/bf16 inputs in float32 and casts
the results back to the input dtype (float32/float64 are computed as they are).
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence

from seqops.ops.rnn_stack import rnn_stack

__all__ = [
    "lstm_cell",
    "gru_cell",
    "rnn_tanh_cell",
    "rnn_relu_cell",
    "rnn_layer",
    "rnn",
    "lstm",
    "gru",
    "rnn_tanh",
    "rnn_relu",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype, upcast):
    return torch.float32 if upcast and dtype in _LOW_PRECISION else dtype


def _cast(obj, dtype):
    """obj with every floating tensor in it (nested tuples/lists, PackedSequence data) cast to dtype."""
    if obj is None:
        return None
    if isinstance(obj, PackedSequence):
        return obj._replace(data=obj.data.to(dtype))
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype) for o in obj)
    return obj


def _linear(x, w, b):
    """x @ w.T + b, with b optional."""
    y = x @ w.t()
    return y if b is None else y + b


# ----------------------------------------------------------------------------------------------------------
# One timestep of each cell. x [B, I], h [B, P] (P = H unless projecting), c [B, H].


def _lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr=None):
    # gates: [B, 4H] order (i, f, g, o)
    gates = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c1 = f * c + i * g
    h1 = o * torch.tanh(c1)
    if w_hr is not None:
        h1 = h1 @ w_hr.t()  # [B, H] -> [B, P]
    return h1, c1


def _gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    # gates: [B, 3H] order (r, z, n); the reset gate multiplies the *biased* recurrent term
    x_r, x_z, x_n = _linear(x, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = _linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def _rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity):
    # pre: [B, H]
    pre = _linear(x, w_ih, b_ih) + _linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _step(mode, x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr):
    """One timestep of any mode: (h1, c1), c1 None except for LSTM."""
    if mode == "LSTM":
        return _lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
    if mode == "GRU":
        return _gru_step(x, h, w_ih, w_hh, b_ih, b_hh), None
    if mode == "RNN_TANH":
        return _rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, "tanh"), None
    if mode == "RNN_RELU":
        return _rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, "relu"), None
    raise ValueError(f"Unrecognized RNN mode: {mode!r}")


# ----------------------------------------------------------------------------------------------------------
# Argument checks: an oracle that broadcast a state or promoted a dtype would agree with a wrong caller.


def _check_dtypes(op, input, tensors):
    for t in tensors:
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"{op}: expected every tensor in input's dtype {input.dtype}, got {t.dtype}")


def _check_states(op, batch, states, sizes):
    # states [batch, size] (or [size] for unbatched input, batch None)
    for state, size in zip(states, sizes):
        want = (size,) if batch is None else (batch, size)
        if tuple(state.shape) != want:
            raise RuntimeError(f"{op}: expected a state of shape {list(want)}, got {list(state.shape)}")


def _check_batch_sizes(op, batch_sizes, rows):
    sizes = [int(b) for b in batch_sizes]
    if batch_sizes.dim() != 1 or any(b <= 0 for b in sizes) or any(a < b for a, b in zip(sizes, sizes[1:])):
        raise RuntimeError(f"{op}: batch_sizes must be 1-D, positive and non-increasing, got {sizes}")
    if sum(sizes) != rows:
        raise RuntimeError(f"{op}: batch_sizes sum to {sum(sizes)} but the packed input has {rows} rows")
    return sizes


# ----------------------------------------------------------------------------------------------------------
# Cells with torch.lstm_cell / torch.gru_cell / torch.rnn_*_cell's signatures; 1-D (unbatched) input works.


def _run_cell(mode, input, states, weights, upcast):
    op = {"LSTM": "lstm_cell", "GRU": "gru_cell", "RNN_TANH": "rnn_tanh_cell", "RNN_RELU": "rnn_relu_cell"}[mode]
    _check_dtypes(op, input, (*states, *weights))
    hidden = weights[1].shape[1]
    _check_states(op, None if input.dim() == 1 else input.shape[0], states, (hidden,) * len(states))
    dtype = input.dtype
    compute = _compute_dtype(dtype, upcast)
    unbatched = input.dim() == 1
    x, states, weights = _cast((input, states, weights), compute)
    if unbatched:
        x = x.unsqueeze(0)
        states = tuple(s.unsqueeze(0) for s in states)
    h, c = states if mode == "LSTM" else (states[0], None)
    h1, c1 = _step(mode, x, h, c, *weights, None)
    out = (h1, c1) if mode == "LSTM" else (h1,)
    if unbatched:
        out = tuple(o.squeeze(0) for o in out)
    out = _cast(out, dtype)
    return out if mode == "LSTM" else out[0]


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, upcast=False):
    """One LSTM step, like torch.lstm_cell: input [B, I] or [I], hx = (h, c) -> (h1, c1)."""
    return _run_cell("LSTM", input, tuple(hx), (w_ih, w_hh, b_ih, b_hh), upcast)


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, upcast=False):
    """One GRU step, like torch.gru_cell: input [B, I] or [I], hx [B, H] or [H] -> h1."""
    return _run_cell("GRU", input, (hx,), (w_ih, w_hh, b_ih, b_hh), upcast)


def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, upcast=False):
    """One Elman step with tanh, like torch.rnn_tanh_cell."""
    return _run_cell("RNN_TANH", input, (hx,), (w_ih, w_hh, b_ih, b_hh), upcast)


def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, *, upcast=False):
    """One Elman step with relu, like torch.rnn_relu_cell."""
    return _run_cell("RNN_RELU", input, (hx,), (w_ih, w_hh, b_ih, b_hh), upcast)


# ----------------------------------------------------------------------------------------------------------
# One layer-direction over a whole (possibly packed) sequence: the oracle of the fused layer op.


def rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, *, upcast=False):
    """The layer contract (see seqops/ops/rnn_stack.py), one Python step per timestep.

    input [T, B, I] with batch_sizes None, or packed [N, I] with batch_sizes [T] (non-increasing).
    hx [B, P], cx [B, H] (LSTM) or None. Returns (output [T, B, P] or [N, P], h_n [B, P], c_n [B, H] or None).
    """
    _check_dtypes("rnn_layer", input, (hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr))
    sizes = None if batch_sizes is None else _check_batch_sizes("rnn_layer", batch_sizes, input.shape[0])
    batch = input.shape[1] if sizes is None else (sizes[0] if sizes else 0)
    hidden = w_hh.shape[1] if w_hr is None else w_hr.shape[1]
    _check_states("rnn_layer", batch, (hx, cx) if cx is not None else (hx,), (w_hh.shape[1], hidden))
    dtype = input.dtype
    compute = _compute_dtype(dtype, upcast)
    x, h, c, weights = _cast((input, hx, cx, (w_ih, w_hh, b_ih, b_hh, w_hr)), compute)

    if batch_sizes is None:
        steps = [x[t] for t in range(x.shape[0])]
    else:
        steps = list(x.split(sizes))  # step t holds the first sizes[t] sequences (longest first)

    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
    outputs = [None] * len(steps)
    for t in order:
        rows = steps[t].shape[0]
        # Only the first `rows` sequences are alive at step t. The rest keep their state: forwards, they
        # have ended (so it is their final state); backwards, they have not started (so it is hx).
        h_t, c_t = _step(mode, steps[t], h[:rows], None if c is None else c[:rows], *weights)
        outputs[t] = h_t
        h = torch.cat([h_t, h[rows:]])
        c = None if c is None else torch.cat([c_t, c[rows:]])

    output = torch.stack(outputs) if batch_sizes is None else torch.cat(outputs)
    return _cast((output, h, c), dtype)


# ----------------------------------------------------------------------------------------------------------
# Whole torch.nn.LSTM/GRU/RNN forwards.


def rnn(
    mode,
    input,
    hx,
    weights,
    *,
    num_layers,
    bidirectional,
    batch_first=False,
    dropout=0.0,
    training=False,
    upcast=False,
):
    """torch.nn.LSTM/GRU/RNN's forward (mode "LSTM", "GRU", "RNN_TANH", "RNN_RELU") with the reference layer.

    Arguments and results as seqops.ops.rnn_stack.rnn_stack; weights from weights_from_module(module).
    """
    data = input.data if isinstance(input, PackedSequence) else input
    dtype = data.dtype
    compute = _compute_dtype(dtype, upcast)
    result = rnn_stack(
        mode,
        _cast(input, compute),
        _cast(hx, compute),
        _cast(weights, compute),
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dropout=dropout,
        training=training,
        layer=rnn_layer,
    )
    return _cast(result, dtype)


def lstm(input, hx, weights, **kwargs):
    """torch.nn.LSTM's forward: -> (output, (h_n, c_n))."""
    return rnn("LSTM", input, hx, weights, **kwargs)


def gru(input, hx, weights, **kwargs):
    """torch.nn.GRU's forward: -> (output, h_n)."""
    return rnn("GRU", input, hx, weights, **kwargs)


def rnn_tanh(input, hx, weights, **kwargs):
    """torch.nn.RNN(nonlinearity="tanh")'s forward: -> (output, h_n)."""
    return rnn("RNN_TANH", input, hx, weights, **kwargs)


def rnn_relu(input, hx, weights, **kwargs):
    """torch.nn.RNN(nonlinearity="relu")'s forward: -> (output, h_n)."""
    return rnn("RNN_RELU", input, hx, weights, **kwargs)
