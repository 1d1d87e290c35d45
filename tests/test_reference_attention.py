"""seqops.reference.attention against F.scaled_dot_product_attention (CPU, fast): the oracle must be right."""

import pytest
import torch
import torch.nn.functional as F

from seqops import reference


def _qkv(B, Hq, Hkv, L, S, E, Ev, dtype=torch.float64):
    return (torch.randn(B, Hq, L, E, dtype=dtype, requires_grad=True),
            torch.randn(B, Hkv, S, E, dtype=dtype, requires_grad=True),
            torch.randn(B, Hkv, S, Ev, dtype=dtype, requires_grad=True))


CASES = [
    dict(),
    dict(is_causal=True),
    dict(scale=0.3),
    dict(enable_gqa=True),
    dict(mask="bool"),
    dict(mask="float"),
    dict(mask="bool", scale=1.7),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
@pytest.mark.parametrize("L,S", [(1, 1), (7, 13), (13, 7)])
def test_reference_matches_sdpa_forward_and_grads(case, L, S):
    case = dict(case)
    hkv = 2 if case.get("enable_gqa") else 4
    q, k, v = _qkv(2, 4, hkv, L, S, 8, 5)
    kind = case.pop("mask", None)
    mask = None
    if kind == "bool":
        mask = torch.rand(2, 1, L, S) > 0.3
    elif kind == "float":
        mask = torch.randn(L, S, dtype=torch.float64)
    ours = reference.attention(q, k, v, attn_mask=mask, **case)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **case)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_reference_lse_is_logsumexp_of_scaled_masked_scores():
    q, k, v = _qkv(1, 2, 2, 6, 9, 4, 4)
    mask = torch.rand(6, 9) > 0.4
    mask[2] = False  # a fully masked row
    _, lse = reference.attention_with_lse(q, k, v, attn_mask=mask, scale=0.5)
    scores = (q @ k.transpose(-2, -1) * 0.5).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))
    assert torch.isneginf(lse[..., 2]).all()


def test_reference_fully_masked_rows_give_zeros_like_sdpa():
    q, k, v = _qkv(1, 2, 2, 4, 5, 3, 3)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False
    out = reference.attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert (out[..., 1, :] == 0).all()
    grads = torch.autograd.grad(out.sum(), (q,))
    assert (grads[0][..., 1, :] == 0).all()


def test_reference_explicit_dropout_mask_scales_kept_weights():
    q, k, v = _qkv(1, 1, 1, 3, 4, 2, 2)
    keep = torch.rand(3, 4) > 0.5
    out = reference.attention(q, k, v, dropout_p=0.5, dropout_mask=keep)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2**0.5, -1)
    torch.testing.assert_close(out, (weights * keep / 0.5) @ v)


def test_reference_upcast_computes_in_float32_and_returns_input_dtype():
    q, k, v = (t.detach().half() for t in _qkv(1, 2, 2, 5, 6, 8, 8))
    out = reference.attention(q, k, v, upcast=True)
    assert out.dtype == torch.float16
    exact = reference.attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out, exact.half())  # one rounding of the fp32 result


@pytest.mark.parametrize("kwargs", [dict(), dict(is_causal=True), dict(enable_gqa=True, scale=0.4)], ids=str)
def test_varlen_reference_is_sdpa_on_each_sequence(kwargs):
    # Lengths with an empty query sequence, an empty key sequence and L != S in both directions.
    lengths_q, lengths_k = [5, 0, 9, 3, 4], [7, 3, 4, 0, 4]
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()])
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()])
    hkv = 2 if kwargs.get("enable_gqa") else 4
    q = torch.randn(sum(lengths_q), 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(sum(lengths_k), hkv, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(sum(lengths_k), hkv, 6, dtype=torch.float64, requires_grad=True)
    out, lse = reference.attention_varlen_with_lse(q, k, v, cu_q, cu_k, **kwargs)
    assert out.shape == (q.shape[0], 4, 6) and lse.shape == (4, q.shape[0])
    torch.testing.assert_close(reference.attention_varlen(q, k, v, cu_q, cu_k, **kwargs), out)
    for b in range(len(lengths_q)):
        rows, keys = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        qb, kb, vb = q[rows].transpose(0, 1), k[keys].transpose(0, 1), v[keys].transpose(0, 1)
        if lengths_k[b] == 0:  # no key: zeros and lse -inf (SDPA's safe softmax)
            assert (out[rows] == 0).all() and torch.isneginf(lse[:, rows]).all()
            continue
        theirs = F.scaled_dot_product_attention(qb, kb, vb, **kwargs)
        torch.testing.assert_close(out[rows], theirs.transpose(0, 1))
        scale = kwargs.get("scale", 8 ** -0.5)
        group = 4 // hkv
        scores = qb @ kb.repeat_interleave(group, 0).transpose(-2, -1) * scale
        if kwargs.get("is_causal"):
            scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), float("-inf"))
        torch.testing.assert_close(lse[:, rows], scores.logsumexp(-1))
    grad = torch.randn_like(out)
    assert all(g is not None for g in torch.autograd.grad(out, (q, k, v), grad))


def test_varlen_reference_without_sequences():
    q, k, v = torch.randn(0, 2, 8), torch.randn(0, 2, 8), torch.randn(0, 2, 4)
    out, lse = reference.attention_varlen_with_lse(q, k, v, torch.tensor([0]), torch.tensor([0]))
    assert out.shape == (0, 2, 4) and lse.shape == (2, 0)
