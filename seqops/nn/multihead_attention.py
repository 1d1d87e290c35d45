"""Drop-in ``torch.nn.MultiheadAttention`` whose attention core is ``seqops.attention``.

It subclasses ``nn.MultiheadAttention``, so the constructor, parameter names (``in_proj_weight`` or
``q/k/v_proj_weight``, ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj``), initialisation and
state_dict are torch's own. Only ``forward`` changes: with ``need_weights=False`` the projections and masks
are prepared as ``F.multi_head_attention_forward`` prepares them and the attention runs in the fused
kernels, with heads split by strided views (no copies); with ``need_weights=True`` (torch's default) it is
torch's forward, since the weights are exactly the L x S matrix the fused kernel never forms.
"""

import torch
import torch.nn.functional as F
from torch import nn

from seqops.ops.attention import attention

__all__ = ["MultiheadAttention"]


def _check_shapes(query, key, value, key_padding_mask, attn_mask, num_heads):
    """torch's shape rules (and exception types) for MultiheadAttention inputs; returns is_batched."""
    if query.dim() not in (2, 3):
        raise AssertionError("query should be unbatched 2D or batched 3D tensor but received "
                             f"{query.dim()}-D query tensor")
    batched = query.dim() == 3
    if key.dim() != query.dim() or value.dim() != query.dim():
        kind = "batched (3-D)" if batched else "unbatched (2-D)"
        raise AssertionError(f"For {kind} `query`, expected `key` and `value` to be {query.dim()}-D but "
                             f"found {key.dim()}-D and {value.dim()}-D tensors respectively")
    if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
        raise AssertionError(f"expected `key_padding_mask` to be `None` or {query.dim() - 1}-D but found "
                             f"{key_padding_mask.dim()}-D tensor instead")
    if attn_mask is not None and attn_mask.dim() not in (2, 3):
        raise AssertionError("expected `attn_mask` to be `None`, 2-D or 3-D but found "
                             f"{attn_mask.dim()}-D tensor instead")
    return batched


def _as_additive(mask, dtype):
    # torch's canonical form: a bool mask (True = masked out) becomes 0 / -inf in the query dtype.
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with the attention core in seqops' fused flash-attention kernels.

    Same signature, parameters, state_dict and results. ``need_weights=True`` (the torch default) returns
    torch's result and weights; pass ``need_weights=False`` for the fused path.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=True,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if mask is not None and mask.dtype != torch.bool and not mask.dtype.is_floating_point:
                raise AssertionError(f"only bool and floating types of {name} are supported")
        batched = _check_shapes(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                               "module method `generate_square_subsequent_mask` to create this mask.")

        # Work batch-first, [N, L, E]: transposes here are views, and the heads are split by views below.
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, E = query.shape
        if E != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got {E}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != N:
            raise AssertionError(f"key's batch and sequence dims {tuple(key.shape[:2])} do not match value's "
                                 f"{tuple(value.shape[:2])} or query's batch {N}")
        S = key.shape[1]
        H, hd = self.num_heads, self.head_dim

        q, k, v = self._project(query, key, value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(N, 1, E)], dim=1)
            v = torch.cat([v, self.bias_v.expand(N, 1, E)], dim=1)
        q = q.view(N, L, H, hd).transpose(1, 2)
        k = k.view(N, k.shape[1], H, hd).transpose(1, 2)
        v = v.view(N, v.shape[1], H, hd).transpose(1, 2)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, H, 1, hd)], dim=2)
            v = torch.cat([v, v.new_zeros(N, H, 1, hd)], dim=2)
        extra_keys = k.shape[2] - S  # bias_k and the zero key are never masked

        mask, causal = self._sdpa_mask(attn_mask, key_padding_mask, is_causal, N, L, S, extra_keys,
                                       query.dtype)
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)  # [N, H, L, hd]
        out = F.linear(out.transpose(1, 2).reshape(N, L, E), self.out_proj.weight, self.out_proj.bias)
        if not batched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _project(self, query, key, value):
        w, b = self.in_proj_weight, self.in_proj_bias
        E = self.embed_dim
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        if self._qkv_same_embed_dim:
            if query is key and key is value:  # self-attention: one GEMM for all three projections
                return F.linear(query, w, b).chunk(3, dim=-1)
            wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _sdpa_mask(self, attn_mask, key_padding_mask, is_causal, N, L, S, extra_keys, dtype):
        """(mask for seqops.attention, broadcastable to [N, H, L, S + extra], is_causal) as torch combines
        them."""
        if is_causal and key_padding_mask is None:
            return None, True  # torch drops the explicit mask and uses SDPA's causal flag here
        if attn_mask is not None:
            expected = (L, S) if attn_mask.dim() == 2 else (N * self.num_heads, L, S)
            if tuple(attn_mask.shape) != expected:
                raise RuntimeError(f"The shape of the {attn_mask.dim()}D attn_mask is "
                                   f"{tuple(attn_mask.shape)}, but should be {expected}.")
            attn_mask = attn_mask.view(-1, self.num_heads, L, S) if attn_mask.dim() == 3 else attn_mask
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (N, S):
                raise AssertionError(f"expecting key_padding_mask shape of {(N, S)}, but got "
                                     f"{tuple(key_padding_mask.shape)}")
            key_padding_mask = key_padding_mask.view(N, 1, 1, S)
        masks = [m for m in (attn_mask, key_padding_mask) if m is not None]
        if not masks:
            return None, False
        if all(m.dtype == torch.bool for m in masks):
            # Boolean masks stay boolean (1 byte, True = take part for SDPA), combined by broadcasting.
            keep = ~masks[0] if len(masks) == 1 else ~masks[0] & ~masks[1]
            return (F.pad(keep, (0, extra_keys), value=True) if extra_keys else keep), False
        additive = _as_additive(masks[0], dtype)
        if len(masks) == 2:
            additive = additive + _as_additive(masks[1], dtype)
        return (F.pad(additive, (0, extra_keys)) if extra_keys else additive), False
