"""Packed-sequence attention without the Triton kernels (the CPU without the interpreter, float64, head dims above
256), one sequence at a time: on PyTorch's CPU flash kernels where they compute the same function (attention_cpu),
else on the reference, whose forward is also the differentiable function double backward goes through.

Every function takes q [Nq, H, E], k [Nk, Hkv, E], v [Nk, Hkv, Ev] and bounds, per sequence (q0, q1, k0, k1) on
the host; each sequence runs as a batch of one, [1, heads, rows, dim].
"""

import torch

from seqops.ops import attention_cpu
from seqops.ops.attention import _INTERPRET, _lse_dtype, _triton_available, reference_grads
from seqops.reference.attention import attention_with_lse as reference_attention_with_lse


def _as_batch(t):
    return t.transpose(0, 1).unsqueeze(0)  # [rows, heads, dim] -> [1, heads, rows, dim]


def _longest(bounds):
    # (longest query length, longest key length): the kernels' dropout grid is [B * H, max_q, max_k]
    return max(hi - lo for lo, hi, _, _ in bounds), max(hi - lo for _, _, lo, hi in bounds)


def sequence_dropout_keep(seed, bounds, heads, b, dropout_p, longest=None):
    """Sequence b's keep-mask [H, Lb, Sb], drawn one sequence at a time (the whole [B, H, max_q, max_k] grid would
    take B * max^2 bytes a head). Where the kernels run (CUDA, the interpreter) it is their draw: rows b * H.. of
    their [B * H, max_q, max_k] philox grid. On the CPU route, a CPU generator seeded with seed + b.
    longest: _longest(bounds), for callers drawing every sequence's mask."""
    q0, q1, k0, k1 = bounds[b]
    if (seed.device.type == "cuda" or _INTERPRET) and _triton_available():
        from seqops.kernels.attention_dropout import attention_dropout_mask_rows

        max_q, max_k = longest or _longest(bounds)
        return attention_dropout_mask_rows(seed, b * heads, heads, q1 - q0, k1 - k0, max_q, max_k, dropout_p)
    gen = torch.Generator(device="cpu").manual_seed(int(seed.item()) + b)
    return (torch.rand((heads, q1 - q0, k1 - k0), generator=gen) >= dropout_p).to(seed.device)


def _uses_cpu_flash(q, v, dropout_p, is_causal, scale, dlse=None):
    return attention_cpu.backward_applies(_as_batch(q), _as_batch(v), None, dropout_p, is_causal, scale, dlse, False)


def forward(q, k, v, bounds, seed, scale, is_causal, dropout_p, differentiable=False):
    """-> out [Nq, H, Ev] in q.dtype, lse [H, Nq] in the lse dtype (-inf where a sequence has no keys).
    differentiable: always the reference, whose graph double backward differentiates."""
    H, EV = q.shape[1], v.shape[2]
    if not differentiable and _uses_cpu_flash(q, v, dropout_p, is_causal, scale):
        def attend(b, q4, k4, v4):
            return attention_cpu.forward(q4, k4, v4, None, scale, is_causal)
    else:
        longest = _longest(bounds) if bounds else None

        def attend(b, q4, k4, v4):
            keep_b = sequence_dropout_keep(seed, bounds, H, b, dropout_p, longest)[None] if dropout_p > 0 else None
            return reference_attention_with_lse(q4, k4, v4, None, dropout_p, is_causal, scale, enable_gqa=True,
                                                upcast=True, dropout_mask=keep_b)
    outs, lses = [], []
    for b, (q0, q1, k0, k1) in enumerate(bounds):
        if q1 == q0:
            continue
        if k1 == k0:  # no keys: every row fully masked
            outs.append(q.new_zeros((q1 - q0, H, EV)))
            lses.append(torch.full((H, q1 - q0), float("-inf"), dtype=_lse_dtype(q.dtype), device=q.device))
            continue
        out, lse = attend(b, _as_batch(q[q0:q1]), _as_batch(k[k0:k1]), _as_batch(v[k0:k1]))
        outs.append(out[0].transpose(0, 1).to(q.dtype))
        lses.append(lse[0].to(_lse_dtype(q.dtype)))
    if not outs:
        return q.new_empty((0, H, EV)), q.new_empty((H, 0), dtype=_lse_dtype(q.dtype))
    return torch.cat(outs, 0), torch.cat(lses, 1)


def backward(dout, dlse, q, k, v, bounds, seed, out, lse, scale, is_causal, dropout_p):
    """-> dq, dk, dv contiguous: the CPU flash backward, or the reference route's explicit formulas."""
    if _uses_cpu_flash(q, v, dropout_p, is_causal, scale, dlse):
        def grads(b, dout4, dlse3, q4, k4, v4, out4, lse3):
            return attention_cpu.backward(dout4, q4, k4, v4, None, out4, lse3, scale, is_causal)
    else:
        H, longest = q.shape[1], _longest(bounds) if bounds else None

        def grads(b, dout4, dlse3, q4, k4, v4, out4, lse3):
            keep_b = sequence_dropout_keep(seed, bounds, H, b, dropout_p, longest)[None] if dropout_p > 0 else None
            return reference_grads(dout4, dlse3, q4, k4, v4, None, keep_b, out4, lse3, scale, is_causal,
                                   dropout_p)[:3]
    dq, dk, dv = (torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    for b, (q0, q1, k0, k1) in enumerate(bounds):
        if q1 == q0 or k1 == k0:  # nothing attends: zero gradients
            continue
        dlse3 = dlse[:, q0:q1].unsqueeze(0) if dlse is not None else None
        found = grads(b, _as_batch(dout[q0:q1]), dlse3, _as_batch(q[q0:q1]), _as_batch(k[k0:k1]),
                      _as_batch(v[k0:k1]), _as_batch(out[q0:q1]), lse[:, q0:q1].unsqueeze(0))
        for grad, whole, lo, hi in zip(found, (dq, dk, dv), (q0, k0, k0), (q1, k1, k1)):
            whole[lo:hi] = grad[0].transpose(0, 1)
    return dq, dk, dv
