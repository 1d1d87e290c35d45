"""seqops.rnn_tanh_cell / rnn_relu_cell: torch's vanilla RNN cells, fused forward and backward."""

import functools

import torch

from seqops import reference
from seqops.nn._autocast import with_autocast
from seqops.ops import onnx_export
from seqops.ops._autograd import bias_grads, double_backward_through, eager_call, register_autograd
from seqops.ops._cell_args import batch_cell_args, call_cell_op, check_cell_args, with_lean_path
from seqops.ops.fake_devices import contiguous_like, on_one_device

_ops = torch.ops.seqops


@torch.library.register_fake("seqops::rnn_cell_forward")
@on_one_device("rnn_cell_forward")
def _rnn_cell_forward_fake(input, hx, w_ih, w_hh, b_ih, b_hh, relu):
    # input: [B, I]; hx: [B, H]; w_hh: [H, H] -> h1: [B, H]
    return input.new_empty(input.shape[0], w_hh.shape[1])


@torch.library.register_fake("seqops::rnn_cell_backward")
@on_one_device("rnn_cell_backward")
def _rnn_cell_backward_fake(grad_h1, input, hx, w_ih, w_hh, h1, relu):
    return (contiguous_like(input), contiguous_like(hx), contiguous_like(w_ih), contiguous_like(w_hh),
            w_ih.new_empty(w_ih.shape[0]))


def _setup_context(ctx, inputs, output):
    input, hx, w_ih, w_hh, b_ih, b_hh, relu = inputs
    ctx.relu = relu
    ctx.save_for_backward(input, hx, w_ih, w_hh, b_ih, b_hh, output)


def _reference_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu):
    cell = reference.rnn_relu_cell if relu else reference.rnn_tanh_cell
    return cell(input, hx, w_ih, w_hh, b_ih, b_hh)


def _backward(ctx, grad_h1):
    input, hx, w_ih, w_hh, b_ih, b_hh, h1 = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        grads = double_backward_through(lambda *args: (_reference_cell(*args, ctx.relu),),
                                        (input, hx, w_ih, w_hh, b_ih, b_hh), (grad_h1,))
        return (*grads, None)
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = _ops.rnn_cell_backward(
        grad_h1, input, hx, w_ih, w_hh, h1, ctx.relu)
    return (grad_input, grad_hx, grad_w_ih, grad_w_hh, *bias_grads(grad_bias, b_ih, b_hh), None)


register_autograd("rnn_cell_forward", _backward, setup_context=_setup_context, differentiable=_reference_cell)


def _rnn_cell(name, relu, input, hx, w_ih, w_hh, b_ih, b_hh):
    check_cell_args(name, input, (hx,))
    (input, hx), unbatched = batch_cell_args(input, (hx,))
    if onnx_export.exporting():
        h1 = onnx_export.rnn_cell(relu, input, hx, w_ih, w_hh, b_ih, b_hh)
    else:
        h1 = call_cell_op(_ops.rnn_cell_forward, w_hh.shape[-1], input, hx, w_ih, w_hh, b_ih, b_hh, relu)
    return h1.squeeze(0) if unbatched else h1


def eager_rnn_cell(relu, input, states, w_ih, w_hh, b_ih, b_hh):
    """rnn_tanh_cell / rnn_relu_cell on their lean path (common_cell_call); states: (h,)."""
    return eager_call(_ops.rnn_cell_forward, input, *states, w_ih, w_hh, b_ih, b_hh, relu)


@with_lean_path(functools.partial(eager_rnn_cell, False))
@with_autocast
def rnn_tanh_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One vanilla RNN step, like ``torch.rnn_tanh_cell``: ``tanh(W_ih x + b_ih + W_hh h + b_hh)``."""
    return _rnn_cell("rnn_tanh_cell", False, input, hx, w_ih, w_hh, b_ih, b_hh)


@with_lean_path(functools.partial(eager_rnn_cell, True))
@with_autocast
def rnn_relu_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One vanilla RNN step, like ``torch.rnn_relu_cell``: ``relu(W_ih x + b_ih + W_hh h + b_hh)``."""
    return _rnn_cell("rnn_relu_cell", True, input, hx, w_ih, w_hh, b_ih, b_hh)
