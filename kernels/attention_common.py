"""Pieces shared by the attention kernels: tile configurations, the dropout draw, launch helpers.

Configurations. The interpreter runs one program at a time and cannot autotune over several configs, so on CPU
tensors one fixed, small tile is used. On CUDA the tiles are autotuned per (length bucket, head dims, causal,
mask kind, dropout, dtype) over a list chosen by compute capability at launch (never at import):
  - sm90 (H100/H200, 227 KB shared memory per block, 4th-gen tensor cores that want M >= 64 per warpgroup):
    128-row query tiles with 64/128-key tiles and 3-4 pipeline stages for head dims <= 128; head dim 256 only
    fits two stages of 64-key tiles beside a 128 x 256 Q tile, so smaller tiles there.
  - anything else (sm80 has 164 KB, consumer parts about 100 KB): a short, conservative list with 2-3 stages.
Every list is pruned by an estimate of shared memory (the resident tile plus one streamed tile pair per
stage), so a configuration that cannot launch is never tried.
"""

import contextlib
import functools
import os
import warnings

import torch
import triton
import triton.language as tl

from seqops.ops.errors import InvalidArgumentError

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # another Triton layout: no such error to tell apart
    class OutOfResources(Exception):
        pass

LOG2E = 1.4426950408889634
# The same constants for use inside kernels (a global a kernel reads must be a constexpr).
LOG2E_K = tl.constexpr(1.4426950408889634)
LN2_K = tl.constexpr(0.6931471805599453)
FLT_MAX_K = tl.constexpr(3.4028234663852886e38)

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# (BLOCK_M, BLOCK_N) of each kernel in the interpreter, read at every launch: the largest tiles that keep
# per-program numpy work cheap while small test shapes still span several blocks (exercising the block loops
# and boundaries). dK/dV keeps its keys resident, so there BLOCK_N is the larger. tests/test_attention_tiles.py
# swaps in, one at a time, every tile the GPU configurations below can pick.
INTERPRET_TILES = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


@triton.jit
def tile_and_head(n_tiles, REVERSE: tl.constexpr):
    """(tile, head row) of this program in a 1-D grid of n_tiles * heads programs.

    One grid axis: axis 1 of a CUDA grid stops at 65535, fewer than B * H can be. Tiles of one head are
    adjacent in launch order, so they share its K/V in L2. REVERSE (causal) launches the longest-running tiles
    first, which balances the tail of the grid.
    """
    pid = tl.program_id(0)
    tile = pid % n_tiles
    if REVERSE:
        tile = n_tiles - 1 - tile
    return tile, pid // n_tiles


@triton.jit
def sequence_rows(CuQ, CuK, b, L, S, VARLEN: tl.constexpr):
    """(first query row, query count, first key row, key count) of batch entry b. VARLEN: sequence b of packed
    rows, from the cumulative lengths CuQ, CuK [B + 1]; otherwise the whole [L, S] of a dense head (literal
    zeros, so the dense kernels keep their 32-bit row offsets)."""
    if VARLEN:
        q0 = tl.load(CuQ + b).to(tl.int64)
        k0 = tl.load(CuK + b).to(tl.int64)
        return q0, (tl.load(CuQ + b + 1) - q0).to(tl.int32), k0, (tl.load(CuK + b + 1) - k0).to(tl.int32)
    else:
        return 0, L, 0, S


@triton.jit
def lse_row_start(bh, off_h, q_row0, L, lse_row, VARLEN: tl.constexpr):
    """Offset of this program's first query row in the lse (and delta): dense [B * H, L] rows; VARLEN [H, Nq] rows
    (lse_row = Nq) from the sequence's first row. The dense offset stays one product: two cost sm90 dK/dV 8-32
    bytes of spill per thread."""
    if VARLEN:
        return off_h * lse_row + q_row0
    else:
        return bh.to(tl.int64) * L


