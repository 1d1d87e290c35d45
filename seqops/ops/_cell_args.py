"""Argument handling shared by the functional cells: unbatched input and clear shape errors."""

import functools

import torch

from seqops.ops._autograd import call_op, plain_tensor, plain_tensor_call, run_twin


def call_cell_op(op, hidden_size, *args):
    """call_op(op, *args), or with a hidden size of 0 the op's pure-PyTorch twin: torch's cells return empty
    states there, and the fused kernels take no empty gates."""
    return run_twin(op, *args) if hidden_size == 0 else call_op(op, *args)


def check_cell_args(name, input, states):
    # Error types as torch's functional cells raise them (RuntimeError from their kernels), with seqops' text.
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if input.dim() not in (1, 2):
        raise RuntimeError(f"{name}: expected input to be 1-D or 2-D, got {input.dim()}-D instead")
    for state in states:
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{name}: hidden states must be Tensors, got {type(state).__name__}")
        if state.dim() != input.dim():
            raise RuntimeError(
                f"{name}: expected hidden state to be {input.dim()}-D like the input, got {state.dim()}-D; "
                f"input {tuple(input.shape)}, hidden {tuple(state.shape)}"
            )


def batch_cell_args(input, states):
    """[I] and [H] become [1, I] and [1, H]; returns (tensors, unbatched)."""
    if input.dim() == 1:
        return (input.unsqueeze(0), *(s.unsqueeze(0) for s in states)), True
    return (input, *states), False


def lstm_states(hx):
    """(h, c) from an LSTM's hx, with torch.lstm_cell's error types: TypeError for a non-sequence, RuntimeError
    for another count."""
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"lstm_cell: hx must be a tuple of two Tensors (h, c), got {type(hx).__name__}")
    if len(hx) != 2:
        raise RuntimeError(f"lstm_cell: expected two hidden states (h, c), got {len(hx)}")
    return hx


def common_cell_call(input, states, w_hh):
    """Whether a cell's lean path serves this call (states: a tuple of the states, None for an hx of another
    kind): a plain tensor call (plain_tensor_call) on a batched [B, I] input with 2-D tensor states and
    H = w_hh.shape[1] > 0. There the full path's own handling (dimension and type checks, unbatched input,
    autocast, export, hidden size 0) changes nothing, and the op's checks, the same on both paths, serve the rest.
    It cost ~8 us a call, a third of a small RNNCell's (B=4, H=32, no grad: 27 us against torch.nn's 17-20;
    2-core Zen 4)."""
    if states is None or not plain_tensor_call(input) or input.dim() != 2:
        return False
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2 or w_hh.shape[1] == 0:
        return False
    return all(plain_tensor(state) and state.dim() == 2 for state in states)


def lean_states(hx, lstm):
    """The states of a cell call as common_cell_call takes them: (h, c) from an LSTM's pair, (h,) otherwise; None
    for an hx of another kind (or None, which the functional cells refuse)."""
    if lstm:
        return tuple(hx) if type(hx) in (tuple, list) and len(hx) == 2 else None
    return (hx,) if hx is not None else None


def with_lean_path(eager, lstm=False):
    """Decorates a functional cell fn(input, hx, w_ih, w_hh, b_ih=None, b_hh=None) (outside with_autocast): a
    common call (common_cell_call) goes straight to eager(input, states, w_ih, w_hh, b_ih, b_hh), states the
    tuple (h, c) or (h,)."""

    def decorate(fn):
        @functools.wraps(fn)
        def cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
            states = lean_states(hx, lstm)
            if common_cell_call(input, states, w_hh):
                return eager(input, states, w_ih, w_hh, b_ih, b_hh)
            return fn(input, hx, w_ih, w_hh, b_ih, b_hh)

        return cell

    return decorate
