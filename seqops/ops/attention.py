"""seqops.attention: F.scaled_dot_product_attention on fused Triton flash-attention kernels.

Two custom ops on a canonical layout (q [B, H, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev], mask a [B, H, L, S]
view): ``seqops::attention_fwd`` -> (out, lse) and ``seqops::attention_bwd``. The public functions validate,
broadcast leading dims and the mask by stride-0 views, and draw the dropout seed from torch's generator of the
device (so ``torch.manual_seed`` reproduces a dropout draw, and the backward regenerates the same mask).

Routing: CUDA tensors run the Triton kernels; CPU tensors run PyTorch's CPU flash-attention kernels where
they compute the same function and the reference elsewhere (attention_cpu.py), except when
``TRITON_INTERPRET=1`` was set before import, when they run the Triton kernels in the interpreter (bf16 excepted:
the interpreter's tl.dot gets bf16 wrong). float64 and
head dims above 256 run the reference everywhere. ``attention`` on CPU tensors that SDPA itself would run on
its CPU flash kernel calls SDPA (the same kernel, without the ops' Python around it; _sdpa_runs_cpu_flash).
"""

import math
import numbers
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from seqops.nn._autocast import ops_own_precision
from seqops.ops import attention_cpu, onnx_export
from seqops.ops._autograd import call_op, double_backward_through, register_autograd
from seqops.ops.attention_layout import empty_in_layout, in_layout
from seqops.ops.attention_op_checks import check_backward_args, check_flag_types, check_forward_args
from seqops.ops.errors import InvalidArgumentError, InvalidDtypeError
from seqops.reference.attention import attention_with_lse as reference_attention_with_lse

__all__ = ["attention", "attention_with_lse", "attention_dropout_mask"]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_KERNEL_HEAD_DIM = 256
_ops = torch.ops.seqops


def _triton_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _runs_kernels(q, v):
    if q.dtype not in _KERNEL_DTYPES or q.shape[-1] > MAX_KERNEL_HEAD_DIM or v.shape[-1] > MAX_KERNEL_HEAD_DIM:
        return False
    # Triton's interpreter multiplies bf16 tiles wrongly (tl.dot reads their bits as integers; triton 3.8), so bf16
    # CPU tensors take the CPU route, which computes them as SDPA does, instead of returning garbage.
    interpreted = q.device.type == "cpu" and _INTERPRET and q.dtype != torch.bfloat16
    return (q.device.type == "cuda" or interpreted) and _triton_available()


def _draw_seed(device):
    # One draw from the device's default generator: torch.manual_seed makes it, and so the mask, reproducible.
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


_MASK_BLOCK_ELEMENTS = 1 << 22  # the CPU keep-mask's float draws per block


