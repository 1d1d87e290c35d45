"""seqops.ops.rnn_layer: one layer, one direction, the whole sequence, with the time loop in C++.

The contract (shared with seqops.reference.rnn_layer and used by seqops.ops.rnn_stack):
    rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse) -> (output, h_n, c_n)
input [T, B, I] (batch_sizes None) or packed [N, I] with batch_sizes [T] (CPU int64, non-increasing).
"""

import os

import torch

from seqops import reference
from seqops.nn._autocast import with_autocast
from seqops.ops import onnx_export
from seqops.ops._autograd import (
    bias_grads,
    call_op,
    double_backward_through,
    eager_call,
    register_autograd,
    zeros_if_none,
)
from seqops.ops._autograd import workspace_outputs as _workspace
from seqops.ops.fake_devices import contiguous_like, on_one_device

_ops = torch.ops.seqops
MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


def _output_shape(input, batch_sizes, features):
    # [T, B, F] for padded input, [N, F] for packed
    return (*input.shape[:-1], features) if batch_sizes is None else (input.shape[0], features)


def _rows(input, batch_sizes):
    return input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]


def _grad_input_like(input, input_grad):
    # The backward ops skip the input-gradient GEMM when input_grad is False and return an empty tensor.
    return contiguous_like(input) if input_grad else input.new_empty(0)


@torch.library.register_fake("seqops::lstm_layer_forward")
@on_one_device("lstm_layer_forward")
def _lstm_forward_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    rows, hidden = _rows(input, batch_sizes), cx.shape[1]
    return (input.new_empty(_output_shape(input, batch_sizes, hx.shape[1])), contiguous_like(hx),
            contiguous_like(cx), input.new_empty(rows, 4 * hidden), input.new_empty(rows, hidden),
            input.new_empty(rows if w_hr is not None else 0, hidden))


@torch.library.register_fake("seqops::lstm_layer_backward")
@on_one_device("lstm_layer_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, reverse,
                        output, gates, cells, proj_in, input_grad):
    return (_grad_input_like(input, input_grad), contiguous_like(hx), contiguous_like(cx), contiguous_like(w_ih),
            contiguous_like(w_hh), w_ih.new_empty(w_ih.shape[0]),
            contiguous_like(w_hr) if w_hr is not None else w_ih.new_empty(0))


@torch.library.register_fake("seqops::gru_layer_forward")
@on_one_device("gru_layer_forward")
def _gru_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse):
    rows, hidden = _rows(input, batch_sizes), hx.shape[1]
    return (input.new_empty(_output_shape(input, batch_sizes, hidden)), contiguous_like(hx),
            input.new_empty(rows, 3 * hidden), input.new_empty(rows, hidden))


@torch.library.register_fake("seqops::gru_layer_backward")
@on_one_device("gru_layer_backward")
def _gru_backward_fake(grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, reverse, output, gates, hn,
                       input_grad):
    return (_grad_input_like(input, input_grad), contiguous_like(hx), contiguous_like(w_ih), contiguous_like(w_hh),
            w_ih.new_empty(w_ih.shape[0]), w_hh.new_empty(w_hh.shape[0]))


@torch.library.register_fake("seqops::rnn_layer_forward")
@on_one_device("rnn_layer_forward")
def _rnn_forward_fake(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, relu):
    return input.new_empty(_output_shape(input, batch_sizes, hx.shape[1])), contiguous_like(hx)


@torch.library.register_fake("seqops::rnn_layer_backward")
@on_one_device("rnn_layer_backward")
def _rnn_backward_fake(grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, reverse, relu, output,
                       input_grad):
    return (_grad_input_like(input, input_grad), contiguous_like(hx), contiguous_like(w_ih), contiguous_like(w_hh),
            w_ih.new_empty(w_ih.shape[0]))


def _through_reference(mode, reverse, inputs, grads):
    """Double backward: the gradient recomputed through the reference layer (see double_backward_through)."""

    def layer(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr):
        return reference.rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)

    return double_backward_through(layer, inputs, grads)


# ---- LSTM ----
def _lstm_setup(ctx, inputs, output):
    input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse = inputs
    out, _, _, gates, cells, proj_in = output
    _workspace(ctx, gates, cells, proj_in)
    ctx.reverse = reverse
    ctx.save_for_backward(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, gates, cells, proj_in)


