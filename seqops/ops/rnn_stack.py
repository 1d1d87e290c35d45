"""The multi-layer / bidirectional / packed / batch_first / unbatched plumbing of torch.nn.LSTM/GRU/RNN.

One function, ``rnn_stack``, shared by the pure-PyTorch reference (``seqops.reference.rnn``) and by the
drop-in modules (which pass the fused C++ layer op). It loops over layers and directions only; the time loop
lives in ``layer``, which has the signature of the layer contract::

    layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse) -> (output, h_n, c_n)

    input  [T, B, I] (batch_sizes None) or packed [N, I] with batch_sizes [T] (CPU int64)
    hx     [B, P]  (P = proj_size if w_hr is given, else H);  cx [B, H] for LSTM, else None
    output [T, B, P] or [N, P];  h_n [B, P];  c_n [B, H] for LSTM, else None
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence

__all__ = ["rnn_stack", "run_layers", "state_sizes", "time_major_to_batch_first", "weights_from_module",
           "weights_from_flat", "MODES", "GATES"]

# Number of gates stacked along dim 0 of w_ih / w_hh, per mode.
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
MODES = tuple(GATES)


def weights_from_module(module):
    """The ``weights`` list of ``rnn_stack`` from a torch.nn.LSTM/GRU/RNN (or a drop-in with the same names).

    Returns ``num_layers * num_directions`` tuples ``(w_ih, w_hh, b_ih, b_hh, w_hr)`` indexed
    ``layer * num_directions + direction``, None where a tensor is absent. The tensors are the module's own
    parameters, so gradients reach the module.
    """
    num_directions = 2 if module.bidirectional else 1
    has_bias = bool(module.bias)
    has_proj = getattr(module, "proj_size", 0) > 0
    weights = []
    for k in range(module.num_layers):
        for direction in range(num_directions):
            sfx = f"l{k}" + ("_reverse" if direction == 1 else "")
            weights.append(
                (
                    getattr(module, f"weight_ih_{sfx}"),
                    getattr(module, f"weight_hh_{sfx}"),
                    getattr(module, f"bias_ih_{sfx}") if has_bias else None,
                    getattr(module, f"bias_hh_{sfx}") if has_bias else None,
                    getattr(module, f"weight_hr_{sfx}") if has_proj else None,
                )
            )
    return weights


def weights_from_flat(module, flat=None):
    """weights_from_module's list from ``flat``, by default ``module._flat_weights``, torch.nn.RNNBase's list of
    the same tensors, which its forward keeps current (``_update_flat_weights``): no attribute lookups per call."""
    flat = module._flat_weights if flat is None else flat
    per_direction = len(flat) // (module.num_layers * (2 if module.bidirectional else 1))
    has_bias, has_proj = bool(module.bias), module.proj_size > 0
    weights = []
    for i in range(0, len(flat), per_direction):
        w = flat[i : i + per_direction]  # w_ih, w_hh[, b_ih, b_hh][, w_hr]: torch.nn's _flat_weights_names order
        weights.append((w[0], w[1], w[2] if has_bias else None, w[3] if has_bias else None,
                        w[-1] if has_proj else None))
    return weights


def _contiguous(t):
    return None if t is None else t.contiguous()


def _stack(states):
    # A stack, also of one state: torch.nn's h_n and c_n are not views, and truncated BPTT's
    # `h.detach_()` refuses a view (unsqueeze would save ~3 us a call).
    return torch.stack(states)


def packed_batch(packed, state_batch=None):
    """A PackedSequence's batch, batch_sizes[0] (on the CPU: no sync). Under torch.compile that value is data,
    which fullgraph cannot guard on, so it is read from shapes there: sorted_indices' length, else (a sorted
    input) the initial states' own batch, whose check is then the op's, against batch_sizes, when it runs."""
    _, batch_sizes, sorted_indices, _ = packed
    if not torch.compiler.is_compiling():
        return int(batch_sizes[0])
    if sorted_indices is not None:
        return sorted_indices.numel()
    return state_batch if state_batch is not None else int(batch_sizes[0])


def _check_state(name, state, expected, input):
    if state.dtype != input.dtype:
        raise RuntimeError(
            f"Input and {name} tensors are not the same dtype: found input of dtype {input.dtype} "
            f"and {name} of dtype {state.dtype}"
        )
    if state.device != input.device:
        raise RuntimeError(
            f"Input and {name} tensors are not at the same device: found input on {input.device} "
            f"and {name} on {state.device}"
        )
    if tuple(state.shape) != expected:
        label = {"hidden": "hidden", "h_0": "hidden[0]", "c_0": "hidden[1]"}[name]
        raise RuntimeError(f"Expected {label} size {expected}, got {list(state.shape)}")


def _split_hx(mode, hx, unbatched):
    """(h0, c0) from the user's hx, with unbatched states given a batch dim of 1."""
    if mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RuntimeError(f"LSTM expects hx as a tuple (h_0, c_0), got {type(hx).__name__}")
        h0, c0 = hx
        want = 2 if unbatched else 3
        if h0.dim() != want or c0.dim() != want:
            kind = "unbatched 2-D" if unbatched else "batched 3-D"
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {want}-D but got "
                f"({h0.dim()}-D, {c0.dim()}-D) tensors"
            )
    else:
        if not isinstance(hx, torch.Tensor):
            raise RuntimeError(f"{mode} expects hx as a Tensor, got {type(hx).__name__}")
        h0, c0 = hx, None
        want = 2 if unbatched else 3
        if h0.dim() != want:
            kind = "unbatched 2-D" if unbatched else "batched 3-D"
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {h0.dim()}-D tensor")
    if unbatched:
        h0 = h0.unsqueeze(1)
        c0 = None if c0 is None else c0.unsqueeze(1)
    return h0, c0