@triton.jit
def load_tile(ptrs, rows_ok, cols_ok, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """tl.load with only the bounds that can fail: an unmasked (or row-only masked) load stays vectorised,
    which a runtime `offs_d < E` test would prevent even when E fills the tile."""
    if CHECK_ROWS and CHECK_COLS:
        return tl.load(ptrs, mask=rows_ok & cols_ok, other=0.0)
    elif CHECK_ROWS:
        return tl.load(ptrs, mask=rows_ok, other=0.0)
    elif CHECK_COLS:
        return tl.load(ptrs, mask=cols_ok, other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def apply_score_masks(
    s, rows, cols, Mask_head, smm, smn, L, S,
    MASK_KIND: tl.constexpr, ON_DIAGONAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr,
):
    """Scores s (log2 units) with the boolean / additive mask, the causal diagonal and the bounds applied.

    rows, cols: query and key indices broadcastable to s ([M, 1] and [1, N], or transposed for s^T), so the
    forward and both backward passes mask identically whatever the tile orientation. CHECK_BOUNDS: False for
    tiles that lie wholly inside [0, L) x [0, S) along the streamed axis (the stationary axis needs no test:
    its rows past the end are never stored, and their zero-filled inputs contribute nothing).
    """
    valid = (rows < L) & (cols < S)
    if MASK_KIND != 0:
        r, c = rows, cols
        if MASK_KIND > 2:  # a mask spanning >= 2^31 elements per head: 64-bit offsets (see mask_kind)
            r, c = rows.to(tl.int64), cols.to(tl.int64)
        if MASK_KIND % 2 == 1:
            keep = tl.load(Mask_head + r * smm + c * smn, mask=valid, other=0)
            s = tl.where(keep != 0, s, float("-inf"))
        else:
            bias = tl.load(Mask_head + r * smm + c * smn, mask=valid, other=0.0).to(tl.float32)
            bias2 = bias * LOG2E_K
            # A bias below -FLT_MAX / log2(e), such as torch.finfo(dtype).min (Hugging Face's padding mask),
            # overflows to -inf in log2 units and would empty a row that SDPA averages uniformly: keep it finite.
            bias2 = tl.where((bias2 == float("-inf")) & (bias != float("-inf")), -FLT_MAX_K, bias2)
            s = s + bias2
    if ON_DIAGONAL:
        s = tl.where(rows >= cols, s, float("-inf"))
    if CHECK_BOUNDS:
        s = tl.where(valid, s, float("-inf"))
    return s


@triton.jit
def backward_shift(lse):
    """The backward's shift of a row's log2 scores s, p = exp2(s - shift), from the forward's natural-log lse.

    Rows without mass (lse = -inf, scores all -inf) and rows whose every score a finfo.min-like bias swamps
    (lse near -FLT_MAX * ln 2, where fp32 cannot hold the log-sum's log l) shift by +inf: p = 0, never NaN.
    """
    lse2 = lse * LOG2E_K
    return tl.where(lse2 < -0.5 * FLT_MAX_K, float("inf"), lse2)


@triton.jit
def dropout_keep(seed, bh, rows, cols, L, S, dropout_p):
    """Keep-mask of the attention probabilities at (rows, cols) (broadcastable index blocks, as above) of head
    row bh (= b * Hq + h).

    One philox draw per (bh, i, j), indexed by the flat position in a [B*Hq, L, S] grid, so the forward, both
    backward kernels and the materialising helper regenerate exactly the same mask from (seed, position).
    """
    base = bh.to(tl.int64) * L * S
    offsets = base + rows.to(tl.int64) * S + cols.to(tl.int64)
    return tl.rand(seed, offsets) >= dropout_p


def next_pow2_at_least_16(n):
    # tl.dot needs every dimension >= 16; head dims that are not powers of two are padded and masked.
    return max(16, triton.next_power_of_2(n))


def padded_head_dims(E, EV):
    return next_pow2_at_least_16(E) != E or next_pow2_at_least_16(EV) != EV


def length_bucket(n):
    # Autotuning per exact length would re-tune for every new sequence length; per power of two it is enough.
    return triton.next_power_of_2(max(n, 1))


def _smem_bytes(resident, streamed, block_d, block_dv, stages, elt, mask_elt=0, streamed_vectors=0):
    # The resident tile (Q, or K and V for dK/dV) plus one streamed tile pair per pipeline stage, with a mask
    # its [resident, streamed] tile per stage (measured: bf16 D=128 with a float mask needs it counted), and the
    # fp32 row vectors streamed beside the tiles (dK/dV's lse and delta: without them its estimate fell
    # 512-1024 bytes short of sm90 builds' shared memory).
    tiles = (resident * (block_d + block_dv) + stages * streamed * (block_d + block_dv)) * elt
    return tiles + stages * resident * streamed * mask_elt + stages * streamed * streamed_vectors * 4


# Left free of the budget: the pipeline's barriers and what else the compiler places beside the tiles.
SMEM_SLACK = 2048


# fp32 runs its dots in IEEE fp32, an FMA loop rather than tensor cores: large tiles only spill registers
# (ptxas reports 10-34 KB of stack per thread) and take minutes to compile, so fp32 keeps the small tiles.
FP32_MAX_TILE, FP32_MAX_STAGES = 64 * 32, 2


# SEQOPS_ATTENTION_AUTOTUNE=0: no tuning; the first configuration of the list that fits shared memory (the
# largest tile) runs. The test suite sets it (tests/conftest.py): tuning every shape the GPU tests touch would
# compile each kernel ~10 times per shape, tens of minutes in all, and the tests check results, not speed.
AUTOTUNE = os.environ.get("SEQOPS_ATTENTION_AUTOTUNE", "1") != "0"


def prune_by_shared_memory(budget, resident="BLOCK_M", streamed="BLOCK_N", streamed_vectors=0):
    """Autotune's early pruning: the configurations whose tiles fit `budget` bytes of shared memory (fp32 only
    the small ones). Without tuning (SEQOPS_ATTENTION_AUTOTUNE=0), or under torch's deterministic algorithms,
    the first one: tiles chosen by timing can differ between runs, and with them the summation order."""
    def prune(configs, named_args, **kwargs):
        elt = named_args["Q"].element_size()
        fits = shared_memory_budget(budget, named_args["Q"].device) - SMEM_SLACK
        block_d, block_dv = kwargs.get("BLOCK_D", named_args.get("BLOCK_D")), kwargs.get(
            "BLOCK_DV", named_args.get("BLOCK_DV")
        )
        has_mask = kwargs.get("MASK_KIND", named_args.get("MASK_KIND", MASK_NONE)) != MASK_NONE
        mask_elt = named_args["Mask"].element_size() if has_mask and "Mask" in named_args else 0
        kept = [
            c
            for c in configs
            if _smem_bytes(c.kwargs[resident], c.kwargs[streamed], block_d, block_dv, c.num_stages, elt, mask_elt,
                           streamed_vectors)
            <= fits
            and (elt < 4 or (c.kwargs[resident] * c.kwargs[streamed] <= FP32_MAX_TILE
                             and c.num_stages <= FP32_MAX_STAGES))
        ]
        # Keep at least the smallest config so a launch always has something to run.
        kept = kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.num_stages)]
        return kept if AUTOTUNE and not torch.are_deterministic_algorithms_enabled() else kept[:1]

    return prune


