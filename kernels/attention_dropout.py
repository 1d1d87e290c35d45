"""Materialises the attention dropout keep-mask that the kernels draw in-register, for tests, debugging and the
reference routes."""

import torch
import triton
import triton.language as tl

from .attention_common import device_guard, dropout_keep, tile_and_head


# Seed: [1] int64 -> Keep: [heads, rows, cols] bool (as uint8) contiguous: head rows BH0.. of the kernels'
# [*, L, S] position grid, its first `rows` x `cols` corner.  grid: (cdiv(rows, BLOCK_M) * heads,)
@triton.jit
def attention_dropout_mask_kernel(Seed, Keep, BH0, rows, cols, L, S, dropout_p, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr):
    m_tile, h = tile_and_head(tl.cdiv(rows, BLOCK_M), False)
    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    seed = tl.load(Seed)
    for start_n in range(0, cols, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = dropout_keep(seed, BH0 + h, offs_m[:, None], offs_n[None, :], L, S, dropout_p)
        tl.store(Keep + (h.to(tl.int64) * rows + offs_m[:, None]) * cols + offs_n[None, :], keep.to(tl.uint8),
                 mask=(offs_m[:, None] < rows) & (offs_n[None, :] < cols))


# seed: [1] int64 -> [heads, rows, cols] bool: head rows bh0..bh0+heads of the [*, L, S] grid the kernels draw
# from (a packed sequence's corner of it), True where they keep (and rescale) a probability.
def attention_dropout_mask_rows(seed, bh0, heads, rows, cols, L, S, dropout_p):
    keep = torch.empty((heads, rows, cols), device=seed.device, dtype=torch.uint8)
    if keep.numel():
        grid = (triton.cdiv(rows, 32) * heads,)
        with device_guard(seed.device):
            attention_dropout_mask_kernel[grid](seed, keep, bh0, rows, cols, L, S, dropout_p, BLOCK_M=32, BLOCK_N=32)
    return keep.view(torch.bool)


# seed: [1] int64 -> [B, H, L, S] bool: True where the kernels keep (and rescale) a probability.
def attention_dropout_mask(seed, B, H, L, S, dropout_p):
    return attention_dropout_mask_rows(seed, 0, B * H, L, S, L, S, dropout_p).view(B, H, L, S)


__all__ = ["attention_dropout_mask", "attention_dropout_mask_rows"]
