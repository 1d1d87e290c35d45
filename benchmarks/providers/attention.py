"""Attention: seqops.attention against SDPA with each backend, FlexAttention (compiled) and the reference.
q, k, v: [B, heads, L or S, D], contiguous; causal means SDPA's upper-left aligned mask."""

import re
import warnings

import torch
import torch.nn.functional as F

from benchmarks.providers.base import (
    Provider,
    Unavailable,
    Unsupported,
    allow_recompiles,
    mode_fn,
    random_tensor,
    reference_fn,
    require_device,
    seqops_attr,
)


def qkv(case, device):
    dt = case.torch_dtype
    q = random_tensor((case.B, case.heads, case.L, case.D), device, dt)
    k = random_tensor((case.B, case.heads, case.S, case.D), device, dt)
    v = random_tensor((case.B, case.heads, case.S, case.D), device, dt)
    return q, k, v


def sdpa_like_setup(get_fn):
    """A provider with F.scaled_dot_product_attention's signature."""

    def setup(case, device):
        fn = get_fn()
        q, k, v = qkv(case, device)
        return mode_fn(case.mode, lambda: fn(q, k, v, is_causal=case.causal), [q, k, v])

    return setup


def sdpa_backend_setup(backend_name, cuda_only, half_only):
    def setup(case, device):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if cuda_only:
            require_device(device, "cuda")
        if half_only and torch.device(device).type == "cuda" and case.dtype == "fp32":
            raise Unsupported(f"SDPA {backend_name} takes fp16/bf16 only on CUDA")
        backend = getattr(SDPBackend, backend_name)
        q, k, v = qkv(case, device)

        def forward():
            # the backend is chosen at the forward call; the backward follows the forward's choice
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal)

        refuse_with_reasons(forward, f"SDPA {backend_name}")
        return mode_fn(case.mode, forward, [q, k, v])

    return setup


def refusal_reasons(messages):
    """SDPA's warnings when a forced backend refuses a call ('Flash attention kernel not used because:', then
    one warning per reason), as one line of reasons."""
    reasons = []
    for message in messages:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\s*$", "", str(message)).strip()
        if text and not text.endswith("not used because:"):
            reasons.append(text)
    return "; ".join(dict.fromkeys(reasons))


def refuse_with_reasons(forward, name):
    """Calls forward once: where the forced backend refuses the case, its row says why ('unsupported: SDPA
    FLASH_ATTENTION refuses this case: ...'), not only SDPA's 'No available kernel'."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            forward()
        except RuntimeError as err:
            reasons = refusal_reasons(w.message for w in caught)
            if not reasons:
                raise
            raise Unsupported(f"{name} refuses this case: {reasons}") from err


def causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def flex_setup(case, device):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        raise Unavailable(f"no FlexAttention in torch {torch.__version__}") from err
    q, k, v = qkv(case, device)
    if torch.device(device).type == "cpu":
        if case.mode != "fwd":
            raise Unsupported("FlexAttention has no backward on the CPU")
        for t in (q, k, v):  # and its CPU forward refuses inputs that require grad
            t.requires_grad_(False)
    block_mask = None
    if case.causal:
        block_mask = create_block_mask(causal_mask, None, None, case.L, case.S, device=str(device))
    allow_recompiles()
    compiled = torch.compile(flex_attention, dynamic=False)  # static kernels per shape: flex at its best
    return mode_fn(case.mode, lambda: compiled(q, k, v, block_mask=block_mask), [q, k, v])


ATTENTION_PROVIDERS = (
    Provider("seqops", "attn", sdpa_like_setup(lambda: seqops_attr("attention")),
             description="seqops.attention"),
    Provider("sdpa-flash", "attn", sdpa_backend_setup("FLASH_ATTENTION", cuda_only=False, half_only=True),
             description="SDPA, FlashAttention backend (on CPU: its CPU flash kernel)"),
    Provider("sdpa-efficient", "attn",
             sdpa_backend_setup("EFFICIENT_ATTENTION", cuda_only=True, half_only=False),
             devices=("cuda",), description="SDPA, memory-efficient backend"),
    Provider("sdpa-cudnn", "attn", sdpa_backend_setup("CUDNN_ATTENTION", cuda_only=True, half_only=True),
             devices=("cuda",), description="SDPA, cuDNN backend"),
    Provider("sdpa-math", "attn", sdpa_backend_setup("MATH", cuda_only=False, half_only=False),
             description="SDPA, math backend"),
    Provider("flex", "attn", flex_setup, compiles=True, description="torch.compile(flex_attention)"),
    Provider("reference", "attn",
             sdpa_like_setup(lambda: reference_fn("attention", "scaled_dot_product_attention", "sdpa")),
             description="seqops.reference attention"),
)
