"""Attention over packed sequences of different lengths, and SDPA's jagged nested tensors on it.

``seqops.attention_varlen(q [Nq, H, E], k [Nk, Hkv, E], v [Nk, Hkv, Ev], cu_seqlens_q, cu_seqlens_k)`` -> [Nq, H, Ev]:
sequence b's query rows cu_seqlens_q[b]..cu_seqlens_q[b+1] attend to its keys cu_seqlens_k[b]..cu_seqlens_k[b+1]
(flash-attn's varlen layout, SDPA's conventions: upper-left causal per sequence, a sequence without keys gives
zeros). No padding is stored or computed: the kernels find each sequence's rows from the cumulative lengths.

``seqops.attention`` on jagged nested tensors ([B, H, j, E], torch.jagged layout, as SDPA takes them) runs the
same ops on the nested tensors' packed values (jagged_attention below).

The ops copy the cumulative lengths to the host once per call (one sync on CUDA) to check them, so a malformed
one is an error instead of an out-of-bounds access, and to size the launch grid by the longest sequence.
"""

import math

import torch
from torch import Tensor

from seqops.nn._autocast import ops_own_precision
from seqops.ops import attention_varlen_cpu
from seqops.ops._autograd import call_op, double_backward_through, register_autograd
from seqops.ops.attention import _autocast, _draw_seed, _lse_dtype, _runs_kernels, _scale_value
from seqops.ops.attention_op_checks import check_flag_types
from seqops.ops.attention_varlen_checks import check_varlen_backward_args, check_varlen_forward_args, sequence_bounds
from seqops.ops.errors import InvalidArgumentError

__all__ = ["attention_varlen", "attention_varlen_with_lse", "jagged_attention"]

_ops = torch.ops.seqops
# The ops read the cumulative lengths on the host (a sync), which a CUDA graph cannot capture: the tag keeps
# torch.compile's CUDA graphs (mode="reduce-overhead") from trying.
_HOST_SYNC = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


# ----------------------------------------------------------------------------------------------------------
# The custom ops.


@torch.library.custom_op("seqops::attention_varlen_fwd", mutates_args=(), tags=_HOST_SYNC)
def attention_varlen_fwd(
    q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, seed: Tensor | None,
    scale: float, is_causal: bool, dropout_p: float,
) -> tuple[Tensor, Tensor]:
    # q: [Nq, H, E], k: [Nk, Hkv, E], v: [Nk, Hkv, Ev], cu_q, cu_k: [B + 1] int32/int64 cumulative lengths,
    # seed: [1] int64 -> out: [Nq, H, Ev] contiguous in q.dtype, lse: [H, Nq] fp32 (fp64 for fp64; -inf where
    # a sequence has no keys)
    check_varlen_forward_args("attention_varlen_fwd", q, k, v, cu_q, cu_k, seed, dropout_p)
    bounds, max_q, max_k = sequence_bounds("attention_varlen_fwd", cu_q, cu_k, q.shape[0], k.shape[0])
    with ops_own_precision(q.device.type):
        if _runs_kernels(q, v):
            from seqops.kernels.attention_fwd import attention_varlen_forward

            return attention_varlen_forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, is_causal, dropout_p, seed)
        out, lse = attention_varlen_cpu.forward(q, k, v, bounds, seed, scale, is_causal, dropout_p)
        return out.contiguous(), lse.contiguous()


@attention_varlen_fwd.register_fake
def _attention_varlen_fwd_fake(q, k, v, cu_q, cu_k, seed, scale, is_causal, dropout_p):
    check_varlen_forward_args("attention_varlen_fwd", q, k, v, cu_q, cu_k, seed, dropout_p)
    Nq, H, _ = q.shape
    return q.new_empty((Nq, H, v.shape[2])), q.new_empty((H, Nq), dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("seqops::attention_varlen_bwd", mutates_args=(), tags=_HOST_SYNC)
def attention_varlen_bwd(
    dout: Tensor, dlse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor,
    seed: Tensor | None, out: Tensor, lse: Tensor, scale: float, is_causal: bool, dropout_p: float,
) -> tuple[Tensor, Tensor, Tensor]:
    # dout, out: [Nq, H, Ev], dlse, lse: [H, Nq]; the rest as attention_varlen_fwd -> dq, dk, dv contiguous
    check_varlen_backward_args("attention_varlen_bwd", dout, dlse, q, k, v, cu_q, cu_k, seed, out, lse, dropout_p)
    bounds, max_q, max_k = sequence_bounds("attention_varlen_bwd", cu_q, cu_k, q.shape[0], k.shape[0])
    with ops_own_precision(q.device.type):
        if _runs_kernels(q, v):
            from seqops.kernels.attention_bwd import attention_varlen_backward

            return attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, is_causal,
                                             dropout_p, seed, dlse=dlse)
        return attention_varlen_cpu.backward(dout, dlse, q, k, v, bounds, seed, out, lse, scale, is_causal,
                                             dropout_p)