def _lstm_backward(ctx, grad_out, grad_h_n, grad_c_n, *_saved_grads):
    input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, out, gates, cells, proj_in = ctx.saved_tensors
    if torch.is_grad_enabled():
        inputs = (input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr)
        return (*_through_reference("LSTM", ctx.reverse, inputs, (grad_out, grad_h_n, grad_c_n)), None)
    grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias, grad_w_hr = _ops.lstm_layer_backward(
        zeros_if_none(grad_out, out), zeros_if_none(grad_h_n, hx), zeros_if_none(grad_c_n, cx), input,
        batch_sizes, hx, cx, w_ih, w_hh, w_hr, ctx.reverse, out, gates, cells, proj_in,
        ctx.needs_input_grad[0])
    return (grad_input, None, grad_hx, grad_cx, grad_w_ih, grad_w_hh, *bias_grads(grad_bias, b_ih, b_hh),
            grad_w_hr if w_hr is not None else None, None)


def _lstm_reference(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    out, h_n, c_n = reference.rnn_layer("LSTM", input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return out, h_n, c_n, None, None, None


register_autograd("lstm_layer_forward", _lstm_backward, setup_context=_lstm_setup, differentiable=_lstm_reference)


# ---- GRU ----
def _gru_setup(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse = inputs
    out, _, gates, hn = output
    _workspace(ctx, gates, hn)
    ctx.reverse = reverse
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out, gates, hn)


def _gru_backward(ctx, grad_out, grad_h_n, *_saved_grads):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out, gates, hn = ctx.saved_tensors
    if torch.is_grad_enabled():
        inputs = (input, batch_sizes, hx, None, w_ih, w_hh, b_ih, b_hh, None)
        grads = _through_reference("GRU", ctx.reverse, inputs, (grad_out, grad_h_n))
        return (*grads[:3], *grads[4:8], None)
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = _ops.gru_layer_backward(
        zeros_if_none(grad_out, out), zeros_if_none(grad_h_n, hx), input, batch_sizes, hx, w_ih, w_hh,
        ctx.reverse, out, gates, hn, ctx.needs_input_grad[0])
    return (grad_input, None, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih if b_ih is not None else None,
            grad_b_hh if b_hh is not None else None, None)


def _gru_reference(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse):
    out, h_n, _ = reference.rnn_layer("GRU", input, batch_sizes, hx, None, w_ih, w_hh, b_ih, b_hh, None, reverse)
    return out, h_n, None, None


register_autograd("gru_layer_forward", _gru_backward, setup_context=_gru_setup, differentiable=_gru_reference)


# ---- vanilla RNN ----
def _rnn_setup(ctx, inputs, output):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, relu = inputs
    ctx.reverse, ctx.relu = reverse, relu
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, output[0])


def _rnn_backward(ctx, grad_out, grad_h_n):
    input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors
    if torch.is_grad_enabled():
        mode = "RNN_RELU" if ctx.relu else "RNN_TANH"
        inputs = (input, batch_sizes, hx, None, w_ih, w_hh, b_ih, b_hh, None)
        grads = _through_reference(mode, ctx.reverse, inputs, (grad_out, grad_h_n))
        return (*grads[:3], *grads[4:8], None, None)
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = _ops.rnn_layer_backward(
        zeros_if_none(grad_out, out), zeros_if_none(grad_h_n, hx), input, batch_sizes, hx, w_ih, w_hh,
        ctx.reverse, ctx.relu, out, ctx.needs_input_grad[0])
    return (grad_input, None, grad_hx, grad_w_ih, grad_w_hh, *bias_grads(grad_bias, b_ih, b_hh),
            None, None)


def _rnn_reference(input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse, relu):
    mode = "RNN_RELU" if relu else "RNN_TANH"
    out, h_n, _ = reference.rnn_layer(mode, input, batch_sizes, hx, None, w_ih, w_hh, b_ih, b_hh, None, reverse)
    return out, h_n


register_autograd("rnn_layer_forward", _rnn_backward, setup_context=_rnn_setup, differentiable=_rnn_reference)


# LSTM inference on the CPU: oneDNN's fused LSTM (torch's own CPU backend, through aten::lstm) runs the
# whole layer in one primitive with JIT GEMMs, and reorders its weights on every call. Against seqops'
# packed-panel kernels (2-core AMD EPYC Zen 4, fp32, 2 threads, the two routes interleaved in one process;
# ratio = oneDNN's time / seqops'): over many rows of a large batch it is 5-15% faster (B=32 T=100 H=256
# 0.85, H=512 0.91; B=16 T=100 H=128 0.85), but at a small batch or a short sequence its per-call cost
# dominates: B=1 T=1 H=256 5.1 (0.59 ms against 0.12), H=512 14.4, H=1024 11.4; B=2 T=64 H=256 2.0; B=32 T=1
# H=512 3.8; B=16 T=16 H=1024 1.8. So "auto" (the default) takes oneDNN for float32 only at a batch of at least
# 8 and at least max(64, weight elements / 1024) rows (_onednn_lstm_pays; the largest loss measured where it
# declines oneDNN: B=128 T=1 H=256, 0.83), and for bfloat16 always (seqops computes CPU bf16 in float32: oneDNN
# measured 1.5-3.5x faster at every shape tried). "onednn" takes it wherever it applies, "fused" never.
# Decided per call: for a whole stack (the modules' one oneDNN call) on its first layer's weights, for a layer
# on its own. Training runs seqops' kernels (1.03-1.17x torch.nn's there, median 1.13x over 6 runs at 79273e1).
# Set with SEQOPS_CPU_LSTM_INFERENCE=auto|onednn|fused, or assign this variable.
CPU_LSTM_INFERENCE = os.environ.get("SEQOPS_CPU_LSTM_INFERENCE", "auto")


def _onednn_dtypes():
    # What this torch and CPU give oneDNN's LSTM, read once: TorchDynamo cannot trace these queries.
    if not torch.backends.mkldnn.is_available():
        return frozenset()
    dtypes = {torch.float32}
    try:
        dtypes |= {torch.bfloat16} if torch.ops.mkldnn._is_mkldnn_bf16_supported() else set()
        dtypes |= {torch.float16} if torch.ops.mkldnn._is_mkldnn_fp16_supported() else set()
    except (AttributeError, RuntimeError):
        pass
    return frozenset(dtypes)


_ONEDNN_DTYPES = _onednn_dtypes()


def onednn_takes(input):
    """Whether torch.nn.LSTM on this (unpacked, CPU) input, as its caller passes it, runs oneDNN's fused LSTM
    (the op CPU autocast lists): ATen's use_mkldnn. fp16 needs grad mode off and a CPU with fp16 support."""
    if not torch.backends.mkldnn.enabled or input.numel() == 0 or input.dtype not in _ONEDNN_DTYPES:
        return False
    return input.dtype != torch.float16 or not torch.is_grad_enabled()


def _onednn_lstm_pays(input, batch_first, w_ih, w_hh):
    """Whether CPU_LSTM_INFERENCE sends this unpacked [T, B, I] (or batch-first) input with these first-layer
    weights to oneDNN's fused LSTM (see CPU_LSTM_INFERENCE)."""
    if CPU_LSTM_INFERENCE != "auto":
        return CPU_LSTM_INFERENCE == "onednn"
    if input.dtype != torch.float32:
        return True
    batch, steps = (input.size(0), input.size(1)) if batch_first else (input.size(1), input.size(0))
    return batch >= 8 and batch * steps >= max(64, (w_ih.numel() + w_hh.numel()) // 1024)


def _onednn_lstm_applies(input, batch_sizes, tensors, w_hr, batch_first=False):
    """Whether this LSTM inference call runs oneDNN's fused LSTM. tensors: (input, hx, cx, w_ih, w_hh, ...): the
    first layer's weights at 3 and 4 (hx, cx may be None)."""
    # Tracers first: a compiled graph holds seqops' op (the oneDNN queries are read at import), and a
    # torch.jit.trace, checked with grad off, must record the op it recorded with grad on. torch.func
    # transforms (vmap) have no batching rule for aten::lstm: seqops' op has one.
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch._C._are_functorch_transforms_active()
        and CPU_LSTM_INFERENCE != "fused"
        and input.device.type == "cpu"
        and input.dtype in (torch.float32, torch.bfloat16)
        and batch_sizes is None
        and w_hr is None
        and input.dim() == 3
        and bool(_ONEDNN_DTYPES)  # oneDNN in this torch
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))
        and _onednn_lstm_pays(input, batch_first, tensors[3], tensors[4])
    )