def _configs(triples, warps_stages):
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for (m, n) in triples
        for (w, s) in warps_stages
    ]


# sm90 lists put 8 warps first (the tile that runs untuned, and the one ties go to): on 4 warps ptxas spills the
# large tiles' accumulators (bf16 D=128, per thread: forward (128, 64) 184 bytes, dQ (128, 64) 688, dK/dV
# (64, 128) 2184; on 8 warps 0, 0 and 272; see tests/sm90_build.py), and dK/dV's 128-key tiles get no 4-warp
# entry at all.
# Forward and dQ: BLOCK_M query rows stay resident, BLOCK_N keys stream. BLOCK_M % BLOCK_N == 0 always (the
# causal loop splits at a query-block boundary that must also be a key-block boundary).
# The (64, 32) two-stage entries are what head dim 256 (and fp32 at 128) fit into; the one-stage (32, 16) / (16, 32)
# entries are the last resort of fp32 at head dim 256 with a mask (the two-stage tiles measured 237 KB there).
FWD_CONFIGS_SM90 = _configs([(128, 64), (128, 128), (64, 64)], [(8, 3), (8, 4), (4, 3)]) + _configs(
    [(64, 32)], [(4, 2)]) + _configs([(32, 16)], [(4, 1)])
# The default lists end in the same one-stage last resorts: on sm80 (163 KB) fp32 at head dims above 128 fits
# nothing larger (the dQ (64, 32) two-stage build takes 200 KB there), nor does bf16 at 256 on ~99 KB parts.
FWD_CONFIGS_DEFAULT = _configs([(128, 64), (64, 64), (64, 32)], [(4, 2), (4, 3)]) + _configs([(32, 16)], [(4, 1)])
# dK/dV: BLOCK_N keys stay resident and BLOCK_M query rows stream, so here BLOCK_N is the larger tile.
DKDV_CONFIGS_SM90 = _configs([(64, 128), (32, 128)], [(8, 3)]) + _configs([(64, 64)], [(8, 3), (4, 3)]) + _configs(
    [(32, 64)], [(4, 2)]) + _configs([(16, 32)], [(4, 1)])
