"""Argument handling shared by the functional cells: unbatched input and clear shape errors."""

import torch

from seqops.ops._autograd import call_op, run_twin


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