def attention_dropout_mask(seed, B, H, L, S, dropout_p):
    """The boolean keep-mask [B, H, L, S] that the attention op with this seed uses (True = kept and scaled by
    1 / (1 - p)). Drawn by the same philox stream as the kernels, or by a CPU generator seeded with ``seed``
    on the reference path."""
    if (seed.device.type == "cuda" or _INTERPRET) and _triton_available():
        from seqops.kernels.attention_dropout import attention_dropout_mask as kernel_mask

        return kernel_mask(seed, B, H, L, S, dropout_p)
    gen = torch.Generator(device="cpu").manual_seed(int(seed.item()))
    keep = torch.empty((B, H, L, S), dtype=torch.bool)
    if keep.numel() == 0:
        return keep.to(seed.device)
    # Drawn in blocks of rows: the float32 draws of a whole [B, H, L, S] at once cost 4x the mask itself, and
    # consecutive draws from one generator are the one draw's numbers (so the mask is the same either way).
    rows = keep.view(-1, S)
    block = max(1, _MASK_BLOCK_ELEMENTS // S)
    for start in range(0, rows.shape[0], block):
        part = rows[start:start + block]
        torch.ge(torch.rand(part.shape, generator=gen), dropout_p, out=part)
    return keep.to(seed.device)


# ----------------------------------------------------------------------------------------------------------
# The reference path of the ops: CPU cases that attention_cpu does not take, float64, head dims > 256.


def _lse_dtype(dtype):
    # The lse is float32 (float64 for float64 inputs, so gradcheck sees an exact function).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reference_forward(q, k, v, mask, seed, scale, is_causal, dropout_p):
    # seqops.reference's attention, computed in place on one [B, H, L, S] buffer (the op records no graph):
    # the out-of-place reference held about four of them, 1.4x SDPA's peak with dropout
    B, H, L, _ = q.shape
    keep = attention_dropout_mask(seed, B, H, L, k.shape[2], dropout_p) if dropout_p > 0 else None
    qc, kc, vc = _in_compute_dtype(q, k, v)
    p = _masked_scores(qc, kc, mask, scale, is_causal)
    lse = torch.logsumexp(p, dim=-1)
    _probabilities_in_place(p, lse)
    if keep is not None:
        p.mul_(keep).mul_(0.0 if dropout_p >= 1 else 1.0 / (1.0 - dropout_p))
    out = torch.matmul(p, vc)
    return in_layout(out.to(q.dtype), q), lse.to(_lse_dtype(q.dtype))


def _in_compute_dtype(q, k, v):
    # -> q, k, v in float32 (float64 for float64: the lse's dtype), k and v with q's head count
    ct = _lse_dtype(q.dtype)
    group = q.shape[1] // k.shape[1]
    return q.to(ct), k.to(ct).repeat_interleave(group, 1), v.to(ct).repeat_interleave(group, 1)


def _masked_scores(qc, kc, mask, scale, is_causal):
    # q: [B, H, L, E], k: [B, H, S, E] -> the scaled, masked scores [B, H, L, S], a fresh buffer
    L, S = qc.shape[2], kc.shape[2]
    scores = torch.matmul(qc, kc.transpose(-2, -1)).mul_(scale)
    if is_causal:
        scores.masked_fill_(torch.ones(L, S, dtype=torch.bool, device=qc.device).triu_(1), float("-inf"))
    if mask is not None:
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.to(scores.dtype))  # the op's mask broadcasts to the scores
    return scores


def _probabilities_in_place(scores, lse):
    """scores -> softmax probabilities exp(s - lse), in place: 0 in a fully masked row (lse -inf), NaN
    throughout a row with a +inf score (inf - inf), as SDPA's; exp(s - inf) would leave 0s there."""
    scores.sub_(torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)[..., None]).exp_()
    return scores.masked_fill_(torch.isposinf(lse)[..., None], float("nan"))


def _reference_backward(dout, dlse, q, k, v, mask, seed, out, lse, scale, is_causal, dropout_p):
    B, H, L, _ = q.shape
    keep = attention_dropout_mask(seed, B, H, L, k.shape[2], dropout_p) if dropout_p > 0 else None
    return reference_grads(dout, dlse, q, k, v, mask, keep, out, lse, scale, is_causal, dropout_p)


