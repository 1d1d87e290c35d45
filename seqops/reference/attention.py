"""Pure-PyTorch scaled dot-product attention: the oracle of seqops.attention and of its tests.

Same semantics as ``F.scaled_dot_product_attention``: shapes ``(..., L, E)``, ``(..., S, E)``,
``(..., S, Ev)`` with broadcasting leading dims; upper-left aligned ``is_causal``; a boolean mask means
True = take part, a float mask is added to the scores; fully masked rows give zeros (as SDPA's safe
softmax does) and zero gradients. It materialises the L x S score matrix, so it is for tests and small
shapes.
"""

import math

import torch

__all__ = ["attention", "attention_with_lse"]


def _upcast_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention_with_lse(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    upcast=False,
    dropout_mask=None,
):
    """Returns ``(out, lse)``; ``lse[..., i]`` is the natural log-sum-exp of row i of the scaled, masked
    scores (``-inf`` for a fully masked row).

    ``dropout_mask``: an optional boolean keep-mask broadcastable to ``(..., Hq, L, S)``; when given it
    replaces the random draw, so tests can compare a kernel's dropout exactly. ``upcast=True`` computes
    low-precision inputs in float32 (float64 stays float64) and casts the output back to the input dtype;
    the lse stays in the compute dtype.
    """
    out_dtype = query.dtype
    if upcast:
        ctype = _upcast_dtype(query.dtype)
        query, key, value = query.to(ctype), key.to(ctype), value.to(ctype)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(ctype)
    L, S = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        group = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(group, dim=-3)
        value = value.repeat_interleave(group, dim=-3)

    scores = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)

    lse = torch.logsumexp(scores, dim=-1)
    # Safe softmax: a row with no finite score has no mass, so it contributes zeros (and zero gradients).
    if scores.shape[-1] == 0:  # no keys at all: every row is fully masked
        row_max = scores.new_zeros(*scores.shape[:-1], 1)
    else:
        row_max = scores.amax(dim=-1, keepdim=True).detach()  # the shift cancels; no gradient through it
    row_max = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(denom == 0, torch.ones_like(denom), denom)

    if dropout_mask is not None:
        kept = weights * dropout_mask  # a bool factor: no float copy of the [..., L, S] mask
        weights = kept / (1.0 - dropout_p) if dropout_p < 1.0 else kept * 0
    elif dropout_p > 0.0:
        weights = torch.nn.functional.dropout(weights, p=dropout_p, training=True)
    out = weights @ value
    return out.to(out_dtype), lse


def attention(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    upcast=False,
    dropout_mask=None,
):
    """``F.scaled_dot_product_attention`` in plain PyTorch; see :func:`attention_with_lse` for the extras."""
    out, _ = attention_with_lse(
        query,
        key,
        value,
        attn_mask,
        dropout_p,
        is_causal,
        scale,
        enable_gqa,
        upcast=upcast,
        dropout_mask=dropout_mask,
    )
    return out