@attention_varlen_bwd.register_fake
def _attention_varlen_bwd_fake(dout, dlse, q, k, v, cu_q, cu_k, seed, out, lse, scale, is_causal, dropout_p):
    check_varlen_backward_args("attention_varlen_bwd", dout, dlse, q, k, v, cu_q, cu_k, seed, out, lse, dropout_p)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the op's


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, seed, scale, is_causal, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, cu_q, cu_k, seed, out, lse)
    ctx.set_materialize_grads(False)  # an unused lse keeps a None gradient: the backward skips its term
    ctx.scale, ctx.is_causal, ctx.dropout_p = scale, is_causal, dropout_p


def _differentiable_forward(q, k, v, cu_q, cu_k, seed, scale, is_causal, dropout_p):
    bounds, _, _ = sequence_bounds("attention_varlen", cu_q, cu_k, q.shape[0], k.shape[0])
    return attention_varlen_cpu.forward(q, k, v, bounds, seed, scale, is_causal, dropout_p, differentiable=True)


def _backward(ctx, dout, dlse):
    q, k, v, cu_q, cu_k, seed, out, lse = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiate the reference instead
        args = (q, k, v, cu_q, cu_k, seed, ctx.scale, ctx.is_causal, ctx.dropout_p)
        return double_backward_through(_differentiable_forward, args, (dout, dlse))
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = _ops.attention_varlen_bwd(dout, dlse, q, k, v, cu_q, cu_k, seed, out, lse, ctx.scale,
                                           ctx.is_causal, ctx.dropout_p)
    return dq, dk, dv, None, None, None, None, None, None


register_autograd("attention_varlen_fwd", _backward, setup_context=_setup_context,
                  differentiable=_differentiable_forward)


# ----------------------------------------------------------------------------------------------------------
# Public functions.


def attention_varlen_with_lse(query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p=0.0, is_causal=False, *,
                              scale=None, enable_gqa=False):
    """Like :func:`attention_varlen`, returning ``(out, lse)``: ``lse[h, i]`` is the natural log-sum-exp of
    packed query row i's scaled scores in head h (``-inf`` where its sequence has no visible key), float32
    (float64 for float64 inputs). Both outputs are differentiable."""
    check_flag_types("attention_varlen", dropout_p, is_causal, enable_gqa)
    query, key, value, _ = _autocast(query, key, value, None)
    scale = _scale_value(scale)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise InvalidArgumentError(f"attention_varlen: {name} must be a 3-D tensor [rows, heads, head_dim], "
                                       f"got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not 0.0 <= dropout_p <= 1.0:
        raise InvalidArgumentError(f"attention_varlen: dropout_p must be in [0, 1], got {dropout_p}")
    hq, hk = query.shape[1], key.shape[1]
    if hk != hq and not enable_gqa:
        raise InvalidArgumentError(f"attention_varlen: query has {hq} heads, key {hk}; pass enable_gqa=True for "
                                   "grouped-query attention")
    cu_q, cu_k = (torch.as_tensor(c).to(query.device) for c in (cu_seqlens_q, cu_seqlens_k))
    if scale is None:
        # 1 / sqrt in double precision: under torch.jit.trace the size is a tensor, whose ** -0.5 is float32
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    seed = _draw_seed(query.device) if dropout_p > 0 else None
    return call_op(_ops.attention_varlen_fwd, query, key, value, cu_q, cu_k, seed, scale, bool(is_causal),
                   float(dropout_p))


def attention_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p=0.0, is_causal=False, *, scale=None,
                     enable_gqa=False):
    """Attention over packed sequences: flash-attn's varlen layout with ``F.scaled_dot_product_attention``'s
    semantics.

    query: [Nq, H, E], key: [Nk, Hkv, E], value: [Nk, Hkv, Ev], the rows of B sequences one after another;
    cu_seqlens_q, cu_seqlens_k: [B + 1] cumulative lengths (int32 or int64, starting at 0 and ending at Nq, Nk).
    Sequence b's query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` attend to its keys
    ``cu_seqlens_k[b]:cu_seqlens_k[b+1]``. ``is_causal``: per sequence, upper-left aligned (query i sees keys
    j <= i, as SDPA). ``enable_gqa``: Hkv may divide H. ``scale`` defaults to 1/sqrt(E); dropout uses torch's
    RNG of the device. Returns [Nq, H, Ev]; a sequence without keys gives zeros.
    """
    return attention_varlen_with_lse(query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p, is_causal,
                                     scale=scale, enable_gqa=enable_gqa)[0]


