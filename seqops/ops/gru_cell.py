"""seqops.gru_cell: torch.gru_cell with one fused pointwise kernel forward and one backward."""

import torch

from seqops import reference
from seqops.nn._autocast import with_autocast
from seqops.ops import onnx_export
from seqops.ops._autograd import (
    double_backward_through,
    eager_call,
    register_autograd,
    workspace_outputs,
    zeros_if_none,
)
from seqops.ops._cell_args import batch_cell_args, call_cell_op, check_cell_args, with_lean_path
from seqops.ops.fake_devices import contiguous_like, on_one_device

_ops = torch.ops.seqops


@torch.library.register_fake("seqops::gru_cell_forward")
@on_one_device("gru_cell_forward")
def _gru_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh):
    # input: [B, I]; hx: [B, H]; w_hh: [3H, H] -> h1: [B, H]; gates: [B, 3H]; hn: [B, H]
    batch, hidden = input.shape[0], w_hh.shape[1]
    return input.new_empty(batch, hidden), input.new_empty(batch, 3 * hidden), input.new_empty(batch, hidden)


@torch.library.register_fake("seqops::gru_cell_backward")
@on_one_device("gru_cell_backward")
def _gru_cell_backward_fake(grad_h1, input, hx, w_ih, w_hh, gates, hn):
    return (contiguous_like(input), contiguous_like(hx), contiguous_like(w_ih), contiguous_like(w_hh),
            w_ih.new_empty(w_ih.shape[0]), w_hh.new_empty(w_hh.shape[0]))


def _setup_context(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh = inputs
    _, gates, hn = output
    workspace_outputs(ctx, gates, hn)
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, gates, hn)


def _reference_cell(input, hx, w_ih, w_hh, b_ih, b_hh):
    return (reference.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh),)


def _backward(ctx, grad_h1, _grad_gates, _grad_hn):
    input, hx, w_ih, w_hh, b_ih, b_hh, gates, hn = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        return double_backward_through(_reference_cell, (input, hx, w_ih, w_hh, b_ih, b_hh), (grad_h1,))
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = _ops.gru_cell_backward(
        zeros_if_none(grad_h1, hn), input, hx, w_ih, w_hh, gates, hn)
    return (grad_input, grad_hx, grad_w_ih, grad_w_hh,
            grad_b_ih if b_ih is not None else None, grad_b_hh if b_hh is not None else None)


register_autograd("gru_cell_forward", _backward, setup_context=_setup_context,
                  differentiable=lambda *args: (*_reference_cell(*args), None, None))


def eager_gru_cell(input, states, w_ih, w_hh, b_ih, b_hh):
    """gru_cell on its lean path (common_cell_call); states: (h,)."""
    return eager_call(_ops.gru_cell_forward, input, *states, w_ih, w_hh, b_ih, b_hh)[0]


@with_lean_path(eager_gru_cell)
@with_autocast(carried_state=lambda input, hx, *args, **kwargs: hx)
def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step, like ``torch.gru_cell``: ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``.

    input: [B, I] or [I]; hx: [B, H] or [H]; w_ih: [3H, I]; w_hh: [3H, H]; gates (r, z, n).
    """
    check_cell_args("gru_cell", input, (hx,))
    (input, hx), unbatched = batch_cell_args(input, (hx,))
    if onnx_export.exporting():
        h1 = onnx_export.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    else:
        h1, _, _ = call_cell_op(_ops.gru_cell_forward, w_hh.shape[-1], input, hx, w_ih, w_hh, b_ih, b_hh)
    return h1.squeeze(0) if unbatched else h1
