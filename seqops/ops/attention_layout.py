"""The memory layout of the attention ops' outputs: each takes the layout of the input it belongs to.

A [B, H, L, D] tensor comes in one of two layouts here: contiguous (each head's rows together), or heads
interleaved in each row ([B, L, H, D] in memory, seen through a transpose): the layout of heads split from a
projection by ``.view(B, L, H, D).transpose(1, 2)``, and the one FlashAttention and PyTorch's CPU flash kernel
compute in. ``out`` and ``dq`` take q's layout, ``dk`` k's, ``dv`` v's. So a caller that split its heads by
views merges them by views (MultiheadAttention's ``out.transpose(1, 2).reshape(N, L, E)``), and the gradients
flow back through those views with no copy; contiguous inputs get contiguous outputs, as before.

The rule reads only shapes and strides, so the fake kernels compute the same strides as the real ones (which
opcheck and torch.compile hold them to).
"""

import torch


def heads_interleaved(t):
    """t: [B, H, L, D]. True where heads are interleaved in each row (0 < head stride < row stride)."""
    _, H, L, _ = t.shape
    return H > 1 and L > 1 and 0 < t.stride(1) < t.stride(2)


def layout_strides(like, shape):
    """The strides of a dense tensor of shape [B, H, L, D] in like's layout."""
    B, H, L, D = shape
    if heads_interleaved(like):
        return (L * H * D, D, H * D, 1)
    return (H * L * D, L * D, D, 1)


def empty_in_layout(like, shape, dtype=None):
    """An uninitialised [B, H, L, D] tensor of shape on like's device, in like's layout."""
    return torch.empty_strided(shape, layout_strides(like, shape), dtype=dtype or like.dtype, device=like.device)


def in_layout(t, like):
    """t [B, H, L, D] in like's layout, exactly those strides: t itself when it has them, else a copy."""
    strides = layout_strides(like, t.shape)
    if t.stride() == strides:
        return t
    return empty_in_layout(like, t.shape, t.dtype).copy_(t)