def _onednn_lstm(input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse):
    params = [w_ih, w_hh] + ([b_ih, b_hh] if b_ih is not None else [])
    if b_ih is None and b_hh is not None or b_ih is not None and b_hh is None:
        return None  # aten::lstm takes both biases or neither
    x = input.flip(0) if reverse else input
    out, h_n, c_n = torch._VF.lstm(x, (hx.unsqueeze(0), cx.unsqueeze(0)), params, b_ih is not None, 1, 0.0,
                                   False, False, False)
    return (out.flip(0) if reverse else out), h_n[0], c_n[0]


# fp16/bf16 on the CPU compute in fp32 and round the results once. Kept in the low-precision dtype, the
# workspaces between the GEMMs (gates and their gradients) made some gradients (bias gradients of GRU and
# LSTM, the ReLU RNN's weights) 2.2-3x the error of the same computation in pure PyTorch; torch.nn's
# oneDNN kernels keep fp32 there too. (CUDA keeps its low-precision kernels, fp32 math inside.)
_CPU_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _in_fp32(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    # The op's own check of one dtype for all, before the upcast would hide a mismatch (a float64 module that
    # autocast left as it is, on a bf16 input)
    named = {"hx": hx, "cx": cx, "w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh, "w_hr": w_hr}
    for name, t in named.items():
        if t is not None and t.dtype != input.dtype:
            op = {"LSTM": "lstm_layer", "GRU": "gru_layer"}.get(mode, "rnn_layer")
            raise RuntimeError(f"{op}: {name} has dtype {t.dtype} but input has dtype {input.dtype}; all tensors "
                               "must share one dtype")

    def up(t):
        return None if t is None else t.float()

    out, h_n, c_n = rnn_layer(mode, up(input), batch_sizes, up(hx), up(cx), up(w_ih), up(w_hh), up(b_ih), up(b_hh),
                              up(w_hr), reverse)
    return out.to(input.dtype), h_n.to(input.dtype), None if c_n is None else c_n.to(input.dtype)


@with_autocast
def rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer-direction over the whole sequence; returns (output, h_n, c_n) (c_n None except LSTM)."""
    if onnx_export.exporting():
        return onnx_export.rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return _routed_layer(call_op, mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)


def eager_rnn_layer(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """rnn_layer for a caller that has ruled out tracers, transforms, exports and autocast (plain_eager, autocast
    off): the same routes, without the guards."""
    return _routed_layer(eager_call, mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)


def _routed_layer(call, mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    if mode == "LSTM" and _onednn_lstm_applies(input, batch_sizes, (input, hx, cx, w_ih, w_hh, b_ih, b_hh), w_hr):
        result = _onednn_lstm(input, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse)
        if result is not None:
            return result
    if input.device.type == "cpu" and input.dtype in _CPU_LOW_PRECISION:
        return _in_fp32(mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return _call_layer_op(call, mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)


def _call_layer_op(call, mode, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """The layer op of ``mode`` run by ``call(op, *args)`` (call_op or eager_call); returns (output, h_n, c_n)."""
    if mode == "LSTM":
        out, h_n, c_n, *_ = call(_ops.lstm_layer_forward, input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr,
                                 reverse)
        return out, h_n, c_n
    if w_hr is not None:
        raise ValueError(f"proj_size is only supported by LSTM, not {mode}")
    if mode == "GRU":
        out, h_n, *_ = call(_ops.gru_layer_forward, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse)
        return out, h_n, None
    if mode in ("RNN_TANH", "RNN_RELU"):
        out, h_n = call(_ops.rnn_layer_forward, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, reverse,
                        mode == "RNN_RELU")
        return out, h_n, None
    raise ValueError(f"unknown RNN mode {mode!r}; expected one of {MODES}")
