"""Argument checks of the attention custom ops (seqops::attention_fwd / attention_bwd), run by the ops and by
their fake kernels. The public functions canonicalise and check their arguments before they reach the ops; these
checks are for the ops called directly (torch.ops.seqops.*), whose CPU route hands tensors to an ATen kernel that
indexes them unchecked: a short dout or lse, or more key heads than query heads, read out of bounds there. A
fake kernel that checks also stops a meta tensor among real ones (the Meta key wins the dispatch and would return
uninitialised memory on the real tensors' device)."""

import numbers

import torch

from seqops.ops.errors import InvalidArgumentError, InvalidDtypeError


def check_flag_types(op, dropout_p, is_causal, enable_gqa):
    """The public functions' scalar arguments typed as SDPA's binding types them: a None or 1 for is_causal is a
    TypeError there, not a silent False or True."""
    for name, flag in (("is_causal", is_causal), ("enable_gqa", enable_gqa)):
        if not isinstance(flag, bool):
            raise TypeError(f"{op}: argument '{name}' must be bool, not {_type_name(flag)}")
    # A Python or numpy number, bools included (`dropout_p=self.training and p`); a 0-d tensor as well, which
    # SDPA's binding refuses but earlier seqops took
    if not (isinstance(dropout_p, numbers.Real) or (isinstance(dropout_p, torch.Tensor) and dropout_p.dim() == 0)):
        raise TypeError(f"{op}: argument 'dropout_p' must be float, not {_type_name(dropout_p)}")


def _type_name(value):
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_same_device(op, named, device):
    for name, t in named:
        if t is not None and t.device != device:
            raise InvalidArgumentError(f"{op}: {name} is on {t.device}, q on {device}")


def check_heads_and_head_dim(op, H, Hkv, Hv, E, Ek):
    """k and v with one head count dividing q's H; q and k with one head dim."""
    if Hkv != Hv or Hkv == 0 or H % Hkv != 0:
        raise InvalidArgumentError(f"{op}: k and v must have one head count dividing q's {H}, got {Hkv} and {Hv}")
    if E != Ek:
        raise InvalidArgumentError(f"{op}: q and k head dims differ: {E} vs {Ek}")


def check_qkv_layout(op, q, k, v, layout):
    """q, k and v of the dims `layout` names ("4-D [...]") and of one floating dtype."""
    dims = int(layout[0])
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != dims:
            raise InvalidArgumentError(f"{op}: {name} must be {layout}, got shape {tuple(t.shape)}")
    if not q.dtype.is_floating_point or not q.dtype == k.dtype == v.dtype:
        raise InvalidDtypeError(f"{op}: q, k and v must share one floating dtype, got {q.dtype}, {k.dtype}, "
                                f"{v.dtype}")


def check_forward_args(op, q, k, v, mask, seed, dropout_p):
    """q [B, H, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev] with Hkv dividing H; mask None or [B, H, L, S];
    seed [1] int64 when dropout_p > 0."""
    check_qkv_layout(op, q, k, v, "4-D [batch, heads, length, head_dim]")
    check_same_device(op, (("k", k), ("v", v), ("mask", mask), ("seed", seed)), q.device)
    (B, H, L, E), (Bk, Hkv, S, Ek), (Bv, Hv, Sv, _) = q.shape, k.shape, v.shape
    if not B == Bk == Bv:
        raise InvalidArgumentError(f"{op}: q, k and v batch sizes differ: {B}, {Bk}, {Bv}")
    check_heads_and_head_dim(op, H, Hkv, Hv, E, Ek)
    if S != Sv:
        raise InvalidArgumentError(f"{op}: k and v lengths differ: {S} vs {Sv}")
    if mask is not None:
        if tuple(mask.shape) != (B, H, L, S):
            raise InvalidArgumentError(f"{op}: mask must have shape {(B, H, L, S)} (a broadcast view is fine), got "
                                       f"{tuple(mask.shape)}")
        if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
            raise InvalidDtypeError(f"{op}: mask must be bool or floating point, got {mask.dtype}")
    if not 0.0 <= dropout_p <= 1.0:
        raise InvalidArgumentError(f"{op}: dropout_p must be in [0, 1], got {dropout_p}")
    if dropout_p > 0 and (seed is None or seed.numel() != 1 or seed.dtype != torch.int64):
        raise InvalidArgumentError(f"{op}: dropout_p > 0 needs seed, a one-element int64 tensor on q's device")


def check_backward_args(op, dout, dlse, q, k, v, mask, seed, out, lse, dropout_p):
    """The forward's arguments as above; dout and out [B, H, L, Ev] in q's dtype; lse (and dlse) [B, H, L]."""
    check_forward_args(op, q, k, v, mask, seed, dropout_p)
    B, H, L, _ = q.shape
    check_backward_tensors(op, q, dout, dlse, out, lse, (B, H, L, v.shape[-1]), (B, H, L))


def check_backward_tensors(op, q, dout, dlse, out, lse, out_shape, lse_shape):
    """dout and out of out_shape in q's dtype, lse (and dlse, if given) of lse_shape, all floating, on q's device."""
    for name, t, shape in (("dout", dout, out_shape), ("out", out, out_shape), ("lse", lse, lse_shape),
                           ("dlse", dlse, lse_shape)):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise InvalidArgumentError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
        if not t.dtype.is_floating_point:
            raise InvalidDtypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    for name, t in (("dout", dout), ("out", out)):
        if t.dtype != q.dtype:
            raise InvalidDtypeError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    check_same_device(op, (("dout", dout), ("dlse", dlse), ("out", out), ("lse", lse)), q.device)

