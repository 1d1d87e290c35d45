"""Flash-attention forward: one program owns BLOCK_M query rows of one (batch, head); K/V tiles stream past.

Online softmax in fp32 in the log2 domain (scores pre-multiplied by scale * log2(e), so exp2 is the
exponential); no L x S matrix is ever written. Blocks above the causal diagonal are never visited. The
natural-log log-sum-exp of every row is written for the backward (and for attention_with_lse).
"""

import torch
import triton
import triton.language as tl

from seqops.ops.attention_layout import empty_in_layout

from .attention_common import (
    AUTOTUNE_KEY,
    FWD_CONFIGS_DEFAULT,
    FWD_CONFIGS_SM90,
    INTERPRET_TILES,
    INTERPRETING,
    LN2_K,
    LOG2E,
    SMEM_DEFAULT,
    SMEM_SM90,
    apply_score_masks,
    dot_precision,
    dropout_keep,
    is_sm90,
    launch_with_optional_tma,
    length_bucket,
    load_tile,
    lse_row_start,
    mask_args,
    mask_kind,
    next_pow2_at_least_16,
    packed_as_heads,
    packed_rows_within_int32,
    padded_head_dims,
    prune_by_shared_memory,
    sequence_rows,
    tile_and_head,
    within_int32_rows,
)


@triton.jit
def _fwd_key_blocks(
    acc, m_i, l_i, q, K_head, V_head, Mask_head, seed, bh,
    offs_m, offs_d, offs_dv, lo, hi,
    skn, skd, svn, svd, smm, smn, L, S, DL, DS, E, EV, qk_scale, dropout_p,
    MASK_KIND: tl.constexpr, ON_DIAGONAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr, PAD_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # acc: [BLOCK_M, BLOCK_DV] fp32; m_i, l_i: [BLOCK_M] running max (log2 units) and running sum.
    # K_head, V_head: pointers to this head's keys and values, or (USE_TMA) tensor descriptors of them.
    # CHECK_BOUNDS: some key of [lo, hi) may lie past S; PAD_D: the head dims are padded up to the tile.
    # L, S: this sequence's lengths; DL, DS: the dropout grid's (the longest, for packed sequences).
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_keys = offs_n < S
        if USE_TMA:  # rows past S and columns past E come back as zeros
            kt = tl.trans(K_head.load([start_n, 0]))
        else:
            kt = load_tile(K_head + offs_n[None, :] * skn + offs_d[:, None] * skd,
                           in_keys[None, :], offs_d[:, None] < E, CHECK_BOUNDS, PAD_D)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale                       # [BLOCK_M, BLOCK_N]
        s = apply_score_masks(s, offs_m[:, None], offs_n[None, :], Mask_head, smm, smn, L, S,
                              MASK_KIND, ON_DIAGONAL, CHECK_BOUNDS)

        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with no finite score yet keeps m = -inf; shifting by 0 instead avoids (-inf) - (-inf) = NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        p = tl.exp2(s - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if HAS_DROPOUT:
            # The normaliser l_i counts every probability; only the value sum sees the dropped ones.
            p = tl.where(dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], DL, DS, dropout_p), p, 0.0)
        if USE_TMA:
            v = V_head.load([start_n, 0])
        else:
            v = load_tile(V_head + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                          in_keys[:, None], offs_dv[None, :] < EV, CHECK_BOUNDS, PAD_D)  # [BLOCK_N, BLOCK_DV]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


