"""Drop-in ``torch.nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` running seqops' fused cell ops.

Each subclasses its torch.nn twin (Dynamo traces the cell classes, unlike nn.LSTM & co.), inheriting the
constructor, parameters, init, state_dict and repr; only ``forward`` changes, keeping torch.nn's checks
and unbatched (1-D) input handling.
"""

import torch
from torch import Tensor, nn

# The fused cell ops are looked up on seqops at call time: seqops/__init__ imports this module first.
import seqops
from seqops.nn._shared_hooks import AdoptsSharedBackwardHooks
from seqops.ops._cell_args import common_cell_call, lean_states
from seqops.ops.gru_cell import eager_gru_cell
from seqops.ops.lstm_cell import eager_lstm_cell
from seqops.ops.rnn_cell import eager_rnn_cell

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]


def _check_dims(name, what, tensor):
    if tensor.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {tensor.dim()}D instead")


def _zeros_state(cell, input):
    # input: [B, I] -> state: [B, H]
    return torch.zeros(input.size(0), cell.hidden_size, dtype=input.dtype, device=input.device)


def _run_cell(op, cell, input, hx):
    """``op(input, hx, w_ih, w_hh, b_ih, b_hh)``; the functional ops handle autocast themselves (with_autocast)."""
    return op(input, hx, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)


class LSTMCell(AdoptsSharedBackwardHooks, nn.LSTMCell):
    """``torch.nn.LSTMCell`` computed by ``seqops.lstm_cell``; input ``[B, I]`` or ``[I]``."""

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        states = () if hx is None else lean_states(hx, lstm=True)
        if common_cell_call(input, states, self.weight_hh):
            if hx is None:
                zeros = _zeros_state(self, input)
                states = (zeros, zeros)
            return eager_lstm_cell(input, states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        _check_dims("LSTMCell", "input", input)
        if hx is not None:
            for idx, state in enumerate(hx):
                _check_dims("LSTMCell", f"hx[{idx}]", state)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = _zeros_state(self, input)
            hx = (zeros, zeros)
        elif not batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h1, c1 = _run_cell(seqops.lstm_cell, self, input, hx)
        if not batched:
            h1, c1 = h1.squeeze(0), c1.squeeze(0)
        return h1, c1


class _SingleStateCell(AdoptsSharedBackwardHooks):
    """forward for the cells whose state is one tensor (GRU, RNN): torch.nn's checks, then the fused op."""

    def _cell_op(self):
        raise NotImplementedError

    def _eager_cell(self, input, states):
        raise NotImplementedError

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if common_cell_call(input, () if hx is None else lean_states(hx, lstm=False), self.weight_hh):
            return self._eager_cell(input, (_zeros_state(self, input) if hx is None else hx,))
        name = type(self).__name__
        _check_dims(name, "input", input)
        if hx is not None:
            _check_dims(name, "hidden", hx)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = _zeros_state(self, input)
        elif not batched:
            hx = hx.unsqueeze(0)
        h1 = _run_cell(self._cell_op(), self, input, hx)
        return h1 if batched else h1.squeeze(0)


class GRUCell(_SingleStateCell, nn.GRUCell):
    """``torch.nn.GRUCell`` computed by ``seqops.gru_cell``; input ``[B, I]`` or ``[I]``."""

    def _cell_op(self):
        return seqops.gru_cell

    def _eager_cell(self, input, states):
        return eager_gru_cell(input, states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class RNNCell(_SingleStateCell, nn.RNNCell):
    """``torch.nn.RNNCell`` computed by ``seqops.rnn_tanh_cell`` / ``rnn_relu_cell``."""

    def _cell_op(self):
        if self.nonlinearity == "tanh":
            return seqops.rnn_tanh_cell
        if self.nonlinearity == "relu":
            return seqops.rnn_relu_cell
        raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")

    def _eager_cell(self, input, states):
        if self.nonlinearity not in ("tanh", "relu"):
            self._cell_op()  # raises torch.nn's error for it
        relu = self.nonlinearity == "relu"
        return eager_rnn_cell(relu, input, states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
