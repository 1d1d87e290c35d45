"""Attention dropout: drawn in-kernel from torch's RNG, reproducible, correctly scaled, same mask backward."""

import math

import pytest
import torch
from attention_checks import assert_close_fp32_grad, float64_oracle, make_qkv

from seqops.ops.attention import _draw_seed, attention, attention_dropout_mask

# Each test on CPU tensors and, on a GPU machine, again on CUDA tensors (conftest.each_device).
pytestmark = pytest.mark.usefixtures("each_device")


def test_reproducible_under_manual_seed_and_different_across_draws():
    q, k, v = make_qkv((1, 2, 20, 16), (1, 2, 24, 16), (1, 2, 24, 16), requires_grad=False)
    torch.manual_seed(7)
    first = attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(7)
    again = attention(q, k, v, dropout_p=0.3)
    different = attention(q, k, v, dropout_p=0.3)
    assert torch.equal(first, again)
    assert not torch.equal(first, different)


@pytest.mark.parametrize("is_causal,enable_gqa", [(False, False), (True, True)])
def test_matches_reference_with_the_materialised_mask_forward_and_grads(is_causal, enable_gqa):
    p = 0.25
    hkv = 2 if enable_gqa else 4
    q, k, v = make_qkv((2, 4, 21, 16), (2, hkv, 26, 16), (2, hkv, 26, 24))
    mask = torch.randn(21, 26, requires_grad=True) if not is_causal else None
    torch.manual_seed(11)
    out = attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal, enable_gqa=enable_gqa)
    torch.manual_seed(11)
    keep = attention_dropout_mask(_draw_seed(q.device), 2, 4, 21, 26, p)  # the op's one RNG draw, replayed
    grad_out = torch.randn_like(out)
    kwargs = dict(attn_mask=mask, dropout_p=p, is_causal=is_causal, enable_gqa=enable_gqa, dropout_mask=keep)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, **kwargs)
    torch.testing.assert_close(out, exact.float())
    wanted = [q, k, v] + ([mask] if mask is not None else [])
    for got, want in zip(torch.autograd.grad(out, wanted, grad_out), exact_grads):
        assert_close_fp32_grad(got, want)


def test_keep_fraction_and_expectation():
    p, B, H, L, S = 0.3, 2, 3, 64, 96
    keep = attention_dropout_mask(torch.tensor([1234], dtype=torch.int64), B, H, L, S, p)
    n = keep.numel()
    # Binomial(n, 1 - p): 5 standard deviations make a false failure essentially impossible.
    assert abs(keep.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # Different (head, row) positions draw different masks (no repeated stream).
    flat = keep.view(B * H * L, S)
    assert not torch.equal(flat[0], flat[1]) and not torch.equal(flat[0], flat[L])
    # With v = 1 everywhere, each output is sum_j keep_ij * P_ij / (1 - p): on average 1 (unbiased scaling).
    q = torch.randn(1, 4, 64, 16)
    k = torch.randn(1, 4, 96, 16)
    v = torch.ones(1, 4, 96, 1)
    out = attention(q, k, v, dropout_p=p)
    assert abs(out.mean().item() - 1.0) < 0.05  # std of the mean of 256 rows is about 0.02


def test_dropout_one_gives_zeros_and_zero_is_exact():
    q, k, v = make_qkv((1, 2, 9, 16), (1, 2, 11, 16), (1, 2, 11, 16), requires_grad=False)
    assert (attention(q, k, v, dropout_p=1.0) == 0).all()
    assert torch.equal(attention(q, k, v, dropout_p=0.0), attention(q, k, v))


def test_cpu_mask_drawn_in_blocks_is_the_one_draw(monkeypatch):
    # The CPU keep-mask is drawn a block of rows at a time (its float draws would cost 4x the mask): the same
    # mask as one draw of the whole [B, H, L, S], so it does not depend on the block size.
    import seqops.ops.attention as attention_module

    if attention_module._runs_kernels(torch.empty(1), torch.empty(1)):
        pytest.skip("the interpreter draws the kernels' philox mask instead")
    seed = torch.tensor([12345])
    monkeypatch.setattr(attention_module, "_MASK_BLOCK_ELEMENTS", 40)
    blocked = attention_dropout_mask(seed, 2, 3, 7, 11, 0.3)
    whole = torch.rand((2, 3, 7, 11), generator=torch.Generator().manual_seed(12345)) >= 0.3
    assert torch.equal(blocked, whole)
    assert attention_dropout_mask(seed, 2, 0, 7, 11, 0.3).shape == (2, 0, 7, 11)