DKDV_CONFIGS_DEFAULT = _configs([(32, 64), (64, 64)], [(4, 2)]) + _configs([(16, 32)], [(4, 2), (4, 1)])
DQ_CONFIGS_SM90 = _configs([(128, 64), (64, 64)], [(8, 3), (4, 3)]) + _configs([(64, 32)], [(4, 2)]) + _configs(
    [(32, 16)], [(4, 1)])
DQ_CONFIGS_DEFAULT = _configs([(64, 64), (64, 32)], [(4, 2)]) + _configs([(32, 16)], [(4, 1)])

# Shared-memory budgets per block, bytes, where the device does not say (compiling without a GPU): the opt-in
# maxima of sm90 (227 KB) and sm80 (163 KB). On a GPU the device's own opt-in maximum caps them (~99 KB on
# sm86/sm89/sm120 parts), read once per device.
SMEM_SM90 = 227 * 1024
SMEM_DEFAULT = 160 * 1024


@functools.cache
def _device_shared_memory(index):
    props = torch.cuda.get_device_properties(index)
    return getattr(props, "shared_memory_per_block_optin", None)


def shared_memory_budget(budget, device):
    """budget, capped by what one block of `device` may opt in to (when it is a CUDA device that says)."""
    if device.type != "cuda" or INTERPRETING:
        return budget
    found = _device_shared_memory(device.index if device.index is not None else torch.cuda.current_device())
    return min(budget, found) if found else budget

AUTOTUNE_KEY = [
    "L_BUCKET", "S_BUCKET", "BLOCK_D", "BLOCK_DV", "IS_CAUSAL", "MASK_KIND", "HAS_DROPOUT", "VARLEN", "USE_TMA",
]


def is_sm90(device):
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def dot_precision(dtype):
    # fp32 inputs must give fp32 accuracy: no tf32 rounding of the operands.
    return "ieee" if dtype == torch.float32 else "tf32"


MASK_NONE, MASK_BOOL, MASK_FLOAT = 0, 1, 2
MASK_WIDE = 2  # added to the kind: 64-bit mask offsets
INT32_SPAN = 2**31


def _head_span(t):
    """The largest element offset within one [rows, cols] head of a [..., rows, cols] view."""
    return sum((n - 1) * abs(st) for n, st in zip(t.shape[-2:], t.stride()[-2:]) if n > 0)


def mask_kind(mask, L=0, S=0):
    """0: no mask; 1 / 2: bool / float; + MASK_WIDE where a head's mask offsets (or the [L, S] mask gradient's)
    reach 2^31 elements: only those kernels index it in 64 bits, which costs registers in the hot loop."""
    if mask is None:
        return MASK_NONE
    kind = MASK_BOOL if mask.dtype == torch.bool else MASK_FLOAT
    return kind + MASK_WIDE if max(_head_span(mask), L * S) >= INT32_SPAN else kind


def _contiguous_within_int32(t, span, too_large):
    # t itself, or its contiguous copy, where span(t) (the largest offset the kernels take in 32 bits) < 2^31
    if span(t) < INT32_SPAN:
        return t
    t = t.contiguous()
    if span(t) >= INT32_SPAN:
        raise InvalidArgumentError(too_large(t))
    return t


def within_int32_rows(t):
    """t [B, H, rows, cols] whose rows the kernels can address in 32 bits: a head's row offsets are int32, as
    64-bit ones cost registers (measured on sm90, bf16 D=128 forward: 205 -> 255 registers and a spill). A view
    whose rows lie further apart (one head of a [B, L, 64 heads x 128] buffer at L = 256K) is copied contiguous."""
    return _contiguous_within_int32(t, _head_span, lambda t: f"seqops.attention: one head of shape "
                                    f"{tuple(t.shape[-2:])} has 2^31 elements or more, more than the kernels index")


def packed_as_heads(t):
    """[N, heads, dim] packed rows as a [1, heads, N, dim] view with batch stride 0: under VARLEN the kernels take
    the program's batch index for a sequence (whose first row they add themselves), never for a batch offset."""
    return t.as_strided((1, t.shape[1], t.shape[0], t.shape[2]), (0, t.stride(1), t.stride(0), t.stride(2)))


def packed_rows_within_int32(t, longest):
    """t [N, heads, dim] packed rows (of sequences at most `longest` long) whose offsets the kernels take in 32 bits
    from a sequence's first row (which is 64-bit; 256 rows of slack for the last tile): copied contiguous where its
    rows lie further apart."""
    def span(x):
        return (longest + 256) * abs(x.stride(0)) + sum((n - 1) * abs(st) for n, st in zip(x.shape[1:], x.stride()[1:]))

    return _contiguous_within_int32(t, span, lambda t: f"seqops.attention_varlen: a sequence of {longest} rows of "
                                    f"{tuple(t.shape[1:])} spans 2^31 elements or more, more than the kernels index")


