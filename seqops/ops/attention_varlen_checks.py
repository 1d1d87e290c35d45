"""Argument checks of the packed-sequence attention ops (seqops::attention_varlen_fwd / _bwd): shapes and dtypes
(run by the ops and their fake kernels), and the cumulative lengths' values (run by the ops on a host copy), since
the kernels index rows by them unchecked."""

import torch

from seqops.ops.attention_op_checks import (
    check_backward_tensors,
    check_heads_and_head_dim,
    check_qkv_layout,
    check_same_device,
)
from seqops.ops.errors import InvalidArgumentError, InvalidDtypeError

_INDEX_DTYPES = (torch.int32, torch.int64)


def check_varlen_forward_args(op, q, k, v, cu_q, cu_k, seed, dropout_p):
    """q [Nq, H, E], k [Nk, Hkv, E], v [Nk, Hkv, Ev] with Hkv dividing H; cu_q, cu_k [B + 1] int32/int64 on q's
    device; seed [1] int64 when dropout_p > 0."""
    check_qkv_layout(op, q, k, v, "3-D [rows, heads, head_dim]")
    check_same_device(op, (("k", k), ("v", v), ("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k), ("seed", seed)),
                      q.device)
    (_, H, E), (Nk, Hkv, Ek), (Nv, Hv, _) = q.shape, k.shape, v.shape
    check_heads_and_head_dim(op, H, Hkv, Hv, E, Ek)
    if Nk != Nv:
        raise InvalidArgumentError(f"{op}: k and v row counts differ: {Nk} vs {Nv}")
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if cu.dim() != 1 or cu.shape[0] < 1:
            raise InvalidArgumentError(f"{op}: {name} must be 1-D [batch + 1], got shape {tuple(cu.shape)}")
        if cu.dtype not in _INDEX_DTYPES:
            raise InvalidDtypeError(f"{op}: {name} must be int32 or int64, got {cu.dtype}")
    if cu_q.shape[0] != cu_k.shape[0]:
        raise InvalidArgumentError(f"{op}: cu_seqlens_q and cu_seqlens_k give different batch sizes: "
                                   f"{cu_q.shape[0] - 1} vs {cu_k.shape[0] - 1}")
    if not 0.0 <= dropout_p <= 1.0:
        raise InvalidArgumentError(f"{op}: dropout_p must be in [0, 1], got {dropout_p}")
    if dropout_p > 0 and (seed is None or seed.numel() != 1 or seed.dtype != torch.int64):
        raise InvalidArgumentError(f"{op}: dropout_p > 0 needs seed, a one-element int64 tensor on q's device")


def check_varlen_backward_args(op, dout, dlse, q, k, v, cu_q, cu_k, seed, out, lse, dropout_p):
    """The forward's arguments as above; dout and out [Nq, H, Ev] in q's dtype; lse (and dlse) [H, Nq]."""
    check_varlen_forward_args(op, q, k, v, cu_q, cu_k, seed, dropout_p)
    Nq, H, _ = q.shape
    check_backward_tensors(op, q, dout, dlse, out, lse, (Nq, H, v.shape[2]), (H, Nq))


def sequence_bounds(op, cu_q, cu_k, Nq, Nk):
    """(per sequence (q0, q1, k0, k1), longest query length, longest key length) from the cumulative lengths,
    which must start at 0, never decrease, and end at the row counts Nq, Nk. One copy to the host (a sync on
    CUDA)."""
    host = torch.stack([cu_q.to(torch.int64), cu_k.to(torch.int64)]).cpu().tolist()
    for name, cu, rows in (("cu_seqlens_q", host[0], Nq), ("cu_seqlens_k", host[1], Nk)):
        if cu[0] != 0:
            raise InvalidArgumentError(f"{op}: {name} must start at 0, got {cu[0]}")
        if cu[-1] != rows:
            raise InvalidArgumentError(f"{op}: {name} must end at the row count {rows}, got {cu[-1]}")
        for b in range(len(cu) - 1):
            if cu[b + 1] < cu[b]:
                raise InvalidArgumentError(f"{op}: {name} must not decrease, got {cu[b]} then {cu[b + 1]} at "
                                           f"sequence {b}")
    bounds = [(q0, q1, k0, k1) for q0, q1, k0, k1 in zip(host[0], host[0][1:], host[1], host[1][1:])]
    max_q = max((q1 - q0 for q0, q1, _, _ in bounds), default=0)
    max_k = max((k1 - k0 for _, _, k0, k1 in bounds), default=0)
    return bounds, max_q, max_k