def state_sizes(mode, weights):
    """(hidden_size, state_size) from the first layer's w_hh and w_hr; the state is P wide with a projection."""
    w_hh0, w_hr0 = weights[0][1], weights[0][4]
    hidden_size = w_hh0.shape[0] // GATES[mode]
    return hidden_size, (w_hr0.shape[0] if w_hr0 is not None else hidden_size)


def time_major_to_batch_first(mode, output):
    """[T, B, F] -> [B, T, F] as torch.nn's CPU modules return it: a view for LSTM; GRU and RNN transpose their
    result in place, not a view, so `out.detach_()` works on it as on torch.nn's."""
    return output.transpose(0, 1) if mode == "LSTM" else output.transpose_(0, 1)


def run_layers(mode, x, batch_sizes, h0, c0, weights, *, batch, state_size, num_directions, dropout, training,
               layer):
    """The layers and directions over time-major input, shared by rnn_stack and the drop-in modules' eager path.

    x: [T, B, I] (batch_sizes None) or packed [N, I]; h0 [L*D, B, P], c0 [L*D, B, H] (LSTM), already in the
    packed batch order, or both None for zeros. Returns (output [T, B, D*P] or [N, D*P], h_n [L*D, B, P],
    c_n [L*D, B, H] or None)."""
    is_lstm = mode == "LSTM"
    layer_input = x.contiguous()
    h_n, c_n = [], []
    for k in range(len(weights) // num_directions):
        outputs = []
        for direction in range(num_directions):
            idx = k * num_directions + direction
            w_ih, w_hh, b_ih, b_hh, w_hr = (_contiguous(w) for w in weights[idx])
            if h0 is None:
                h = x.new_zeros(batch, state_size)
                c = x.new_zeros(batch, w_hh.shape[0] // 4) if is_lstm else None
            else:
                h, c = h0[idx].contiguous(), (c0[idx].contiguous() if is_lstm else None)
            out, h, c = layer(mode, layer_input, batch_sizes, h, c, w_ih, w_hh, b_ih, b_hh, w_hr, direction == 1)
            outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=-1)
        # Same place and order as torch.nn (after every layer but the last), so seeded masks agree.
        if dropout > 0 and training and k < len(weights) // num_directions - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)

    output = layer_input
    if num_directions == 1 and (output.requires_grad or torch.jit.is_tracing()):  # one graph for jit.trace
        # The last layer op's own output, which its backward reads: the caller gets a copy, so an in-place op on
        # it (`out += residual`) trains as with torch.nn's CPU GRU/RNN instead of failing autograd's version check.
        output = output.clone()
    return output, _stack(h_n), (_stack(c_n) if is_lstm else None)


def rnn_stack(
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
    layer,
):
    """torch.nn.LSTM/GRU/RNN's forward over any ``layer`` implementing the layer contract.

    input: [T, B, I] ([B, T, I] with batch_first), unbatched [T, I], or a PackedSequence.
    hx: None (zeros), [L*D, B, P] ([L*D, P] unbatched), or for LSTM (h0 [L*D, B, P], c0 [L*D, B, H]).
    weights: L*D tuples (w_ih, w_hh, b_ih, b_hh, w_hr), indexed layer * D + direction.
    Returns (output, h_n) for GRU/RNN, (output, (h_n, c_n)) for LSTM, with torch.nn's shapes.
    """
    if mode not in GATES:
        raise ValueError(f"Unrecognized RNN mode: {mode!r}; expected one of {MODES}")
    num_directions = 2 if bidirectional else 1
    if len(weights) != num_layers * num_directions:
        raise ValueError(
            f"expected {num_layers * num_directions} weight tuples (num_layers * num_directions), "
            f"got {len(weights)}"
        )
    is_lstm = mode == "LSTM"
    hidden_size, state_size = state_sizes(mode, weights)

    # Normalise the input to time-major [T, B, I] or packed [N, I] + batch_sizes.
    packed = isinstance(input, PackedSequence)
    unbatched = False
    if packed:
        x, batch_sizes, sorted_indices, unsorted_indices = input
        batch = packed_batch(input)
    else:
        if input.dim() not in (2, 3):
            raise ValueError(f"{mode}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        batch_sizes = sorted_indices = unsorted_indices = None
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)
        elif batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        batch = x.shape[1]
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    # Initial states [L*D, B, P] / [L*D, B, H], permuted into the packed (longest-first) batch order; None: zeros.
    h0 = c0 = None
    if hx is not None:
        h0, c0 = _split_hx(mode, hx, unbatched)
        if packed:
            batch = packed_batch(input, h0.shape[1])
        states = num_layers * num_directions
        _check_state("h_0" if is_lstm else "hidden", h0, (states, batch, state_size), x)
        if is_lstm:
            _check_state("c_0", c0, (states, batch, hidden_size), x)
        if sorted_indices is not None:
            h0 = h0.index_select(1, sorted_indices)
            c0 = None if c0 is None else c0.index_select(1, sorted_indices)

    output, h_n, c_n = run_layers(mode, x, batch_sizes, h0, c0, weights, batch=batch, state_size=state_size,
                                  num_directions=num_directions, dropout=dropout, training=training, layer=layer)
    if unsorted_indices is not None:
        h_n = h_n.index_select(1, unsorted_indices)
        c_n = None if c_n is None else c_n.index_select(1, unsorted_indices)

    if packed:
        output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
    elif unbatched:
        output = output.squeeze(1)
        h_n = h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    elif batch_first:
        output = time_major_to_batch_first(mode, output)
    return (output, (h_n, c_n)) if is_lstm else (output, h_n)
