"""Shared checks of the attention tests: inputs, the float64 oracle and the FlashAttention error rule."""

import torch

import seqops
from seqops import reference


def make_qkv(shape_q, shape_k, shape_v, dtype=torch.float32, device=None, requires_grad=True):
    # Random normal inputs (never zeros); scaled so softmax is neither flat nor one-hot. device None: the default
    # device (the attention test modules set it per test, see their `device` fixture).
    return [torch.randn(s, dtype=dtype, device=device).requires_grad_(requires_grad)
            for s in (shape_q, shape_k, shape_v)]


def float64_oracle(q, k, v, grad_out, **kwargs):
    """(out, grads) of the reference in float64 on detached copies of q, k, v (and a float mask if given)."""
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    mask = kwargs.pop("attn_mask", None)
    mask_leaf = None
    if mask is not None and mask.dtype != torch.bool:
        mask_leaf = mask.detach().double().requires_grad_(mask.requires_grad)
        mask = mask_leaf
    out = reference.attention(*leaves, attn_mask=mask, **kwargs)
    wanted = leaves + ([mask_leaf] if mask_leaf is not None and mask_leaf.requires_grad else [])
    grads = torch.autograd.grad(out, wanted, grad_out.double())
    return out, grads


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_flash_rule(ours, low_precision, exact, what):
    """FlashAttention's rule: our error vs the exact result is at most 2x that of PyTorch's own computation in
    the same low precision (the reference without upcasting)."""
    err, baseline = max_err(ours, exact), max_err(low_precision, exact)
    assert err <= 2 * baseline, f"{what}: error {err:.3e} > 2 x PyTorch's low-precision error {baseline:.3e}"


def assert_close_fp32_grad(got, want, name="grad"):
    """fp32 gradient vs its float64 value. Gradients are sums of L or S products whose fp32 rounding grows
    with their magnitude (up to ~20 with a sharp softmax), so the default atol (1e-5, meant for O(1) values)
    is scaled by that magnitude; rtol is the default. PyTorch's own fp32 SDPA shows the same errors on these
    inputs (measured: within 10% of ours)."""
    atol = 1e-5 * max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want.float(), atol=atol, rtol=1.3e-6, msg=lambda m: f"{name}: {m}")


def through_the_ops(q, k, v, **kwargs):
    """The attention output through seqops' custom ops on every device (seqops.attention on the CPU hands the
    cases SDPA runs on its own CPU flash kernel to SDPA; attention_with_lse never does)."""
    return seqops.attention_with_lse(q, k, v, **kwargs)[0]


def check_fp32(q, k, v, attend=seqops.attention, **kwargs):
    """fp32 attend (seqops.attention) against the float64 reference: default fp32 tolerances forward, every
    gradient (q, k, v, and a float mask that requires grad) by assert_close_fp32_grad. Returns the output."""
    mask = kwargs.get("attn_mask")
    out = attend(q, k, v, **kwargs)
    grad_out = torch.randn_like(out)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, **kwargs)
    torch.testing.assert_close(out, exact.float())
    wanted = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])
    grads = torch.autograd.grad(out, wanted, grad_out)
    for name, got, want in zip(("dq", "dk", "dv", "dmask"), grads, exact_grads):
        assert_close_fp32_grad(got, want, name)
    return out


# Packed sequences (seqops.attention_varlen): [rows, heads, dim] tensors and [B + 1] cumulative lengths.


def cumulative_lengths(lengths, device=None):
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)


def packed(lengths, heads, dim, dtype=torch.float32, device=None):
    # Random normal rows of sequences of the given lengths, back to back (never zeros).
    return torch.randn(sum(lengths), heads, dim, dtype=dtype, device=device).requires_grad_()


def per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, dtype=torch.float64, keep=None, **kwargs):
    """(out, grads of q, k, v) of the reference run sequence by sequence in `dtype` on detached copies; keep: the
    dropout keep-masks, [H, L_b, S_b] per sequence (or larger, sliced)."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = reference.attention_varlen(*leaves, cu_q, cu_k, dropout_masks=keep, **kwargs)
    return out, torch.autograd.grad(out, leaves, grad_out.to(dtype))
