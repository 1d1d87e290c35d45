"""Every tile shape the GPU configurations can pick, run in the Triton interpreter.

The kernels' block loops, causal splits, GQA loop and bounds tests all depend on (BLOCK_M, BLOCK_N), and the
rest of the suite runs the interpreter at one small tile per kernel. So each tile of the sm90 and default
configuration lists runs here on CPU tensors, one kernel at a time: a tile-dependent bug shows up before a GPU
session, where test_attention_gpu.py runs the same configurations compiled. Pipeline stages and warps do not
change what a kernel computes, so the interpreter checks all there is to check of a configuration's logic.
"""

import pytest
import torch
from attention_checks import assert_close_fp32_grad, check_fp32, float64_oracle, make_qkv
from seqops.kernels import attention_common as ac

import seqops
from seqops.ops.attention import _draw_seed, attention_dropout_mask

pytestmark = pytest.mark.skipif(not ac.INTERPRETING, reason="CPU tensors run the Triton kernels only when "
                                "TRITON_INTERPRET=1 (on a GPU machine test_attention_gpu.py covers the tiles)")


def _tiles(*config_lists):
    return sorted({(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for configs in config_lists for c in configs})


GPU_TILES = {
    "fwd": _tiles(ac.FWD_CONFIGS_SM90, ac.FWD_CONFIGS_DEFAULT),
    "dkdv": _tiles(ac.DKDV_CONFIGS_SM90, ac.DKDV_CONFIGS_DEFAULT),
    "dq": _tiles(ac.DQ_CONFIGS_SM90, ac.DQ_CONFIGS_DEFAULT),
}
SM90_TILES = {
    "fwd": _tiles(ac.FWD_CONFIGS_SM90), "dkdv": _tiles(ac.DKDV_CONFIGS_SM90), "dq": _tiles(ac.DQ_CONFIGS_SM90),
}
CASES = [(kernel, tile) for kernel, tiles in GPU_TILES.items() for tile in tiles]
SM90_CASES = [(kernel, tile) for kernel, tiles in SM90_TILES.items() for tile in tiles]


def _ids(cases):
    return [f"{kernel}-{m}x{n}" for kernel, (m, n) in cases]


def _power_of_two_at_least_16(n):
    return n >= 16 and n & (n - 1) == 0


def test_gpu_tiles_meet_the_kernels_requirements():
    for kernel, tiles in GPU_TILES.items():
        for m, n in tiles:
            assert _power_of_two_at_least_16(m) and _power_of_two_at_least_16(n), (kernel, m, n)  # tl.dot, arange
            if kernel != "dkdv":  # the causal split of forward and dQ falls on a boundary of both tiles
                assert m % n == 0, (kernel, m, n)
    assert set(GPU_TILES) == set(ac.INTERPRET_TILES)


def test_a_tile_the_causal_split_cannot_take_is_refused(monkeypatch):
    monkeypatch.setitem(ac.INTERPRET_TILES, "fwd", (16, 32))
    q, k, v = make_qkv((1, 1, 40, 16), (1, 1, 40, 16), (1, 1, 40, 16), requires_grad=False)
    with pytest.raises(Exception, match="BLOCK_M must be a multiple of BLOCK_N"):
        seqops.attention(q, k, v, is_causal=True)


def _largest_tiles_elsewhere(monkeypatch):
    # The kernels not under test run their largest GPU tile: fewer, larger interpreter programs are faster.
    for kernel, tiles in GPU_TILES.items():
        monkeypatch.setitem(ac.INTERPRET_TILES, kernel, max(tiles, key=lambda t: t[0] * t[1]))


def _check_dropout(q, k, v, p, **kwargs):
    # The op's one RNG draw replayed into the materialised keep-mask, which the float64 reference then applies.
    torch.manual_seed(5)
    out = seqops.attention(q, k, v, dropout_p=p, **kwargs)
    torch.manual_seed(5)
    B, H, L, _ = q.shape
    keep = attention_dropout_mask(_draw_seed(q.device), B, H, L, k.shape[2], p)
    grad_out = torch.randn_like(out)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, dropout_p=p, dropout_mask=keep, **kwargs)
    torch.testing.assert_close(out, exact.float())
    for name, got, want in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad_out), exact_grads):
        assert_close_fp32_grad(got, want, name)


@pytest.mark.parametrize("kernel,tile", CASES, ids=_ids(CASES))
def test_each_gpu_tile_forward_and_every_gradient(monkeypatch, kernel, tile):
    _largest_tiles_elsewhere(monkeypatch)
    monkeypatch.setitem(ac.INTERPRET_TILES, kernel, tile)
    m, n = tile
    # A whole tile and a partial one of the larger side; causal tiles on, across and past the diagonal.
    L, S = max(m, n) + 21, max(m, n) - 9
    # Causal with L > S and L < S, GQA, a padded head dim (40 -> 64) and a value head dim of its own.
    q, k, v = make_qkv((1, 4, L, 40), (1, 2, S, 40), (1, 2, S, 24))
    check_fp32(q, k, v, is_causal=True, enable_gqa=True)
    check_fp32(q[:, :, : S // 2], k, v, is_causal=True, enable_gqa=True)
    # A key-padding mask broadcast over heads and query rows; a float mask that takes a gradient (the dQ
    # kernel's dmask stores).
    q, k, v = make_qkv((2, 2, L, 32), (2, 2, S, 32), (2, 2, S, 32))
    lengths = torch.tensor([S, S // 3])
    padding = (torch.arange(S) < lengths[:, None]).view(2, 1, 1, S)
    check_fp32(q, k, v, attn_mask=padding)
    check_fp32(q, k, v, attn_mask=torch.randn(L, S, requires_grad=True))
    _check_dropout(q, k, v, 0.2, is_causal=True)


@pytest.mark.parametrize("kernel,tile", SM90_CASES, ids=_ids(SM90_CASES))
def test_each_sm90_tile_through_tensor_descriptors(monkeypatch, kernel, tile):
    # On sm90 the streamed tiles come through TMA descriptors, whose block shapes are these tiles.
    _largest_tiles_elsewhere(monkeypatch)
    monkeypatch.setitem(ac.INTERPRET_TILES, kernel, tile)
    monkeypatch.setattr(ac, "TMA_IN_INTERPRETER", True)
    m, n = tile
    L = S = max(m, n) + 37
    q, k, v = make_qkv((1, 2, L, 64), (1, 1, S, 64), (1, 1, S, 64))
    assert ac.tma_eligible(q, k, v)
    check_fp32(q, k, v, is_causal=True, enable_gqa=True)
