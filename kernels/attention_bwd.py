"""Flash-attention backward, deterministic (no atomics), in three passes:

1. delta = rowsum(dO * O), one program per BLOCK_M rows;
2. dK, dV with a BLOCK_N key tile stationary: query tiles of every query head of its GQA group stream past, so
   each dK/dV element is summed by exactly one program in a fixed order;
3. dQ with a BLOCK_M query tile stationary and key tiles streaming (and, when the float mask needs a gradient,
   the score gradient dS written out, each element once).
Probabilities are recomputed from the saved lse; dropout regenerates the forward's keep-mask from the seed.
"""

import torch
import triton
import triton.language as tl

from seqops.ops.attention_layout import empty_in_layout

from .attention_common import (
    AUTOTUNE_KEY,
    DKDV_CONFIGS_DEFAULT,
    DKDV_CONFIGS_SM90,
    DQ_CONFIGS_DEFAULT,
    DQ_CONFIGS_SM90,
    INTERPRET_TILES,
    INTERPRETING,
    LOG2E,
    SMEM_DEFAULT,
    SMEM_SM90,
    apply_score_masks,
    backward_shift,
    device_guard,
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


# O, dO: [B, H, L, EV] (any strides) -> Delta: [B, H, L] fp32 contiguous.  grid: (cdiv(L, BLOCK_M) * B * H,)
@triton.jit
def attention_bwd_delta_kernel(
    O, DO, Delta, sob, soh, som, sod, sdob, sdoh, sdom, sdod, H, L, EV,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    m_tile, bh = tile_and_head(tl.cdiv(L, BLOCK_M), False)
    off_b = (bh // H).to(tl.int64)
    off_h = (bh % H).to(tl.int64)
    offs_m = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    inside = (offs_m[:, None] < L) & (offs_dv[None, :] < EV)
    # 64-bit rows (a memory-bound pass, registers to spare): packed sequences run it over all their rows at once.
    rows = offs_m.to(tl.int64)[:, None]
    o = tl.load(O + off_b * sob + off_h * soh + rows * som + offs_dv[None, :] * sod, mask=inside, other=0.0)
    do = tl.load(DO + off_b * sdob + off_h * sdoh + rows * sdom + offs_dv[None, :] * sdod, mask=inside, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + bh.to(tl.int64) * L + offs_m, delta, mask=offs_m < L)


@triton.jit
def _dkdv_query_blocks(
    dk, dv, k, v, Q_head, DO_head, Lse_head, Delta_head, Mask_head, seed, bh,
    offs_n, offs_d, offs_dv, lo, hi,
    sqm, sqd, sdom, sdod, smm, smn, L, S, DL, DS, E, EV, qk_scale, dropout_p, drop_scale,
    MASK_KIND: tl.constexpr, ON_DIAGONAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr, PAD_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # dk: [BLOCK_N, BLOCK_D], dv: [BLOCK_N, BLOCK_DV] fp32 accumulators; k, v: the stationary key tile.
    # Q_head, DO_head: pointers to this query head's rows, or (USE_TMA) tensor descriptors of them.
    # CHECK_BOUNDS: some row of [lo, hi) may lie past L; PAD_D: the head dims are padded up to the tile.
    # L, S: this sequence's lengths; DL, DS: the dropout grid's (the longest, for packed sequences).
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_rows = offs_m < L
        if USE_TMA:  # rows past L and columns past E / EV come back as zeros
            qt = tl.trans(Q_head.load([start_m, 0]))
            do = DO_head.load([start_m, 0])
        else:
            # qt: [BLOCK_D, BLOCK_M], do: [BLOCK_M, BLOCK_DV]
            qt = load_tile(Q_head + offs_m[None, :] * sqm + offs_d[:, None] * sqd,
                           in_rows[None, :], offs_d[:, None] < E, CHECK_BOUNDS, PAD_D)
            do = load_tile(DO_head + offs_m[:, None] * sdom + offs_dv[None, :] * sdod,
                           in_rows[:, None], offs_dv[None, :] < EV, CHECK_BOUNDS, PAD_D)
        lse2 = backward_shift(tl.load(Lse_head + offs_m, mask=in_rows, other=0.0))
        delta = tl.load(Delta_head + offs_m, mask=in_rows, other=0.0)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale                      # [BLOCK_N, BLOCK_M]
        st = apply_score_masks(st, offs_m[None, :], offs_n[:, None], Mask_head, smm, smn, L, S,
                               MASK_KIND, ON_DIAGONAL, CHECK_BOUNDS)
        pt = tl.exp2(st - lse2[None, :])
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)                       # [BLOCK_N, BLOCK_M]
        if HAS_DROPOUT:
            keep_t = dropout_keep(seed, bh, offs_m[None, :], offs_n[:, None], DL, DS, dropout_p)
            pt_dropped = tl.where(keep_t, pt * drop_scale, 0.0)
            dpt = tl.where(keep_t, dpt * drop_scale, 0.0)
        else:
            pt_dropped = pt
        dv = tl.dot(pt_dropped.to(do.dtype), do, dv, input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
    return dk, dv


# Q, DO: [B, H, L, E|EV], K, V: [B, Hkv, S, E|EV], Mask: [B, H, L, S] view, Lse, Delta: [B, H, L] fp32
# contiguous -> DK: [B, Hkv, S, E], DV: [B, Hkv, S, EV], unit last stride.  grid: (cdiv(S, BLOCK_N) * B * Hkv,)
# VARLEN: as in the forward, [1, heads, N, D] views of packed rows, sequence b owning query rows CuQ[b]..CuQ[b+1]
# and keys CuK[b]..CuK[b+1]; L, S the longest lengths; Lse, Delta [H, Nq] (LSE_ROW = Nq).
@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, Mask, Seed, DO, Lse, Delta, DK, DV, CuQ, CuK,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    smb, smh, smm, smn, sdob, sdoh, sdom, sdod, LSE_ROW, sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
    H, GROUP, L, S, E, EV, L_BUCKET, S_BUCKET, qk_scale, sm_scale, dropout_p, drop_scale,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, USE_TMA: tl.constexpr, PAD_D: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Causal: the first key tiles see the most query rows, and the natural order already launches them first.
    n_tile, bhkv = tile_and_head(tl.cdiv(S, BLOCK_N), False)
    start_n = n_tile * BLOCK_N
    Hkv = H // GROUP
    off_b = (bhkv // Hkv).to(tl.int64)
    off_hkv = (bhkv % Hkv).to(tl.int64)
    q_row0, Lq, k_row0, Sk = sequence_rows(CuQ, CuK, off_b, L, S, VARLEN)
    if VARLEN:
        if start_n >= Sk:  # a tile past this sequence's keys: those rows are the next sequence's
            return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    in_keys = offs_n < Sk
    k_rows = k_row0 + offs_n
    k = tl.load(K + off_b * skb + off_hkv * skh + k_rows[:, None] * skn + offs_d[None, :] * skd,
                mask=in_keys[:, None] & (offs_d[None, :] < E), other=0.0)               # [BLOCK_N, BLOCK_D]
    v = tl.load(V + off_b * svb + off_hkv * svh + k_rows[:, None] * svn + offs_dv[None, :] * svd,
                mask=in_keys[:, None] & (offs_dv[None, :] < EV), other=0.0)             # [BLOCK_N, BLOCK_DV]
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(Seed)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    for g in range(0, GROUP):
        off_h = off_hkv * GROUP + g
        bh = off_b * H + off_h
        Q_head = Q + off_b * sqb + off_h * sqh + q_row0 * sqm
        DO_head = DO + off_b * sdob + off_h * sdoh + q_row0 * sdom
        if USE_TMA:
            Q_head = tl.make_tensor_descriptor(Q_head, shape=[Lq, E], strides=[sqm, 1],
                                               block_shape=[BLOCK_M, BLOCK_D])
            DO_head = tl.make_tensor_descriptor(DO_head, shape=[Lq, EV], strides=[sdom, 1],
                                                block_shape=[BLOCK_M, BLOCK_DV])
        first_row = lse_row_start(bh, off_h, q_row0, L, LSE_ROW, VARLEN)
        Lse_head = Lse + first_row
        Delta_head = Delta + first_row
        Mask_head = Mask + off_b * smb + off_h * smh
        # Query tiles in up to three runs: (causal) the tiles straddling the diagonal, with every test; the
        # whole tiles after them, with none; the last partial tile, with the bounds test.
        whole = (Lq // BLOCK_M) * BLOCK_M
        if IS_CAUSAL:
            # Rows i < start_n see none of these keys. Query tiles that start before start_n + BLOCK_N
            # straddle the diagonal; the ones after see every key of the tile.
            lo = (start_n // BLOCK_M) * BLOCK_M
            diag_end = tl.minimum(lo + tl.cdiv(start_n + BLOCK_N - lo, BLOCK_M) * BLOCK_M, Lq)
            dk, dv = _dkdv_query_blocks(
                dk, dv, k, v, Q_head, DO_head, Lse_head, Delta_head, Mask_head, seed, bh,
                offs_n, offs_d, offs_dv, lo, diag_end,
                sqm, sqd, sdom, sdod, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p, drop_scale,
                MASK_KIND, True, True, HAS_DROPOUT, PRECISION, USE_TMA, PAD_D, BLOCK_M)
            start = diag_end
        else:
            start = 0
        split = tl.maximum(start, whole)
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, Q_head, DO_head, Lse_head, Delta_head, Mask_head, seed, bh,
            offs_n, offs_d, offs_dv, start, split,
            sqm, sqd, sdom, sdod, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p, drop_scale,
            MASK_KIND, False, False, HAS_DROPOUT, PRECISION, USE_TMA, PAD_D, BLOCK_M)
        dk, dv = _dkdv_query_blocks(
            dk, dv, k, v, Q_head, DO_head, Lse_head, Delta_head, Mask_head, seed, bh,
            offs_n, offs_d, offs_dv, split, Lq,
            sqm, sqd, sdom, sdod, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p, drop_scale,
            MASK_KIND, False, True, HAS_DROPOUT, PRECISION, USE_TMA, PAD_D, BLOCK_M)

    # 64-bit row offsets: a gradient laid out [B, S, Hkv, E] (heads interleaved) spans S * Hkv * E per head.
    rows = (k_row0 + offs_n.to(tl.int64))[:, None]
    tl.store(DK + off_b * sdkb + off_hkv * sdkh + rows * sdkn + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=in_keys[:, None] & (offs_d[None, :] < E))
    tl.store(DV + off_b * sdvb + off_hkv * sdvh + rows * sdvn + offs_dv[None, :],
             dv.to(DV.dtype.element_ty), mask=in_keys[:, None] & (offs_dv[None, :] < EV))


@triton.jit
def _dq_key_blocks(
    dq, q, do, lse2, delta, K_head, V_head, Mask_head, DMask_row, seed, bh,
    offs_m, offs_d, offs_dv, lo, hi,
    skn, skd, svn, svd, smm, smn, L, S, DL, DS, E, EV, qk_scale, dropout_p, drop_scale,
    MASK_KIND: tl.constexpr, ON_DIAGONAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    HAS_DMASK: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr, PAD_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # dq: [BLOCK_M, BLOCK_D] fp32 accumulator for the stationary query tile q.
    # K_head, V_head: pointers to this head's keys and values, or (USE_TMA) tensor descriptors of them.
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        in_keys = offs_n < S
        if USE_TMA:
            kt = tl.trans(K_head.load([start_n, 0]))
            vt = tl.trans(V_head.load([start_n, 0]))
        else:
            # kt: [BLOCK_D, BLOCK_N], vt: [BLOCK_DV, BLOCK_N]
            kt = load_tile(K_head + offs_n[None, :] * skn + offs_d[:, None] * skd,
                           in_keys[None, :], offs_d[:, None] < E, CHECK_BOUNDS, PAD_D)
            vt = load_tile(V_head + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                           in_keys[None, :], offs_dv[:, None] < EV, CHECK_BOUNDS, PAD_D)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale                       # [BLOCK_M, BLOCK_N]
        s = apply_score_masks(s, offs_m[:, None], offs_n[None, :], Mask_head, smm, smn, L, S,
                              MASK_KIND, ON_DIAGONAL, CHECK_BOUNDS)
        p = tl.exp2(s - lse2[:, None])
        dp = tl.dot(do, vt, input_precision=PRECISION)
        if HAS_DROPOUT:
            keep = dropout_keep(seed, bh, offs_m[:, None], offs_n[None, :], DL, DS, dropout_p)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if HAS_DMASK:
            dm_rows = offs_m[:, None]
            if MASK_KIND > 2:  # L * S >= 2^31 (see mask_kind)
                dm_rows = dm_rows.to(tl.int64)
            tl.store(DMask_row + dm_rows * S + offs_n[None, :], ds, mask=(offs_m[:, None] < L) & in_keys[None, :])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)
    return dq


# Q, DO: [B, H, L, E|EV], K, V: [B, Hkv, S, E|EV], Mask: [B, H, L, S] view, Lse, Delta: [B, H, L] fp32
# contiguous -> DQ: [B, H, L, E], unit last stride; DMask (HAS_DMASK): [B, H, L, S] fp32 contiguous,
# zero-initialised (blocks above the causal diagonal are never written).  grid: (cdiv(L, BLOCK_M) * B * H,)
# VARLEN: packed sequences, as in the dK/dV kernel.
@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, Mask, Seed, DO, Lse, Delta, DQ, DMask, CuQ, CuK,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    smb, smh, smm, smn, sdob, sdoh, sdom, sdod, LSE_ROW, sdqb, sdqh, sdqm,
    H, GROUP, L, S, E, EV, L_BUCKET, S_BUCKET, qk_scale, sm_scale, dropout_p, drop_scale,
    MASK_KIND: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_DMASK: tl.constexpr,
    VARLEN: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr, PAD_D: tl.constexpr,
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
    in_rows = offs_m < Lq
    q_rows = q_row0 + offs_m
    q = tl.load(Q + off_b * sqb + off_h * sqh + q_rows[:, None] * sqm + offs_d[None, :] * sqd,
                mask=in_rows[:, None] & (offs_d[None, :] < E), other=0.0)              # [BLOCK_M, BLOCK_D]
    do = tl.load(DO + off_b * sdob + off_h * sdoh + q_rows[:, None] * sdom + offs_dv[None, :] * sdod,
                 mask=in_rows[:, None] & (offs_dv[None, :] < EV), other=0.0)          # [BLOCK_M, BLOCK_DV]
    first_row = lse_row_start(bh, off_h, q_row0, L, LSE_ROW, VARLEN)
    lse2 = backward_shift(tl.load(Lse + first_row + offs_m, mask=in_rows, other=0.0))
    delta = tl.load(Delta + first_row + offs_m, mask=in_rows, other=0.0)
    K_head = K + off_b * skb + off_hkv * skh + k_row0 * skn
    V_head = V + off_b * svb + off_hkv * svh + k_row0 * svn
    if USE_TMA:
        K_head = tl.make_tensor_descriptor(K_head, shape=[Sk, E], strides=[skn, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        V_head = tl.make_tensor_descriptor(V_head, shape=[Sk, EV], strides=[svn, 1],
                                           block_shape=[BLOCK_N, BLOCK_DV])
    Mask_head = Mask + off_b * smb + off_h * smh
    DMask_row = DMask + bh.to(tl.int64) * L * S
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(Seed)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Key tiles in two runs, as in the forward: whole visible tiles without tests, then the rest with them.
    whole = (Sk // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        split = tl.minimum(tl.minimum(start_m, Sk), whole)
        hi = tl.minimum(start_m + BLOCK_M, Sk)
    else:
        split = whole
        hi = Sk
    dq = _dq_key_blocks(
        dq, q, do, lse2, delta, K_head, V_head, Mask_head, DMask_row, seed, bh, offs_m, offs_d, offs_dv,
        0, split, skn, skd, svn, svd, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p, drop_scale,
        MASK_KIND, False, False, HAS_DROPOUT, HAS_DMASK, PRECISION, USE_TMA, PAD_D, BLOCK_N)
    dq = _dq_key_blocks(
        dq, q, do, lse2, delta, K_head, V_head, Mask_head, DMask_row, seed, bh, offs_m, offs_d, offs_dv,
        split, hi, skn, skd, svn, svd, smm, smn, Lq, Sk, L, S, E, EV, qk_scale, dropout_p, drop_scale,
        MASK_KIND, IS_CAUSAL, True, HAS_DROPOUT, HAS_DMASK, PRECISION, USE_TMA, PAD_D, BLOCK_N)
    rows = q_row0 + offs_m.to(tl.int64)
    tl.store(DQ + off_b * sdqb + off_h * sdqh + rows[:, None] * sdqm + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=in_rows[:, None] & (offs_d[None, :] < E))


def _autotuned(kernel, configs_sm90, configs_default, resident, streamed, streamed_vectors=0):
    def tuned(configs, budget):
        prune = prune_by_shared_memory(budget, resident, streamed, streamed_vectors)
        pruning = {"early_config_prune": prune}
        return triton.autotune(configs, key=AUTOTUNE_KEY, prune_configs_by=pruning)(kernel)

    return tuned(configs_sm90, SMEM_SM90), tuned(configs_default, SMEM_DEFAULT)


# dK/dV keeps the key tile (BLOCK_N) resident and streams the query rows' lse and delta with Q and dO; dQ
# keeps the query tile (BLOCK_M).
_dkdv_sm90, _dkdv_default = _autotuned(
    attention_bwd_dkdv_kernel, DKDV_CONFIGS_SM90, DKDV_CONFIGS_DEFAULT, "BLOCK_N", "BLOCK_M", streamed_vectors=2)
# The dQ kernel may write DMask, which autotuning rewrites identically on every trial: harmless.
_dq_sm90, _dq_default = _autotuned(
    attention_bwd_dq_kernel, DQ_CONFIGS_SM90, DQ_CONFIGS_DEFAULT, "BLOCK_M", "BLOCK_N")


# do, q, out: [B, H, L, E|EV], k, v: [B, Hkv, S, E|EV], lse: [B, H, L] fp32, mask: None or [B, H, L, S] view,
# seed: [1] int64, dlse: None or [B, H, L] (gradient of the lse output)
# -> (dq, dk, dv) in the input dtypes, each in its input's layout (seqops/ops/attention_layout.py), and dmask
# [B, H, L, S] fp32 (or None).
def attention_backward(do, q, k, v, out, lse, mask, scale, is_causal, dropout_p, seed, need_dmask, dlse=None):
    dq, dk, dv = (empty_in_layout(t, t.shape) for t in (q, k, v))  # the layouts of the caller's tensors
    do, q, k, v, out = (within_int32_rows(t) for t in (do, q, k, v, out))
    lse = lse.contiguous()  # indexed as [B*H, L] rows; the op's own lse is already
    B, H, L, _ = q.shape
    S = k.shape[2]
    dmask = torch.zeros((B, H, L, S), device=q.device, dtype=torch.float32) if need_dmask else None
    if B * H * L * S == 0:
        dq.zero_(), dk.zero_(), dv.zero_()
        return dq, dk, dv, dmask
    delta = _delta(out, do, dlse)
    _launch(do, q, k, v, lse, delta, mask, seed, dq, dk, dv, dmask, None, B, L, S, scale, is_causal, dropout_p)
    return dq, dk, dv, dmask


# Packed sequences (see attention_fwd.attention_varlen_forward). do, q, out: [Nq, H, E|EV], k, v: [Nk, Hkv, E|EV],
# lse, dlse: [H, Nq] fp32, cu_q, cu_k: [B + 1], max_q, max_k: the longest lengths -> (dq, dk, dv) contiguous.
def attention_varlen_backward(do, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, is_causal, dropout_p, seed,
                              dlse=None):
    dq, dk, dv = (t.new_empty(t.shape) for t in (q, k, v))  # contiguous
    B = cu_q.shape[0] - 1
    if B * q.shape[1] * max_q * max_k == 0:  # no query or no key anywhere: every gradient is zero
        return dq.zero_(), dk.zero_(), dv.zero_()
    do, q, out = (packed_rows_within_int32(t, max_q) for t in (do, q, out))
    k, v = (packed_rows_within_int32(t, max_k) for t in (k, v))
    do4, q4, k4, v4, out4, dq4, dk4, dv4 = (packed_as_heads(t) for t in (do, q, k, v, out, dq, dk, dv))
    delta = _delta(out4, do4, None if dlse is None else dlse.unsqueeze(0)).squeeze(0)  # [H, Nq]
    cu = (cu_q.contiguous(), cu_k.contiguous())  # the kernels read them with unit stride
    _launch(do4, q4, k4, v4, lse.contiguous(), delta, None, seed, dq4, dk4, dv4, None, cu, B, max_q, max_k, scale,
            is_causal, dropout_p)
    return dq, dk, dv


def _delta(out, do, dlse):
    # out, do: [B, H, L, EV] -> delta = rowsum(dO * O) [B, H, L] fp32 contiguous, less dlse where the lse has a
    # gradient: d lse_i / d s_ij = P_ij, so it adds dlse_i * P_ij to dS = P * (dP - delta).
    B, H, L, EV = out.shape
    delta = torch.empty((B, H, L), device=out.device, dtype=torch.float32)
    block = 32 if INTERPRETING or out.device.type != "cuda" else 64
    with device_guard(out.device):
        attention_bwd_delta_kernel[(triton.cdiv(L, block) * B * H,)](
            out, do, delta, *out.stride(), *do.stride(), H, L, EV, BLOCK_M=block,
            BLOCK_DV=next_pow2_at_least_16(EV),
        )
    if dlse is not None:
        delta.sub_(dlse)
    return delta


def _launch(do, q, k, v, lse, delta, mask, seed, dq, dk, dv, dmask, cu, B, L, S, scale, is_causal, dropout_p):
    # do, q, k, v, dq, dk, dv: [B | 1, heads, rows, dim]; lse, delta: [B, H, L] or (cu: packed) [H, Nq], one
    # layout; cu: None (dense) or (cu_q, cu_k); L, S: (longest) lengths
    H, E = q.shape[1], q.shape[3]
    Hkv, EV = k.shape[1], v.shape[3]
    BLOCK_D, BLOCK_DV = next_pow2_at_least_16(E), next_pow2_at_least_16(EV)
    interpret = INTERPRETING or q.device.type != "cuda"
    cu_q, cu_k = cu if cu is not None else (q, q)
    need_dmask = dmask is not None
    mask_ptr, mask_strides = mask_args(mask, q)
    has_dropout = dropout_p > 0.0
    seed_ptr = seed if has_dropout else q
    strides = (*q.stride(), *k.stride(), *v.stride(), *mask_strides, *do.stride(), lse.shape[-1])
    scalars = (
        H, H // Hkv, L, S, E, EV, length_bucket(L), length_bucket(S), scale * LOG2E, scale, dropout_p,
        0.0 if dropout_p >= 1.0 else 1.0 / (1.0 - dropout_p),
    )
    meta = dict(
        MASK_KIND=mask_kind(mask, L, S), IS_CAUSAL=bool(is_causal), HAS_DROPOUT=has_dropout, VARLEN=cu is not None,
        PRECISION=dot_precision(q.dtype), PAD_D=padded_head_dims(E, EV), BLOCK_D=BLOCK_D, BLOCK_DV=BLOCK_DV,
    )
    dkdv_args = (q, k, v, mask_ptr, seed_ptr, do, lse, delta, dk, dv, cu_q, cu_k, *strides, *dk.stride()[:3],
                 *dv.stride()[:3], *scalars)
    dq_args = (q, k, v, mask_ptr, seed_ptr, do, lse, delta, dq, dmask if need_dmask else q, cu_q, cu_k, *strides,
               *dq.stride()[:3], *scalars)
    dq_meta = dict(meta, HAS_DMASK=need_dmask)
    if interpret:
        (dkdv_m, dkdv_n), (dq_m, dq_n) = INTERPRET_TILES["dkdv"], INTERPRET_TILES["dq"]
        launch_with_optional_tma(attention_bwd_dkdv_kernel[(triton.cdiv(S, dkdv_n) * B * Hkv,)], dkdv_args,
                                 dict(meta, BLOCK_M=dkdv_m, BLOCK_N=dkdv_n), (q, do))
        launch_with_optional_tma(attention_bwd_dq_kernel[(triton.cdiv(L, dq_m) * B * H,)], dq_args,
                                 dict(dq_meta, BLOCK_M=dq_m, BLOCK_N=dq_n), (k, v))
    else:
        sm90 = is_sm90(q.device)
        dkdv_kernel, dq_kernel = (_dkdv_sm90, _dq_sm90) if sm90 else (_dkdv_default, _dq_default)
        dkdv_grid = lambda cfg: (triton.cdiv(S, cfg["BLOCK_N"]) * B * Hkv,)  # noqa: E731
        dq_grid = lambda cfg: (triton.cdiv(L, cfg["BLOCK_M"]) * B * H,)  # noqa: E731
        launch_with_optional_tma(dkdv_kernel[dkdv_grid], dkdv_args, meta, (q, do))
        launch_with_optional_tma(dq_kernel[dq_grid], dq_args, dq_meta, (k, v))


__all__ = ["attention_backward", "attention_varlen_backward"]