def _is_jagged(t):
    return isinstance(t, torch.Tensor) and t.is_nested and t.layout == torch.jagged


def jagged_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """seqops.attention on nested tensors, as SDPA takes them: jagged layout, [B, H, j, E] (ragged along dim 2,
    typically a [B, j, H, E] nested tensor transposed), or ragged along dim 1 of a 4-D or larger tensor (the
    ragged dim is then a second batch dim and the packed values run dense attention). No attn_mask (SDPA takes
    none with nested tensors). Unlike SDPA's CPU path, is_causal works (per sequence, upper-left aligned).
    Returns a nested tensor with the query's ragged structure."""
    from seqops.ops.attention import attention

    check_flag_types("attention", dropout_p, is_causal, enable_gqa)
    if not all(_is_jagged(t) for t in (query, key, value)):
        raise InvalidArgumentError("attention: query, key and value must all be nested tensors of the jagged layout "
                                   "(torch.nested.nested_tensor(..., layout=torch.jagged)) or all dense; strided "
                                   "nested tensors are not supported")
    if attn_mask is not None:
        raise InvalidArgumentError("attention: attn_mask is not supported with nested tensors (as SDPA); mask by the "
                                   "sequences' lengths instead")
    ragged = {t._ragged_idx for t in (query, key, value)}
    if len(ragged) != 1:
        raise InvalidArgumentError(f"attention: query, key and value must be ragged along one dim, got dims "
                                   f"{query._ragged_idx}, {key._ragged_idx}, {value._ragged_idx}")
    if min(query.dim(), key.dim(), value.dim()) < 4:
        raise InvalidArgumentError("attention: nested query, key and value must be 4-D [batch, heads, ragged length, "
                                   f"head_dim], got {query.dim()}, {key.dim()} and {value.dim()} dims")
    ragged_idx = ragged.pop()
    if ragged_idx == 1:  # a ragged second batch dim: dense attention on the packed values
        out = attention(query.values(), key.values(), value.values(), None, dropout_p, is_causal, scale=scale,
                        enable_gqa=enable_gqa)
        return torch.nested.nested_tensor_from_jagged(out, query.offsets(), lengths=query.lengths())
    if ragged_idx != 2 or query.dim() != 4:
        raise InvalidArgumentError("attention: nested query, key and value must be [batch, heads, ragged length, "
                                   f"head_dim] (ragged along dim 2), got {query.dim()} dims ragged along dim "
                                   f"{ragged_idx}")
    if not query.shape[0] == key.shape[0] == value.shape[0]:
        raise InvalidArgumentError(f"attention: query, key and value batch sizes differ: {query.shape[0]}, "
                                   f"{key.shape[0]}, {value.shape[0]}")
    if key.shape[1] != value.shape[1]:
        raise InvalidArgumentError(f"attention: key and value head counts differ: {key.shape[1]} vs {value.shape[1]}")
    # [B, j, heads, dim] with packed values [N, heads, dim]; holes (a narrowed nested tensor) are closed up first.
    q_t, k_t, v_t = (_packed(t.transpose(1, 2)) for t in (query, key, value))
    if k_t.offsets() is not v_t.offsets() and not torch.equal(k_t.offsets(), v_t.offsets()):
        raise InvalidArgumentError("attention: key and value sequences must have the same lengths")
    out, _ = attention_varlen_with_lse(q_t.values(), k_t.values(), v_t.values(), q_t.offsets(), k_t.offsets(),
                                       dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    return torch.nested.nested_tensor_from_jagged(out, q_t.offsets()).transpose(1, 2)


def _packed(t):
    # A [B, j, heads, dim] nested tensor whose values hold its rows back to back in order
    return t.contiguous() if t.lengths() is not None else t
