"""Drop-in ``torch.nn.MultiheadAttention`` whose attention core is ``seqops.attention``.

It subclasses ``nn.MultiheadAttention``, so the constructor, parameter names (``in_proj_weight`` or
``q/k/v_proj_weight``, ``in_proj_bias``, ``bias_k``, ``bias_v``, ``out_proj``), initialisation and
state_dict are torch's own. Only ``forward`` changes: with ``need_weights=False`` the projections and masks
are prepared as ``F.multi_head_attention_forward`` prepares them and the attention runs in the fused
kernels, with heads split by strided views (no copies); with ``need_weights=True`` (torch's default) it is
torch's forward, since the weights are exactly the L x S matrix the fused kernel never forms.
"""

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqops.nn._shared_hooks import AdoptsSharedBackwardHooks
from seqops.ops.attention import attention

__all__ = ["MultiheadAttention"]


def _check_masks(key_padding_mask, attn_mask):
    """torch's mask dtype rules: bool or floating point, and a warning when the two masks' dtypes differ."""
    for name, mask in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if mask is not None and mask.dtype != torch.bool and not mask.dtype.is_floating_point:
            raise AssertionError(f"only bool and floating types of {name} are supported")
    if key_padding_mask is not None and attn_mask is not None and key_padding_mask.dtype != attn_mask.dtype:
        warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated. Use same type for "
                      "both instead.", stacklevel=3)


def _check_shapes(query, key, value, key_padding_mask, attn_mask, num_heads):
    """torch's shape rules (and exception types and messages) for MultiheadAttention inputs; returns
    is_batched."""
    if query.dim() not in (2, 3):
        raise AssertionError("query should be unbatched 2D or batched 3D tensor but received "
                             f"{query.dim()}-D query tensor")
    batched = query.dim() == 3
    kind = "For batched (3-D) `query`, expected" if batched else "For unbatched (2-D) `query`, expected"
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise AssertionError(f"{kind} `key` and `value` to be {query.dim()}-D but found {key.dim()}-D and "
                             f"{value.dim()}-D tensors respectively")
    if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
        raise AssertionError(f"{kind} `key_padding_mask` to be `None` or {query.dim() - 1}-D but found "
                             f"{key_padding_mask.dim()}-D tensor instead")
    if attn_mask is not None and attn_mask.dim() not in (2, 3):
        raise AssertionError(f"{kind} `attn_mask` to be `None`, 2-D or 3-D but found {attn_mask.dim()}-D "
                             "tensor instead")
    if not batched and attn_mask is not None and attn_mask.dim() == 3:
        expected = (num_heads, query.shape[0], key.shape[0])
        if attn_mask.shape != expected:
            raise AssertionError(f"Expected `attn_mask` shape to be {expected} but got {attn_mask.shape}")
    return batched


def _sequence_first(t, batched, batch_first):
    """t as torch's functional MHA sees it: [S, N, E] (unbatched [S, 1, E])."""
    if not batched:
        return t.unsqueeze(1)
    return t.transpose(0, 1) if batch_first else t


def _check_key_value(key, value, separate_weights):
    """torch's rule for key and value (given sequence-first, [S, N, E] or [S, E], as torch words it)."""
    if separate_weights:
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"key's sequence and batch dims {key.shape[:2]} do not match value's "
                                 f"{value.shape[:2]}")
    elif key.shape != value.shape:
        raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")


def _as_additive(mask, dtype):
    # torch's canonical form: a bool mask (True = masked out) becomes 0 / -inf in the query dtype.
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))


class MultiheadAttention(AdoptsSharedBackwardHooks, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with the attention core in seqops' fused flash-attention kernels.

    Same signature, parameters, state_dict and results. ``need_weights=True`` (the torch default) returns
    torch's result and weights; pass ``need_weights=False`` for the fused path.
    """

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if need_weights or any(t.is_nested for t in (query, key, value)):
            # The weights are the L x S matrix the fused kernel never forms; nested tensors take torch's
            # fast path (or its error).
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights, is_causal=is_causal)
        _check_masks(key_padding_mask, attn_mask)
        batched = _check_shapes(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                               "module method `generate_square_subsequent_mask` to create this mask.")
        if query.shape[-1] != self.embed_dim:
            raise AssertionError(f"was expecting embedding dimension of {self.embed_dim}, but got "
                                 f"{query.shape[-1]}")
        _check_key_value(*(_sequence_first(t, batched, self.batch_first) for t in (key, value)),
                         not self._qkv_same_embed_dim)

        self_attention = query is key and key is value  # before the views below make three tensors of one
        # Work batch-first, [N, L, E]: transposes here are views, and the heads are split by views below.
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, E = query.shape
        if key.shape[0] != N:  # torch fails reshaping the key's heads here, with a RuntimeError
            raise RuntimeError(f"MultiheadAttention: key has batch size {key.shape[0]}, query {N}")
        S = key.shape[1]
        H, hd = self.num_heads, self.head_dim

        q, k, v = self._project(query, key, value, self_attention)
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
        if batched and not self.batch_first:
            # torch returns [L, N, E] contiguous here (code views it): project from [L, N, E] rows, one copy of
            # the attention output, E times smaller than the projection
            out = F.linear(out.permute(2, 0, 1, 3).reshape(L, N, E), self.out_proj.weight, self.out_proj.bias)
            return out, None
        out = F.linear(out.transpose(1, 2).reshape(N, L, E), self.out_proj.weight, self.out_proj.bias)
        return (out if batched else out.squeeze(0)), None

    def _project(self, query, key, value, self_attention):
        w, b = self.in_proj_weight, self.in_proj_bias
        E = self.embed_dim
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        if self._qkv_same_embed_dim:
            if self_attention:  # one GEMM for all three projections, as torch's
                return F.linear(query, w, b).chunk(3, dim=-1)
            wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            for name, w, t in (("key", wk, key), ("value", wv, value)):  # torch's check, word for word
                if w.shape != (E, t.shape[-1]):
                    raise AssertionError(f"expecting {name} weights shape of {(E, t.shape[-1])}, but got "
                                         f"{w.shape}")
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _sdpa_mask(self, attn_mask, key_padding_mask, is_causal, N, L, S, extra_keys, dtype):
        """(mask for seqops.attention, broadcastable to [N, H, L, S + extra], is_causal) as torch combines
        them."""
        if is_causal and key_padding_mask is None:
            return None, True  # torch drops the explicit mask and uses SDPA's causal flag here
        if attn_mask is not None:
            expected = (L, S) if attn_mask.dim() == 2 else (N * self.num_heads, L, S)
            if tuple(attn_mask.shape) != expected:
                raise RuntimeError(f"The shape of the {attn_mask.dim()}D attn_mask is {attn_mask.shape}, but "
                                   f"should be {expected}.")
            attn_mask = attn_mask.view(-1, self.num_heads, L, S) if attn_mask.dim() == 3 else attn_mask
        if key_padding_mask is not None:
            # torch's words and numbers (it checks after padding the mask for bias_k and the zero key)
            if key_padding_mask.shape[0] != N:
                raise AssertionError(f"Expected key_padded_mask.shape[0] to be {N}, but got "
                                     f"{key_padding_mask.shape[0]}")
            if key_padding_mask.shape[1] != S:
                raise AssertionError(f"Expected key_padded_mask.shape[1] to be {S + extra_keys}, but got "
                                     f"{key_padding_mask.shape[1] + extra_keys}")
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
