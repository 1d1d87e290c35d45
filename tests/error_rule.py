"""The FlashAttention error rule for fp16/bf16: our error against an fp32 (or fp64) reference is at most
twice PyTorch's own error in the same low precision, plus one unit of the dtype's rounding at the
reference's scale (so an exactly-rounded PyTorch result does not demand bit-equality from us)."""

import torch


def max_err(x, ref):
    return (x.double() - ref.double()).abs().max().item() if x.numel() else 0.0


def assert_error_rule(ours, pytorch_lowp, reference, name="output"):
    err = max_err(ours, reference)
    err_pt = max_err(pytorch_lowp, reference)
    ulp = torch.finfo(ours.dtype).eps * (reference.double().abs().max().item() if reference.numel() else 0.0)
    bound = 2 * err_pt + ulp
    assert err <= bound, (
        f"{name}: seqops error {err:.3e} exceeds 2x PyTorch's {err_pt:.3e} + 1 ulp {ulp:.3e} ({ours.dtype})"
    )
