"""seqops.lstm_cell: torch.lstm_cell with one fused pointwise kernel forward and one backward."""

import torch

from seqops import reference
from seqops.nn._autocast import with_autocast
from seqops.ops import onnx_export
from seqops.ops._autograd import (
    bias_grads,
    double_backward_through,
    eager_call,
    register_autograd,
    workspace_outputs,
    zeros_if_none,
)
from seqops.ops._cell_args import batch_cell_args, call_cell_op, check_cell_args, lstm_states, with_lean_path
from seqops.ops.fake_devices import contiguous_like, on_one_device

_ops = torch.ops.seqops


@torch.library.register_fake("seqops::lstm_cell_forward")
@on_one_device("lstm_cell_forward")
def _lstm_cell_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    # input: [B, I]; hx, cx: [B, H]; w_hh: [4H, H] -> h1, c1: [B, H]; gates: [B, 4H]
    batch, hidden = input.shape[0], w_hh.shape[1]
    return input.new_empty(batch, hidden), input.new_empty(batch, hidden), input.new_empty(batch, 4 * hidden)


@torch.library.register_fake("seqops::lstm_cell_backward")
@on_one_device("lstm_cell_backward")
def _lstm_cell_backward_fake(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, c1, gates):
    return (contiguous_like(input), contiguous_like(hx), contiguous_like(cx), contiguous_like(w_ih),
            contiguous_like(w_hh), w_ih.new_empty(w_ih.shape[0]))


def _setup_context(ctx, inputs, output):
    input, hx, cx, w_ih, w_hh, b_ih, b_hh = inputs
    h1, c1, gates = output
    workspace_outputs(ctx, gates)
    ctx.save_for_backward(input, hx, cx, w_ih, w_hh, b_ih, b_hh, c1, gates)


def _reference_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    return reference.lstm_cell(input, (hx, cx), w_ih, w_hh, b_ih, b_hh)


def _backward(ctx, grad_h1, grad_c1, _grad_gates):
    input, hx, cx, w_ih, w_hh, b_ih, b_hh, c1, gates = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        return double_backward_through(_reference_cell, (input, hx, cx, w_ih, w_hh, b_ih, b_hh),
                                       (grad_h1, grad_c1))
    grads = _ops.lstm_cell_backward(zeros_if_none(grad_h1, c1), zeros_if_none(grad_c1, c1), input, hx, cx,
                                    w_ih, w_hh, c1, gates)
    grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias = grads
    return (grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, *bias_grads(grad_bias, b_ih, b_hh))


register_autograd("lstm_cell_forward", _backward, setup_context=_setup_context,
                  differentiable=lambda *args: (*_reference_cell(*args), None))


def eager_lstm_cell(input, states, w_ih, w_hh, b_ih, b_hh):
    """lstm_cell's (h1, c1) on its lean path (common_cell_call); states: (h, c)."""
    h1, c1, _ = eager_call(_ops.lstm_cell_forward, input, *states, w_ih, w_hh, b_ih, b_hh)
    return h1, c1


# c is the state torch's CPU lstm_cell carries through its pointwise math: it decides the result dtype.
@with_lean_path(eager_lstm_cell, lstm=True)
@with_autocast(carried_state=lambda input, hx, *args, **kwargs: lstm_states(hx)[1])
def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step, like ``torch.lstm_cell``: returns ``(h1, c1)``.

    input: [B, I] or unbatched [I]; hx: (h, c), each [B, H] or [H]; w_ih: [4H, I]; w_hh: [4H, H];
    biases [4H] or None. Gates in torch.nn's order (i, f, g, o).
    """
    h, c = lstm_states(hx)
    check_cell_args("lstm_cell", input, (h, c))
    (input, h, c), unbatched = batch_cell_args(input, (h, c))
    if onnx_export.exporting():
        h1, c1 = onnx_export.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
    else:
        h1, c1, _ = call_cell_op(_ops.lstm_cell_forward, w_hh.shape[-1], input, h, c, w_ih, w_hh, b_ih, b_hh)
    if unbatched:
        return h1.squeeze(0), c1.squeeze(0)
    return h1, c1