def reference_grads(dout, dlse, q, k, v, mask, keep, out, lse, scale, is_causal, dropout_p):
    """Explicit flash-attention backward formulas in float32 (float64 for float64), probabilities recomputed;
    keep: the [B, H, L, S] dropout keep-mask (None without dropout) -> (dq, dk, dv, dS)."""
    # In place on the [B, H, L, S] products wherever the value is not read again: at most three of them live at
    # once (p, dp and one product for dv), where out-of-place steps held about seven (2x SDPA's peak).
    Hkv = k.shape[1]
    group = q.shape[1] // Hkv
    qc, kc, vc = _in_compute_dtype(q, k, v)
    doc = dout.to(qc.dtype)
    p = _probabilities_in_place(_masked_scores(qc, kc, mask, scale, is_causal), lse.to(qc.dtype))
    dp = torch.matmul(doc, vc.transpose(-2, -1))
    if dropout_p > 0:
        drop_scale = 0.0 if dropout_p >= 1 else 1.0 / (1.0 - dropout_p)
        dv = (p * keep).mul_(drop_scale).transpose(-2, -1) @ doc
        dp.mul_(keep).mul_(drop_scale)
    else:
        dv = p.transpose(-2, -1) @ doc
    dv = dv.unflatten(1, (Hkv, group)).sum(2)
    delta = (doc * out.to(qc.dtype)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(qc.dtype)
    ds = dp.sub_(delta[..., None]).mul_(p)
    del p
    dq = (ds @ kc) * scale
    dk = ((ds.transpose(-2, -1) @ qc) * scale).unflatten(1, (Hkv, group)).sum(2)
    return (in_layout(dq.to(q.dtype), q), in_layout(dk.to(k.dtype), k), in_layout(dv.to(v.dtype), v),
            ds.to(_lse_dtype(q.dtype)))


# ----------------------------------------------------------------------------------------------------------
# The custom ops.


@torch.library.custom_op("seqops::attention_fwd", mutates_args=())
def attention_fwd(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, seed: Tensor | None,
    scale: float, is_causal: bool, dropout_p: float,
) -> tuple[Tensor, Tensor]:
    # q: [B, H, L, E], k: [B, Hkv, S, E], v: [B, Hkv, S, Ev], mask: [B, H, L, S] view, seed: [1] int64
    # -> out: [B, H, L, Ev] (q.dtype, q's layout: attention_layout.py), lse: [B, H, L] fp32, fp64 for fp64
    #    (natural log, -inf if fully masked)
    check_forward_args("attention_fwd", q, k, v, mask, seed, dropout_p)
    with ops_own_precision(q.device.type):
        if _runs_kernels(q, v):
            from seqops.kernels.attention_fwd import attention_forward

            return attention_forward(q, k, v, mask, scale, is_causal, dropout_p, seed)
        if attention_cpu.applies(q, v, mask, dropout_p, is_causal, scale):
            return attention_cpu.forward(q, k, v, mask, scale, is_causal)
        return _reference_forward(q, k, v, mask, seed, scale, is_causal, dropout_p)


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, mask, seed, scale, is_causal, dropout_p):
    check_forward_args("attention_fwd", q, k, v, mask, seed, dropout_p)
    B, H, L, _ = q.shape
    return empty_in_layout(q, (B, H, L, v.shape[-1])), q.new_empty((B, H, L), dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("seqops::attention_bwd", mutates_args=())
def attention_bwd(
    dout: Tensor, dlse: Tensor | None, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
    seed: Tensor | None, out: Tensor, lse: Tensor, scale: float, is_causal: bool, dropout_p: float,
    need_dmask: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # -> dq [B, H, L, E], dk [B, Hkv, S, E], dv [B, Hkv, S, Ev], each in its input's layout,
    #    dmask [B, H, L, S] in the lse dtype ([0] when not needed)
    check_backward_args("attention_bwd", dout, dlse, q, k, v, mask, seed, out, lse, dropout_p)
    with ops_own_precision(q.device.type):
        if _runs_kernels(q, v):
            from seqops.kernels.attention_bwd import attention_backward

            dq, dk, dv, dmask = attention_backward(
                dout, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed, need_dmask, dlse=dlse
            )
        elif attention_cpu.backward_applies(q, v, mask, dropout_p, is_causal, scale, dlse, need_dmask):
            dq, dk, dv = attention_cpu.backward(dout, q, k, v, mask, out, lse, scale, is_causal)
            dmask = None
        else:
            dq, dk, dv, dmask = _reference_backward(dout, dlse, q, k, v, mask, seed, out, lse, scale, is_causal,
                                                    dropout_p)
    if not need_dmask:
        dmask = q.new_empty((0,), dtype=_lse_dtype(q.dtype))
    return dq, dk, dv, dmask


@attention_bwd.register_fake
def _attention_bwd_fake(dout, dlse, q, k, v, mask, seed, out, lse, scale, is_causal, dropout_p, need_dmask):
    check_backward_args("attention_bwd", dout, dlse, q, k, v, mask, seed, out, lse, dropout_p)
    B, H, L, _ = q.shape
    dmask_shape = (B, H, L, k.shape[2]) if need_dmask else (0,)
    return (empty_in_layout(q, q.shape), empty_in_layout(k, k.shape), empty_in_layout(v, v.shape),
            q.new_empty(dmask_shape, dtype=_lse_dtype(q.dtype)))


def _setup_context(ctx, inputs, output):
    q, k, v, mask, seed, scale, is_causal, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, seed, out, lse)
    # An unused lse keeps a None gradient instead of a zeros tensor: the backward then skips its term (and the
    # CPU kernel, which has none, can take the call).
    ctx.set_materialize_grads(False)
    ctx.scale, ctx.is_causal, ctx.dropout_p = scale, is_causal, dropout_p


def _differentiable_forward(q, k, v, mask, seed, scale, is_causal, dropout_p):
    B, H, L, _ = q.shape
    keep = attention_dropout_mask(seed, B, H, L, k.shape[2], dropout_p) if dropout_p > 0 else None
    out, lse = reference_attention_with_lse(
        q, k, v, mask, dropout_p, is_causal, scale, enable_gqa=True, upcast=True, dropout_mask=keep
    )
    return out.to(q.dtype), lse.to(_lse_dtype(q.dtype))


def _backward(ctx, dout, dlse):
    q, k, v, mask, seed, out, lse = ctx.saved_tensors
    args = (q, k, v, mask, seed, ctx.scale, ctx.is_causal, ctx.dropout_p)
    if torch.is_grad_enabled():  # create_graph=True: differentiate the reference instead
        return double_backward_through(_differentiable_forward, args, (dout, dlse))
    if dout is None:
        dout = torch.zeros_like(out)
    # A float mask can carry a gradient (dS, reduced over its broadcast dims by autograd's expand backward).
    need_dmask = mask is not None and mask.dtype != torch.bool and ctx.needs_input_grad[3]
    dq, dk, dv, dmask = _ops.attention_bwd(
        dout, dlse, q, k, v, mask, seed, out, lse, ctx.scale, ctx.is_causal, ctx.dropout_p, need_dmask
    )
    return dq, dk, dv, dmask.to(mask.dtype) if need_dmask else None, None, None, None, None


register_autograd("attention_fwd", _backward, setup_context=_setup_context, differentiable=_differentiable_forward)


# ----------------------------------------------------------------------------------------------------------
# Validation and canonicalisation.


def _check_inputs(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
    check_flag_types("attention", dropout_p, is_causal, enable_gqa)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise InvalidArgumentError(f"attention: {name} must have at least 2 dims (..., length, head_dim), "
                                       f"got {t.dim()}")
    if not (query.dtype == key.dtype == value.dtype):
        raise InvalidDtypeError(f"attention: query, key and value must have one dtype, got {query.dtype}, "
                                f"{key.dtype}, {value.dtype}")
    if not query.dtype.is_floating_point:
        raise InvalidDtypeError(f"attention: expected floating-point inputs, got {query.dtype}")
    if not (query.device == key.device == value.device):
        raise InvalidArgumentError(f"attention: query, key and value must be on one device, got "
                                   f"{query.device}, {key.device}, {value.device}")
    if query.shape[-1] != key.shape[-1]:
        raise InvalidArgumentError(f"attention: query and key head dims differ: {query.shape[-1]} vs "
                                   f"{key.shape[-1]}")
    if key.shape[-2] != value.shape[-2]:
        raise InvalidArgumentError(f"attention: key and value lengths differ: {key.shape[-2]} vs "
                                   f"{value.shape[-2]}")
    if not 0.0 <= dropout_p <= 1.0:
        raise InvalidArgumentError(f"attention: dropout_p must be in [0, 1], got {dropout_p}")
    if is_causal and attn_mask is not None:
        raise InvalidArgumentError("attention: pass either attn_mask or is_causal=True, not both (as SDPA)")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"attention: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in (query.dtype, torch.float32):
            raise InvalidDtypeError(f"attention: attn_mask must be bool, float32 or the query dtype "
                                    f"({query.dtype}), got {attn_mask.dtype}")
        if attn_mask.device != query.device:
            raise InvalidArgumentError(f"attention: attn_mask is on {attn_mask.device}, query on {query.device}")
    if enable_gqa and min(query.dim(), key.dim(), value.dim()) >= 3:
        hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if hk == 0 or hv == 0 or hq % hk != 0 or hq % hv != 0:
            raise InvalidArgumentError(f"attention: with enable_gqa, the key and value heads ({hk}, {hv}) must "
                                       f"each divide the query heads ({hq})")


def _scale_value(scale):
    """The softmax scale as a float, or None: SDPA takes any real number, a numpy scalar or a one-element
    tensor too."""
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor) and scale.numel() == 1:
        return float(scale)
    if isinstance(scale, numbers.Real):
        return float(scale)
    raise TypeError(f"attention: scale must be a float or None, got {type(scale).__name__}")


def _grouped_heads(key, value, enable_gqa):
    """Key and value with one head count: SDPA's enable_gqa lets key and value have different head counts
    (each dividing the query's), which the kernels' grouping does not. The fewer heads are repeated up to
    lcm(hk, hv), which still divides the query heads (autograd sums the repeats' gradients)."""
    if not enable_gqa or min(key.dim(), value.dim()) < 3 or key.shape[-3] == value.shape[-3]:
        return key, value
    heads = math.lcm(key.shape[-3], value.shape[-3])
    return (key.repeat_interleave(heads // key.shape[-3], dim=-3),
            value.repeat_interleave(heads // value.shape[-3], dim=-3))


def _heads(t):
    return t.shape[-3] if t.dim() >= 3 else 1


def _broadcast(*shapes):
    # torch.broadcast_shapes runs through symbolic-shape guards (~25 us a call); equal shapes, the usual case,
    # need none of it
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return torch.Size(first)
    return torch.broadcast_shapes(*shapes)


def _canonicalise(query, key, value, attn_mask, enable_gqa):
    """Views of the inputs in [B, H, L, E] / [B, Hkv, S, E] / [B, H, L, S] (stride 0 where they broadcast) and
    the output's leading shape."""
    L, S, E, EV = query.shape[-2], key.shape[-2], query.shape[-1], value.shape[-1]
    hq, hk, hv = _heads(query), _heads(key), _heads(value)
    batch_of = lambda t: t.shape[:-3]  # noqa: E731
    try:
        batch = _broadcast(batch_of(query), batch_of(key), batch_of(value))
    except RuntimeError:
        raise InvalidArgumentError(f"attention: leading dims of query {tuple(query.shape)}, key "
                                   f"{tuple(key.shape)} and value {tuple(value.shape)} do not broadcast") from None
    if enable_gqa and hk == hv and hk != hq and hq % hk == 0:  # (_grouped_heads made hk == hv)
        H, Hkv = hq, hk
    else:
        try:
            H = _broadcast((hq,), (hk,), (hv,))[0]
        except RuntimeError:
            raise InvalidArgumentError(f"attention: query has {hq} heads, key {hk}, value {hv}; they must match "
                                       "or broadcast (or pass enable_gqa=True for grouped-query attention)") from None
        Hkv = H
    out_dims = max(query.dim(), key.dim(), value.dim())
    lead = (*batch, H) if out_dims >= 3 else ()

    def canon(t, heads, length, dim):
        t = t.expand(*batch, heads, length, dim)  # stride 0 wherever t broadcasts
        return t.reshape(-1, heads, length, dim) if len(batch) > 1 else t

    q4 = canon(query, H, L, E)
    k4 = canon(key, Hkv, S, E)
    v4 = canon(value, Hkv, S, EV)
    m4 = None
    if attn_mask is not None:
        scores = (*batch, H, L, S)[-max(query.dim(), key.dim()):]  # q @ k^T's shape, to which SDPA adds the mask
        attn_mask = _mask_within_scores_rank(attn_mask, out_dims, scores, query.dim() == key.dim() == value.dim() == 3)
        try:
            m = attn_mask.expand(*batch, H, L, S)
        except RuntimeError:
            raise InvalidArgumentError(f"attention: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast "
                                       f"to {(*batch, H, L, S)} (batch..., heads, L, S)") from None
        m4 = m.reshape(-1, H, L, S) if len(batch) > 1 else m
    if len(batch) == 0:
        q4, k4, v4 = q4.unsqueeze(0), k4.unsqueeze(0), v4.unsqueeze(0)
        m4 = m4.unsqueeze(0) if m4 is not None else None
    return q4, k4, v4, m4, (*lead, L, EV)


def _autocast(query, key, value, attn_mask):
    """Under autocast SDPA runs in the autocast dtype (it is on autocast's lower-precision list): so do we."""
    device = query.device.type if isinstance(query, torch.Tensor) else None
    if device not in ("cuda", "cpu") or not torch.is_autocast_enabled(device):
        return query, key, value, attn_mask
    dtype = torch.get_autocast_dtype(device)

    def cast(t):
        castable = isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if castable else t

    return cast(query), cast(key), cast(value), cast(attn_mask)


def _prepared(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """The arguments autocast, checked, with the scale as a float or None."""
    query, key, value, attn_mask = _autocast(query, key, value, attn_mask)
    scale = _scale_value(scale)
    _check_inputs(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    return query, key, value, attn_mask, scale


def _sdpa_runs_cpu_flash(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """Whether SDPA itself would run PyTorch's CPU flash kernel here, the kernel seqops' CPU route calls (it picks
    its math backend for broadcast batches, a strided head dim, a value head dim unlike the query's, a float
    mask that takes a gradient). Then seqops.attention is SDPA, without ~25 us of seqops' own Python per call
    and per backward (at L = 32 that overhead doubled the call). Not float64 (the exact reference for gradcheck)
    nor dropout (seqops draws its own reproducible mask), nor under a TorchDispatchMode (FlopCounterMode counts
    seqops' op, SDPA's CPU flash kernel has no flop formula)."""
    if _INTERPRET or query.device.type != "cpu" or dropout_p != 0.0:
        return False
    if not attention_cpu.causal_scale_applies(is_causal, scale):  # SDPA's flash kernel gives NaN there
        return False
    if not torch.compiler.is_compiling() and is_in_torch_dispatch_mode():
        return False
    if query.dtype not in attention_cpu.CPU_FLASH_DTYPES:
        return False
    if not query.dim() == key.dim() == value.dim() or query.dim() not in (3, 4):
        return False
    if not query.shape[:-3] == key.shape[:-3] == value.shape[:-3] or query.shape[-1] != value.shape[-1]:
        return False
    hq, hk = query.shape[-3], key.shape[-3]
    if value.shape[-3] != hk or not (hq == hk or (enable_gqa and hq % hk == 0)):
        return False
    # Each size against 0 on its own: min() of symbolic sizes would make torch.export guard on their order
    if query.shape[-2] == 0 or key.shape[-2] == 0 or query.shape[-1] == 0 or query.numel() == 0:
        return False
    if any(t.stride(-1) != 1 for t in (query, key, value)):
        return False
    if attn_mask is None:
        return True
    return (attn_mask.dtype == torch.bool or (attn_mask.dtype == query.dtype and not attn_mask.requires_grad)) and (
        _mask_broadcasts(attn_mask, (*query.shape[:-1], key.shape[-2])))


def _mask_of_query_rank(attn_mask, query):
    """The mask for SDPA's CPU flash kernel: SDPA wants one of at least 2 dims, and takes its math backend for one
    of fewer dims than the query's (a [H, L, S] mask on [B, H, L, S] scores): size-1 leading dims, a view."""
    if attn_mask is None or attn_mask.dim() >= query.dim():
        return attn_mask
    return attn_mask.reshape((1,) * (query.dim() - attn_mask.dim()) + tuple(attn_mask.shape))


def _common_cpu_mask(attn_mask, query_shape, key_length, is_causal):
    """A dense boolean CPU mask (True = take part, as SDPA's) of 2 to the query's dims that broadcasts to the scores
    [..., L, S], with is_causal False: what _prepared accepts as it is and SDPA's flash kernel takes."""
    if type(attn_mask) is not torch.Tensor or attn_mask.dtype != torch.bool or is_causal is not False:
        return False
    if not attn_mask.is_cpu or attn_mask.layout != torch.strided or attn_mask.is_nested:
        return False
    return attn_mask.dim() >= 2 and _mask_broadcasts(attn_mask, (*query_shape[:-1], key_length))


def _common_cpu_call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    """Whether this is the common CPU call that SDPA's CPU flash kernel takes as it is, told in a few attribute
    reads: dense CPU tensors, a query [..., L, E] and a key and value of one shape [..., S, E] with the query's
    leading dims (3-D or 4-D, none empty: self-attention, cross-attention, a decoding step's L = 1 against its
    cache), one flash dtype, unit-stride rows; no mask or a boolean one (_common_cpu_mask), no dropout, the
    default scale, no GQA, a bool is_causal (upper-left aligned where L != S, as SDPA's); outside autocast,
    torch.compile and dispatch modes. Every check of _prepared and _sdpa_runs_cpu_flash holds for such a call,
    so attention() hands it to SDPA without them: they cost ~10 us of Python a call, and this test ~3.3 (at
    L = 16, B=2 H=4 D=64: 28.5 us against SDPA's 14.4 before it; a decoding step at L = 1, S = 128, B=1 H=8
    D=64: 29.1 us against 12.7). Anything else takes the full route, its checks and errors."""
    # torch.compile first: under it nothing below may run, or Dynamo guards on its size comparisons (a recompile
    # for each new L == S outcome with dynamic shapes). Then the query's device, so a GPU call leaves at once.
    if torch.compiler.is_compiling() or type(query) is not torch.Tensor or not query.is_cpu:
        return False
    if type(key) is not torch.Tensor or type(value) is not torch.Tensor or not (key.is_cpu and value.is_cpu):
        return False
    if is_in_torch_dispatch_mode() or _INTERPRET or torch.is_autocast_enabled("cpu"):
        return False
    if scale is not None or enable_gqa is not False or not (is_causal is False or is_causal is True):
        return False
    if type(dropout_p) not in (float, int) or dropout_p != 0:
        return False
    if query.is_nested or key.is_nested or value.is_nested:  # before any shape is read
        return False
    if query.layout != torch.strided or key.layout != torch.strided or value.layout != torch.strided:
        return False
    dtype = query.dtype
    if dtype not in attention_cpu.CPU_FLASH_DTYPES or key.dtype != dtype or value.dtype != dtype:
        return False
    query_shape, key_shape = query.shape, key.shape
    if len(query_shape) not in (3, 4) or key_shape != value.shape:
        return False
    if query_shape[:-2] != key_shape[:-2] or query_shape[-1] != key_shape[-1]:
        return False
    if query.numel() == 0 or key.numel() == 0:
        return False
    if query.stride(-1) != 1 or key.stride(-1) != 1 or value.stride(-1) != 1:
        return False
    return attn_mask is None or _common_cpu_mask(attn_mask, query_shape, key_shape[-2], is_causal)


def _mask_within_scores_rank(mask, out_dims, scores_shape, all_3d):
    """The mask without the leading size-1 dims SDPA lets it have beyond the output's rank. SDPA adds it in place
    to the scores, so one of more dims than they have is refused, as SDPA refuses it; all-3-D inputs' scores
    count as [1, H, L, S] there."""
    extra = mask.dim() - out_dims
    if mask.dim() > len(scores_shape) + all_3d or any(n != 1 for n in mask.shape[:max(extra, 0)]):
        raise InvalidArgumentError(f"attention: attn_mask of shape {tuple(mask.shape)} has more dims than the "
                                   f"scores {tuple(scores_shape)}; it may broadcast over them, not add dims (as SDPA)")
    return mask.reshape(mask.shape[extra:]) if extra > 0 else mask


def _mask_broadcasts(mask, shape):
    # Whether mask broadcasts to shape; a mask that does not is left to _canonicalise's error (SDPA's says less)
    if mask.dim() > len(shape):
        return False
    return all(m in (1, n) for m, n in zip(reversed(mask.shape), reversed(shape)))


def _attention_op(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    # the prepared arguments -> (out, lse) through seqops' ops
    key, value = _grouped_heads(key, value, enable_gqa)
    if scale is None:  # head dim 0: every score is an empty sum, 0 whatever the scale (SDPA: uniform weights)
        scale = 1.0 / math.sqrt(query.shape[-1]) if query.shape[-1] > 0 else 1.0
    q4, k4, v4, m4, out_shape = _canonicalise(query, key, value, attn_mask, enable_gqa)
    if q4.numel() == 0 or k4.shape[2] == 0 or v4.numel() == 0:
        # Nothing to stream: an empty batch or length, or no keys (every row fully masked: zeros, lse -inf).
        out, lse = reference_attention_with_lse(q4, k4, v4, m4, 0.0, is_causal, scale, enable_gqa=True)
        return out.reshape(out_shape), lse.to(_lse_dtype(query.dtype)).reshape(out_shape[:-1])
    seed = _draw_seed(query.device) if dropout_p > 0 else None
    out, lse = call_op(_ops.attention_fwd, q4, k4, v4, m4, seed, scale, bool(is_causal), float(dropout_p))
    return out.reshape(out_shape), lse.reshape(out_shape[:-1])


def _any_nested(*tensors):
    return any(isinstance(t, torch.Tensor) and t.is_nested for t in tensors)


def attention_with_lse(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
                       enable_gqa=False):
    """Like :func:`attention`, returning ``(out, lse)``: ``lse[..., i]`` is the natural log-sum-exp of query
    row i's scaled, masked scores (``-inf`` where every key is masked), float32 (float64 for float64
    inputs). Both outputs are differentiable."""
    if _any_nested(query, key, value):
        raise InvalidArgumentError("attention_with_lse: nested tensors are not supported; use "
                                   "seqops.attention_varlen_with_lse on their packed values")
    args = _prepared(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    query, key, value, attn_mask, scale = args
    return _attention_op(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None,
              enable_gqa=False):
    """``F.scaled_dot_product_attention`` on fused flash-attention kernels.

    query: (..., L, E); key: (..., S, E); value: (..., S, Ev); leading dims broadcast; with ``enable_gqa`` the
    query heads (dim -3) may be a multiple of the key/value heads. ``attn_mask``: bool (True = take part) or
    float (added to the scores), broadcastable to (..., L, S). ``is_causal``: upper-left aligned tril mask.
    ``scale`` defaults to 1/sqrt(E). Dropout uses torch's RNG of the device. Returns (..., L, Ev).
    On CPU tensors where SDPA itself runs PyTorch's CPU flash kernel, this is SDPA (see _sdpa_runs_cpu_flash).
    Jagged nested tensors [B, H, j, E] run the packed-sequence kernels (attention_varlen.jagged_attention).
    """
    if _common_cpu_call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        return F.scaled_dot_product_attention(query, key, value, _mask_of_query_rank(attn_mask, query),
                                              is_causal=is_causal)
    if _any_nested(query, key, value):
        from seqops.ops.attention_varlen import jagged_attention

        return jagged_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    query, key, value, attn_mask, scale = _prepared(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                                    enable_gqa)
    if onnx_export.exporting():
        return onnx_export.attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if _sdpa_runs_cpu_flash(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        return F.scaled_dot_product_attention(query, key, value, _mask_of_query_rank(attn_mask, query), 0.0,
                                              bool(is_causal), scale=scale, enable_gqa=bool(enable_gqa))
    return _attention_op(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)[0]