# Q: [B, H, L, E], K: [B, Hkv, S, E], V: [B, Hkv, S, EV], Mask: [B, H, L, S] (any strides, 0 where it
# broadcasts), Seed: [1] int64 -> Out: [B, H, L, EV] (any strides), Lse: [B, H, L] fp32 contiguous.
# VARLEN (packed sequences): Q, K, V, Out are [1, H, N, D] views of packed rows and sequence b owns rows
# CuQ[b]..CuQ[b+1] (keys CuK[b]..CuK[b+1]); L, S are then the longest lengths, Lse is [H, Nq] (LSE_ROW = Nq).
# grid: (cdiv(L, BLOCK_M) * B * H,); query head h reads key/value head h // GROUP.
@triton.jit
def attention_fwd_kernel(
    Q, K, V, Mask, Seed, Out, Lse, CuQ, CuK,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    smb, smh, smm, smn, sob, soh, som, sod, LSE_ROW,
    H, GROUP, L, S, E, EV, L_BUCKET, S_BUCKET, qk_scale, dropout_p, drop_scale,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr, PAD_D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # The causal split falls on a query-tile boundary, which must also be a key-tile boundary.
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "BLOCK_M must be a multiple of BLOCK_N")
    m_tile, bh = tile_and_head(tl.cdiv(L, BLOCK_M), IS_CAUSAL)
    start_m = m_tile * BLOCK_M
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    off_hkv = off_h // GROUP
    q_row0, Lq, k_row0, Sk = sequence_rows(CuQ, CuK, off_b, L, S, VARLEN)
    if VARLEN:
        if start_m >= Lq:  # a tile past this sequence's end
            return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)

    q = tl.load(Q + off_b * sqb + off_h * sqh + (q_row0 + offs_m[:, None]) * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < Lq) & (offs_d[None, :] < E), other=0.0)         # [BLOCK_M, BLOCK_D]
    K_head = K + off_b * skb + off_hkv * skh + k_row0 * skn
    V_head = V + off_b * svb + off_hkv * svh + k_row0 * svn
    if USE_TMA:
        # Hopper: the streamed K/V tiles arrive by TMA (async bulk copies that the software pipeline overlaps
        # with the MMAs, no address arithmetic in registers); the launcher checks the 16-byte alignment rules.
        K_head = tl.make_tensor_descriptor(K_head, shape=[Sk, E], strides=[skn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        V_head = tl.make_tensor_descriptor(V_head, shape=[Sk, EV], strides=[svn, 1],
                                           block_shape=[BLOCK_N, BLOCK_DV])
    Mask_head = Mask + off_b * smb + off_h * smh
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(Seed)

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Key tiles in two runs: whole tiles that need no test (no key past S, none above the diagonal), then
    # the rest with the tests. Causal is upper-left aligned (row i sees keys j <= i): tiles before start_m
    # are entirely visible (BLOCK_M is a multiple of BLOCK_N), [start_m, start_m + BLOCK_M) straddles the
    # diagonal, and later tiles are skipped.
    whole = (Sk // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        split = tl.minimum(tl.minimum(start_m, Sk), whole)
        hi = tl.minimum(start_m + BLOCK_M, Sk)
    else:
        split = whole
        hi = Sk
    acc, m_i, l_i = _fwd_key_blocks(
        acc, m_i, l_i, q, K_head, V_head, Mask_head, seed, bh, offs_m, offs_d, offs_dv, 0, split,
        skn, skd, svn, svd, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p,
        MASK_KIND, False, False, HAS_DROPOUT, PRECISION, USE_TMA, PAD_D, BLOCK_N)
    acc, m_i, l_i = _fwd_key_blocks(
        acc, m_i, l_i, q, K_head, V_head, Mask_head, seed, bh, offs_m, offs_d, offs_dv, split, hi,
        skn, skd, svn, svd, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p,
        MASK_KIND, IS_CAUSAL, True, HAS_DROPOUT, PRECISION, USE_TMA, PAD_D, BLOCK_N)

    # A fully masked row (l = 0) outputs zeros, as SDPA's safe softmax does; its lse is -inf.
    has_mass = l_i != 0.0  # (not `> 0`: a NaN row must stay NaN, as in PyTorch)
    l_safe = tl.where(has_mass, l_i, 1.0)
    inv_l = tl.where(has_mass, 1.0 / l_safe, 0.0)
    if HAS_DROPOUT:
        inv_l = inv_l * drop_scale
    out = acc * inv_l[:, None]
    in_rows = offs_m < Lq
    # 64-bit rows (one store, no cost in the loop): out keeps the caller's layout, whose rows can lie 2^31
    # elements apart where q's copy (within_int32_rows) does not.
    rows = q_row0 + offs_m.to(tl.int64)
    tl.store(Out + off_b * sob + off_h * soh + rows[:, None] * som + offs_dv[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=in_rows[:, None] & (offs_dv[None, :] < EV))
    lse = tl.where(has_mass, (m_i + tl.log2(l_safe)) * LN2_K, float("-inf"))
    tl.store(Lse + lse_row_start(bh, off_h, q_row0, L, LSE_ROW, VARLEN) + offs_m, lse, mask=in_rows)


_fwd_sm90 = triton.autotune(
    FWD_CONFIGS_SM90,
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_by_shared_memory(SMEM_SM90)},
)(attention_fwd_kernel)
_fwd_default = triton.autotune(
    FWD_CONFIGS_DEFAULT,
    key=AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": prune_by_shared_memory(SMEM_DEFAULT)},
)(attention_fwd_kernel)


# q: [B, H, L, E], k: [B, Hkv, S, E], v: [B, Hkv, S, EV], mask: None or [B, H, L, S] (bool or float view),
# seed: [1] int64 on q's device (used when dropout_p > 0)
# -> (out [B, H, L, EV] in q.dtype and q's layout (seqops/ops/attention_layout.py), lse [B, H, L] fp32)
def attention_forward(q, k, v, mask, scale, is_causal, dropout_p, seed):
    out = empty_in_layout(q, (*q.shape[:3], v.shape[3]))  # the layout of the caller's q
    q, k, v = (within_int32_rows(t) for t in (q, k, v))
    B, H, L, _ = q.shape
    lse = torch.empty((B, H, L), device=q.device, dtype=torch.float32)
    if B * H * L == 0:
        return out, lse
    _launch(q, k, v, mask, seed, out, lse, None, B, L, k.shape[2], scale, is_causal, dropout_p)
    return out, lse


# Packed sequences. q: [Nq, H, E], k: [Nk, Hkv, E], v: [Nk, Hkv, EV]; cu_q, cu_k: [B + 1] cumulative lengths
# (sequence b: query rows cu_q[b]..cu_q[b+1], keys cu_k[b]..cu_k[b+1]); max_q, max_k: the longest lengths
# -> (out [Nq, H, EV] contiguous in q.dtype, lse [H, Nq] fp32)
def attention_varlen_forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, is_causal, dropout_p, seed):
    out = q.new_empty((q.shape[0], q.shape[1], v.shape[2]))
    q = packed_rows_within_int32(q, max_q)
    k, v = (packed_rows_within_int32(t, max_k) for t in (k, v))
    lse = torch.empty((q.shape[1], q.shape[0]), device=q.device, dtype=torch.float32)
    B = cu_q.shape[0] - 1
    if B * q.shape[1] * max_q == 0:
        return out, lse
    q4, k4, v4, out4 = (packed_as_heads(t) for t in (q, k, v, out))
    cu = (cu_q.contiguous(), cu_k.contiguous())  # the kernels read them with unit stride
    _launch(q4, k4, v4, None, seed, out4, lse, cu, B, max_q, max_k, scale, is_causal, dropout_p)
    return out, lse


def _launch(q, k, v, mask, seed, out, lse, cu, B, L, S, scale, is_causal, dropout_p):
    # q, k, v, out: [B | 1, heads, rows, dim]; cu: None (dense) or (cu_q, cu_k); L, S: (longest) lengths
    H, E = q.shape[1], q.shape[3]
    Hkv, EV = k.shape[1], v.shape[3]
    mask_ptr, mask_strides = mask_args(mask, q)
    has_dropout = dropout_p > 0.0
    seed_ptr = seed if has_dropout else q
    cu_q, cu_k = cu if cu is not None else (q, q)
    args = (
        q, k, v, mask_ptr, seed_ptr, out, lse, cu_q, cu_k,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(), lse.shape[-1],
        H, H // Hkv, L, S, E, EV, length_bucket(L), length_bucket(S), scale * LOG2E, dropout_p,
        0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p),
    )
    meta = dict(
        MASK_KIND=mask_kind(mask, L, S), IS_CAUSAL=bool(is_causal), HAS_DROPOUT=has_dropout, VARLEN=cu is not None,
        PRECISION=dot_precision(q.dtype), PAD_D=padded_head_dims(E, EV),
        BLOCK_D=next_pow2_at_least_16(E), BLOCK_DV=next_pow2_at_least_16(EV),
    )
    if INTERPRETING or q.device.type != "cuda":
        block_m, block_n = INTERPRET_TILES["fwd"]
        launch_with_optional_tma(attention_fwd_kernel[(triton.cdiv(L, block_m) * B * H,)], args,
                                 dict(meta, BLOCK_M=block_m, BLOCK_N=block_n), (k, v))
    else:
        kernel = _fwd_sm90 if is_sm90(q.device) else _fwd_default
        grid = lambda cfg: (triton.cdiv(L, cfg["BLOCK_M"]) * B * H,)  # noqa: E731
        launch_with_optional_tma(kernel[grid], args, meta, (k, v))


__all__ = ["attention_forward", "attention_fwd_kernel", "attention_varlen_forward"]
