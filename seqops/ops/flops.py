"""FLOP formulas of seqops' custom ops for ``torch.utils.flop_counter.FlopCounterMode``.

Without them the counter sees an opaque op and counts 0, where it counts torch.nn's GRU and SDPA. The
convention is the counter's own: the multiply-adds of the GEMMs (2 FLOPs each) that the op's math defines,
pointwise work left out. Attention uses torch's SDPA formulas (the whole L x S score matrix even when causal,
as the counter does for SDPA), packed sequences one sequence at a time, as the counter does for SDPA on nested
tensors; a recurrent layer counts its input projection and per-step recurrent GEMMs,
and its backward the input, hidden-state and weight gradients.
"""

import math

import torch
from torch.utils import flop_counter

import seqops.ops.attention  # noqa: F401  (defines the attention ops registered below)
import seqops.ops.attention_varlen  # noqa: F401

_ops = torch.ops.seqops


def _mm(m, k, n):
    return 2 * m * k * n


def _rows(input_shape):
    # [T, B, I] padded or [N, I] packed -> N, I
    return math.prod(input_shape[:-1]), input_shape[-1]


def _layer_forward_flops(input_shape, w_ih_shape, w_hh_shape, w_hr_shape=None):
    N, I = _rows(input_shape)
    G, P = w_hh_shape
    flops = _mm(N, I, G) + _mm(N, P, G)
    if w_hr_shape is not None:  # the LSTM projection h = W_hr r, r: [N, H]
        flops += _mm(N, w_hr_shape[1], w_hr_shape[0])
    return flops


def _layer_backward_flops(input_shape, w_hh_shape, input_grad, w_hr_shape=None):
    N, I = _rows(input_shape)
    G, P = w_hh_shape
    flops = _mm(N, G, I) + _mm(G, N, P) + _mm(N, G, P)  # dW_ih, dW_hh, the recurrent dh
    if input_grad:
        flops += _mm(N, G, I)
    if w_hr_shape is not None:  # dW_hr and dr = dh W_hr
        flops += 2 * _mm(N, w_hr_shape[0], w_hr_shape[1])
    return flops


def _with_query_heads(shape, heads):
    return (shape[0], heads, *shape[2:])


def _sequence_lengths(cu, rows):
    # [B + 1] cumulative lengths -> B lengths. A tensor without data (FakeTensorMode, meta) counts the rows as
    # split evenly over the sequences, an estimate.
    B = cu.shape[0] - 1
    if cu.device.type == "meta" or torch._subclasses.fake_tensor.is_fake(cu):
        return [rows // B] * B if B else []
    cu = cu.tolist()
    return [hi - lo for lo, hi in zip(cu, cu[1:])]


def _varlen_flops(q, k, v, cu_q, cu_k, count):
    # q [Nq, H, E], k [Nk, Hkv, E], v [Nk, Hkv, Ev] -> count(q, k, v shapes of one sequence) summed over sequences
    H, E, EV = q.shape[1], q.shape[2], v.shape[2]
    return sum(count((1, H, lq, E), (1, H, lk, E), (1, H, lk, EV))
               for lq, lk in zip(_sequence_lengths(cu_q, q.shape[0]), _sequence_lengths(cu_k, k.shape[0])))


def _register():
    register = flop_counter.register_flop_formula

    @register(_ops.attention_fwd)
    def _attention_fwd(q, k, v, *args, out_val=None, **kwargs):
        H = q[1]  # GQA: every query head reads its key/value head
        return flop_counter.sdpa_flop_count(q, _with_query_heads(k, H), _with_query_heads(v, H))

    @register(_ops.attention_bwd)
    def _attention_bwd(dout, dlse, q, k, v, *args, out_val=None, **kwargs):
        H = q[1]
        return flop_counter.sdpa_backward_flop_count(dout, q, _with_query_heads(k, H), _with_query_heads(v, H))

    @register(_ops.attention_varlen_fwd, get_raw=True)
    def _attention_varlen_fwd(q, k, v, cu_q, cu_k, *args, out_val=None, **kwargs):
        return _varlen_flops(q, k, v, cu_q, cu_k, flop_counter.sdpa_flop_count)

    @register(_ops.attention_varlen_bwd, get_raw=True)
    def _attention_varlen_bwd(dout, dlse, q, k, v, cu_q, cu_k, *args, out_val=None, **kwargs):
        return _varlen_flops(q, k, v, cu_q, cu_k, lambda qs, ks, vs: flop_counter.sdpa_backward_flop_count(
            (*qs[:3], vs[3]), qs, ks, vs))

    @register(_ops.lstm_layer_forward)
    def _lstm_layer_fwd(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, w_hr, *args, out_val=None, **kw):
        return _layer_forward_flops(input, w_ih, w_hh, w_hr)

    @register(_ops.lstm_layer_backward)
    def _lstm_layer_bwd(grad_output, grad_h_n, grad_c_n, input, batch_sizes, hx, cx, w_ih, w_hh, w_hr, reverse,
                        output, gates, cells, proj_in, input_grad, out_val=None, **kw):
        return _layer_backward_flops(input, w_hh, input_grad, w_hr)

    @register([_ops.gru_layer_forward, _ops.rnn_layer_forward])
    def _layer_fwd(input, batch_sizes, hx, w_ih, w_hh, *args, out_val=None, **kw):
        return _layer_forward_flops(input, w_ih, w_hh)

    @register([_ops.gru_layer_backward, _ops.rnn_layer_backward])
    def _layer_bwd(grad_output, grad_h_n, input, batch_sizes, hx, w_ih, w_hh, *args, out_val=None, **kw):
        return _layer_backward_flops(input, w_hh, args[-1])  # both schemas end with input_grad

    @register(_ops.lstm_cell_forward)
    def _lstm_cell_fwd(input, hx, cx, w_ih, w_hh, *args, out_val=None, **kw):
        return _layer_forward_flops(input, w_ih, w_hh)

    @register([_ops.gru_cell_forward, _ops.rnn_cell_forward])
    def _cell_fwd(input, hx, w_ih, w_hh, *args, out_val=None, **kw):
        return _layer_forward_flops(input, w_ih, w_hh)

    @register(_ops.lstm_cell_backward)
    def _lstm_cell_bwd(grad_h1, grad_c1, input, hx, cx, w_ih, w_hh, *args, out_val=None, **kw):
        return _layer_backward_flops(input, w_hh, True)

    @register([_ops.gru_cell_backward, _ops.rnn_cell_backward])
    def _cell_bwd(grad_h1, input, hx, w_ih, w_hh, *args, out_val=None, **kw):
        return _layer_backward_flops(input, w_hh, True)


if hasattr(flop_counter, "register_flop_formula") and hasattr(flop_counter, "sdpa_flop_count"):
    _register()
