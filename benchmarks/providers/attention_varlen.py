"""Attention over a batch of sequences of different lengths (cases.varlen_lengths, self-attention): seqops on the
packed rows against SDPA on jagged nested tensors and against both on the batch padded to its longest sequence
(a key-padding mask; the padded query rows computed and thrown away), which is what a model does without varlen.
Every provider gets the same sequences; the FLOPs count only the real tokens."""

import torch
import torch.nn.functional as F

from benchmarks.cases import varlen_lengths
from benchmarks.providers.base import Provider, Unavailable, Unsupported, mode_fn, random_tensor, seqops_attr


def packed_qkv(case, device):
    # [N, H, D] each, N the total length, and the [B + 1] cumulative lengths
    lengths = varlen_lengths(case.B, case.L)
    rows = sum(lengths)
    q, k, v = (random_tensor((rows, case.heads, case.D), device, case.torch_dtype) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return q, k, v, cu, lengths


def seqops_varlen_setup(case, device):
    attention_varlen = seqops_attr("attention_varlen")
    q, k, v, cu, _ = packed_qkv(case, device)
    return mode_fn(case.mode, lambda: attention_varlen(q, k, v, cu, cu, is_causal=case.causal), [q, k, v])


def sdpa_nested_setup(case, device):
    if case.causal and torch.device(device).type == "cpu":
        raise Unsupported("SDPA's CPU path for nested tensors (math) has no causal mode")
    q, k, v, cu, _ = packed_qkv(case, device)
    offsets = cu.long()
    try:
        nested = [torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, k, v)]
    except (AttributeError, RuntimeError) as err:
        raise Unavailable(f"no jagged nested tensors in torch {torch.__version__}: {err}") from err

    def forward():  # the packed values: what the next layer reads (and a plain tensor for the finite check)
        return F.scaled_dot_product_attention(*nested, is_causal=case.causal).values()

    return mode_fn(case.mode, forward, [q, k, v])


def padded_setup(attend_fn):
    def setup(case, device):
        attend = attend_fn()
        lengths = varlen_lengths(case.B, case.L)
        q, k, v = (random_tensor((case.B, case.heads, case.L, case.D), device, case.torch_dtype) for _ in range(3))
        positions = torch.arange(case.L, device=device)
        keys = positions[None, :] < torch.tensor(lengths, device=device)[:, None]  # [B, L] real keys
        mask = keys[:, None, None, :]  # [B, 1, 1, L]
        if case.causal:  # SDPA takes a mask or is_causal, not both
            mask = mask & torch.ones(case.L, case.L, dtype=torch.bool, device=device).tril()
        return mode_fn(case.mode, lambda: attend(q, k, v, attn_mask=mask), [q, k, v])

    return setup


VARLEN_PROVIDERS = (
    Provider("seqops", "varlen", seqops_varlen_setup, description="seqops.attention_varlen on the packed rows"),
    Provider("sdpa-nested", "varlen", sdpa_nested_setup,
             description="SDPA on jagged nested tensors (CUDA: its flash kernel; CPU: math, no causal)"),
    Provider("seqops-padded", "varlen", padded_setup(lambda: seqops_attr("attention")),
             description="seqops.attention on the batch padded to its longest sequence, key-padding mask"),
    Provider("sdpa-padded", "varlen", padded_setup(lambda: F.scaled_dot_product_attention),
             description="SDPA (its default backend) on the padded batch, key-padding mask"),
)
