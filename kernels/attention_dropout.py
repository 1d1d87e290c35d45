"""Materialises the attention dropout keep-mask that the kernels draw in-register, for tests and debugging."""

import torch
import triton
import triton.language as tl

from .attention_common import device_guard, dropout_keep, tile_and_head


# Seed: [1] int64 -> Keep: [BH, L, S] bool (as uint8) contiguous.  grid: (cdiv(L, BLOCK_M) * BH,)
@triton.jit
def attention_dropout_mask_kernel(Seed, Keep, L, S, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    m_tile, bh = tile_and_head(tl.cdiv(L, BLOCK_M), False)
    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    seed = tl.load(Seed)
    for start_n in range(0, S, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], L, S, dropout_p)
        tl.store(Keep + (bh.to(tl.int64) * L + offs_m[:, None]) * S + offs_n[None, :], keep.to(tl.uint8),
                 mask=(offs_m[:, None] < L) & (offs_n[None, :] < S))


# seed: [1] int64 -> [B, H, L, S] bool: True where the kernels keep (and rescale) a probability.
def attention_dropout_mask(seed, B, H, L, S, dropout_p):
    keep = torch.empty((B, H, L, S), device=seed.device, dtype=torch.uint8)
    if keep.numel():
        grid = (triton.cdiv(L, 32) * B * H,)
        with device_guard(seed.device):
            attention_dropout_mask_kernel[grid](seed, keep, L, S, dropout_p, BLOCK_M=32, BLOCK_N=32)
    return keep.view(torch.bool)


__all__ = ["attention_dropout_mask"]
