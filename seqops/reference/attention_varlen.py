"""Pure-PyTorch attention over packed variable-length sequences: the oracle of seqops.attention_varlen.

q [Nq, H, E], k [Nk, Hkv, E], v [Nk, Hkv, Ev]: sequence b's queries are rows cu_seqlens_q[b]..cu_seqlens_q[b+1]
and its keys rows cu_seqlens_k[b]..cu_seqlens_k[b+1]. Each sequence is reference.attention on its own rows, so
is_causal is upper-left per sequence and a sequence without keys gives zeros. A Python loop over the sequences:
for tests and small shapes.
"""

import torch

from seqops.reference.attention import attention_with_lse

__all__ = ["attention_varlen", "attention_varlen_with_lse"]


def attention_varlen_with_lse(query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p=0.0, is_causal=False, *,
                              scale=None, enable_gqa=False, upcast=False, dropout_masks=None):
    """Returns ``(out [Nq, H, Ev], lse [H, Nq])``. ``dropout_masks``: optional boolean keep-masks, one per
    sequence, ``[H, L_b, S_b]`` or larger (the corner is used), replacing the random draw."""
    cu_q, cu_k = torch.as_tensor(cu_seqlens_q).tolist(), torch.as_tensor(cu_seqlens_k).tolist()
    outs, lses = [], []
    for b, (q0, q1, k0, k1) in enumerate(zip(cu_q, cu_q[1:], cu_k, cu_k[1:])):
        qb, kb, vb = (t[lo:hi].transpose(0, 1) for t, lo, hi in zip((query, key, value), (q0, k0, k0), (q1, k1, k1)))
        keep = dropout_masks[b][:, : q1 - q0, : k1 - k0] if dropout_masks is not None else None
        out, lse = attention_with_lse(qb, kb, vb, None, dropout_p, is_causal, scale, enable_gqa, upcast=upcast,
                                      dropout_mask=keep)
        outs.append(out.transpose(0, 1))
        lses.append(lse)
    if not outs:  # no sequence
        lse_dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
        return (query.new_empty(0, query.shape[1], value.shape[-1]),
                query.new_empty(query.shape[1], 0, dtype=lse_dtype if upcast else query.dtype))
    return torch.cat(outs, 0), torch.cat(lses, -1)


def attention_varlen(query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p=0.0, is_causal=False, *, scale=None,
                     enable_gqa=False, upcast=False, dropout_masks=None):
    """``seqops.attention_varlen`` in plain PyTorch; see :func:`attention_varlen_with_lse`."""
    return attention_varlen_with_lse(query, key, value, cu_seqlens_q, cu_seqlens_k, dropout_p, is_causal,
                                     scale=scale, enable_gqa=enable_gqa, upcast=upcast, dropout_masks=dropout_masks)[0]