def mask_args(mask, like):
    """(pointer tensor, 4 strides) of a [B, H, L, S] mask view; bool is read as uint8 (same storage)."""
    if mask is None:
        return like, (0, 0, 0, 0)
    ptr = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    return ptr, tuple(mask.stride())


# TMA (Hopper's tensor memory accelerator) for the streamed tiles: on by default on sm90
# (SEQOPS_ATTENTION_TMA=0 turns it off); in the interpreter only when a test asks for it (TMA_IN_INTERPRETER):
# it runs there but gains nothing. A TMA launch failure (a Triton build whose lowering rejects it) turns
# it off for the process.
TMA_ENABLED = os.environ.get("SEQOPS_ATTENTION_TMA", "1") != "0"
TMA_IN_INTERPRETER = False


def tma_suits(dtype):
    """fp32 keeps pointer loads: its FMA-loop dots built with TMA get 32 registers from ptxas and spill 5-13 KB
    per thread (sm90 builds, D = 64 and 128; tests/sm90_build.py), where pointer loads spill 0.3-2 KB."""
    return dtype != torch.float32


def tma_eligible(*tensors):
    """TMA needs 16-byte aligned bases and strides, a unit last stride, and Triton's descriptor API."""
    if not hasattr(tl, "make_tensor_descriptor"):
        return False
    for t in tensors:
        elt = t.element_size()
        # Batch/head strides only move the per-head base (0 is fine); the row stride must be nonzero.
        if t.stride(-1) != 1 or t.stride(-2) == 0 or t.data_ptr() % 16:
            return False
        if any((st * elt) % 16 for st in t.stride()[:-1]):
            return False
    return True


@contextlib.contextmanager
def _descriptor_scratch(device):
    """In-kernel descriptors need a little global scratch memory: lend torch's allocator for this launch only,
    unless the caller has already set one (triton.set_allocator is process-wide otherwise)."""
    try:
        from triton.runtime import _allocation
    except ImportError:  # another Triton layout: rely on the caller's allocator
        yield
        return
    if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        yield
        return
    def scratch(size, alignment, stream):
        return torch.empty(size, dtype=torch.int8, device=device)

    token = _allocation._allocator.set(scratch)
    try:
        yield
    finally:
        _allocation._allocator.reset(token)


def device_guard(device):
    """Triton launches on the current CUDA device: make it the tensors' one for the launch."""
    if device.type == "cuda" and not INTERPRETING:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _tma_build_failure(err):
    """Whether a failed TMA launch is the TMA build's fault (compile, lowering, ptxas), so that pointer loads may
    stand in from now on. Out of memory (the autotuner's buffers, descriptor scratch), a CUDA fault (perhaps
    left by an earlier kernel) and a launch during CUDA-graph capture are not: they would hit pointer loads
    too, and must reach the caller."""
    if isinstance(err, torch.OutOfMemoryError) or torch.cuda.is_current_stream_capturing():
        return False
    message = str(err)
    return not any(word in message for word in ("CUDA error", "Triton Error [CUDA]", "out of memory"))


def launch_with_optional_tma(launcher, args, meta, streamed):
    """Launch `launcher(*args, **meta, USE_TMA=...)` with TMA when the device, the build and the streamed
    tensors allow it; otherwise (or if the TMA launch fails) with plain pointer loads."""
    global TMA_ENABLED
    device = streamed[0].device
    if device.type == "cuda" and not INTERPRETING:
        wanted = TMA_ENABLED and is_sm90(device) and tma_suits(streamed[0].dtype)
    else:
        wanted = TMA_IN_INTERPRETER
    with device_guard(device):
        if wanted and tma_eligible(*streamed):
            try:
                with _descriptor_scratch(device):
                    launcher(*args, **meta, USE_TMA=True)
                return
            except OutOfResources:
                pass  # this shape's TMA buffers exceed shared memory: pointer loads for this launch only
            except Exception as err:  # noqa: BLE001 - a build that cannot lower TMA falls back, see below
                if device.type != "cuda" or not _tma_build_failure(err):
                    raise
                TMA_ENABLED = False
                warnings.warn(f"seqops attention: a TMA kernel failed to launch ({type(err).__name__}: "
                              f"{err}); using pointer loads from now on", RuntimeWarning, stacklevel=3)
        launcher(*args, **meta, USE_TMA=False)
