"""The CPU path of seqops' attention ops (no GPU, no Triton interpreter): PyTorch's own CPU flash-attention
kernels (the ones SDPA picks on the CPU) wherever they compute the same function, the reference elsewhere.

The reference materialises the [B, H, L, S] scores in fp32: in the benchmark results at 79273e1 (B=2, H=4,
L=S=128-1024, D=64, fp32, 2-core AMD EPYC) it was 2.2-5.7x slower than SDPA's CPU flash kernel forward and
1.3-5.7x backward, so a laptop user swapping SDPA for seqops.attention lost that. What the CPU kernel cannot
take stays on the reference: dropout (seqops draws its own reproducible keep-mask), a value head dim other than
the query's, float64 (the exact oracle of gradcheck), a float mask of another dtype than the query's, a gradient
for the mask or for the lse.

Two conventions differ and are mapped here: the kernel takes masks as an additive float in the query dtype (a
bool mask is converted once, on its compact, un-broadcast shape), and it reports lse 0 for a fully masked row
where seqops reports -inf (its backward wants its own convention back).
"""

import torch

from seqops.ops.attention_layout import in_layout

# Private ATen ops (torch >= 2.2): where a build lacks them, every call takes the reference.
_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_backward = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
CPU_FLASH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def causal_scale_applies(is_causal, scale):
    # The CPU flash kernel scales its causal -inf by the softmax scale: 0 * -inf is NaN, and a negative scale
    # turns it into +inf (torch 2.14; SDPA's default shares the bug where it picks that kernel).
    return not is_causal or scale is None or scale > 0


def applies(q, v, mask, dropout_p, is_causal, scale):
    """q [B, H, L, E], v [B, Hkv, S, Ev], mask [B, H, L, S] view or None."""
    return (
        _flash is not None
        and _flash_backward is not None
        and q.device.type == "cpu"
        and q.dtype in CPU_FLASH_DTYPES
        and dropout_p == 0.0
        and q.shape[-1] == v.shape[-1]
        and (mask is None or mask.dtype in (torch.bool, q.dtype))
        and causal_scale_applies(is_causal, scale)
    )


def backward_applies(q, v, mask, dropout_p, is_causal, scale, dlse, need_dmask):
    return applies(q, v, mask, dropout_p, is_causal, scale) and dlse is None and not need_dmask


def _compact(mask):
    # The stored values under a broadcast view: every stride-0 dim narrowed to 1 ([1, 1, L, S] for a mask
    # shared by batch and heads), so a conversion touches no more than the caller's own tensor.
    for dim in range(mask.dim()):
        if mask.stride(dim) == 0 and mask.shape[dim] > 1:
            mask = mask.narrow(dim, 0, 1)
    return mask


def _additive(mask, dtype):
    # -> the float mask in dtype, broadcast back to the view's shape, or None
    if mask is None:
        return None
    compact = _compact(mask)
    if mask.dtype == torch.bool:
        compact = torch.zeros(compact.shape, dtype=dtype).masked_fill_(~compact, float("-inf"))
    return compact.expand(mask.shape)


def _blocked_rows(mask):
    # -> [b, h, L] True where a row of the compact mask admits no key
    compact = _compact(mask)
    return ~compact.any(-1) if mask.dtype == torch.bool else torch.isneginf(compact).all(-1)


def _unit_last_stride(t):
    # The kernel reads rows as contiguous vectors: a tensor whose last dim is strided (a transposed or
    # channels-last view) gives wrong values, NaN or out-of-range reads. SDPA's dispatcher checks this before
    # choosing the kernel; called directly it is ours to check.
    return t if t.stride(-1) == 1 else t.contiguous()


def _repeat_heads(t, group):
    # GQA: the kernel wants as many key/value heads as query heads
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def forward(q, k, v, mask, scale, is_causal):
    """-> out [B, H, L, Ev] in q's layout (q.dtype), lse [B, H, L] fp32, natural log, -inf for a fully masked
    row."""
    group = q.shape[1] // k.shape[1]
    like_q = q
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    out, lse = _flash(q, _repeat_heads(k, group), _repeat_heads(v, group), 0.0, is_causal,
                      attn_mask=_additive(mask, q.dtype), scale=scale)
    if mask is not None:
        lse = lse.masked_fill(_blocked_rows(mask).expand(lse.shape), float("-inf"))
    return in_layout(out, like_q), lse.float().contiguous()


def backward(dout, q, k, v, mask, out, lse, scale, is_causal):
    """-> dq [B, H, L, E], dk [B, Hkv, S, E], dv [B, Hkv, S, Ev], each in its input's dtype and layout."""
    Hkv = k.shape[1]
    group = q.shape[1] // Hkv
    like = (q, k, v)
    dout, q, k, v, out = (_unit_last_stride(t) for t in (dout, q, k, v, out))
    lse_kernel = lse.masked_fill(torch.isneginf(lse), 0.0)  # the kernel's convention for fully masked rows
    dq, dk, dv = _flash_backward(dout, q, _repeat_heads(k, group), _repeat_heads(v, group), out, lse_kernel, 0.0,
                                 is_causal, attn_mask=_additive(mask, q.dtype), scale=scale)
    if group > 1:  # each key/value head served `group` query heads
        dk = dk.unflatten(1, (Hkv, group)).sum(2)
        dv = dv.unflatten(1, (Hkv, group)).sum(2)
    return tuple(in_layout(grad, x) for grad, x in zip((dq, dk, dv), like))  # what the op's fake declares
