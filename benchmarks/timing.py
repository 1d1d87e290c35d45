"""Timers. CUDA: triton.testing.do_bench (CUDA events, L2 flushed before every call) or an equivalent
CUDA-event loop when triton is missing. CPU: providers of one case are timed in interleaved rounds, so
background load and frequency drift hit every provider alike.
Every timer returns Stats: median and the 20th/80th percentiles of per-call times in milliseconds."""

import math
import time
from dataclasses import dataclass

import torch

QUANTILES = (0.5, 0.2, 0.8)


@dataclass(frozen=True)
class Stats:
    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int | None  # samples behind the statistics (None: the timer did not say)
    back_to_back: bool = False  # CUDA: timed as back-to-back calls (launch-bound; see time_cuda)


def quantile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("quantile of no samples")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ms):
    values = sorted(float(v) for v in samples_ms)
    if not values:
        raise ValueError("no timing samples")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"timing samples must be finite and non-negative, got {values}")
    med, p20, p80 = (quantile(values, q) for q in QUANTILES)
    return Stats(med, p20, p80, len(values))


# ---------------------------------------------------------------- CPU


@dataclass(frozen=True)
class CpuBudget:
    warmup_s: float = 0.1  # at least one call each; torch.compile's first call is excluded by it too
    budget_s: float = 1.0  # wall time of the timed rounds of one case, all providers together
    min_rounds: int = 5
    max_rounds: int = 200
    min_sample_s: float = 2e-3  # one sample repeats a call until this long, so timer resolution is moot


def _calibrate(fn, warmup_s, clock):
    """Warm fn up; return the mean seconds of one call measured during warm-up (after the first call)."""
    fn()  # first call: lazy init, compilation, allocator growth
    calls, start = 0, clock()
    while True:
        fn()
        calls += 1
        elapsed = clock() - start
        if elapsed >= warmup_s:
            return elapsed / calls


def balanced_orders(n):
    """A Williams design: orders of range(n) in which every index comes first equally often and runs right
    after every other index equally often (n orders for even n, 2n for odd). A rotation alone keeps the cyclic
    neighbours: with seqops, torch.nn, pyloop, seqops always ran right after pyloop's allocations (after the
    reference's [L, L] scores in attention), which measured seqops' CPU attention 0.87x of SDPA's flash kernel
    against 0.97x with those providers left out (2-core Zen 2)."""
    first = [j // 2 if j % 2 == 0 else n - (j + 1) // 2 for j in range(n)]
    orders = [[(i + r) % n for i in first] for r in range(n)]
    return orders + [order[::-1] for order in orders] if n % 2 else orders


def round_order(names, round_index):
    """Providers in the order of one round, cycling through balanced_orders."""
    orders = balanced_orders(len(names))
    return [names[i] for i in orders[round_index % len(orders)]]


def time_cpu_interleaved(fns, budget=CpuBudget(), clock=time.perf_counter):
    """fns: {provider: zero-argument callable}. Returns {provider: Stats or the exception it raised}.

    Each round runs every provider once, the orders balanced over rounds (round_order); a sample is the mean of
    `inner` back-to-back calls, inner chosen per provider so a sample lasts at least min_sample_s."""
    results, inner = {}, {}
    for name, fn in fns.items():
        try:
            per_call = _calibrate(fn, budget.warmup_s, clock)
        except Exception as err:  # a provider that fails is reported, the others still run
            results[name] = err
            continue
        inner[name] = max(1, math.ceil(budget.min_sample_s / max(per_call, 1e-9)))
    live = [name for name in fns if name in inner]
    samples = {name: [] for name in live}
    start, rounds = clock(), 0
    while live and rounds < budget.max_rounds:
        if rounds >= budget.min_rounds and clock() - start >= budget.budget_s:
            break
        for name in round_order(live, rounds):
            if name in results:
                continue
            fn, n = fns[name], inner[name]
            try:
                t0 = clock()
                for _ in range(n):
                    fn()
                samples[name].append((clock() - t0) * 1e3 / n)
            except Exception as err:
                results[name] = err
        rounds += 1
    for name in live:
        if name not in results:
            results[name] = summarize(samples[name])
    return results


# ---------------------------------------------------------------- CUDA

L2_FLUSH_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MB), as triton's do_bench uses


# Below this, a call's flushed timing is checked against back-to-back calls (see time_cuda).
LAUNCH_BOUND_CHECK_MS = 1.0


def time_cuda(fn, warmup_ms=25, rep_ms=100, min_samples=10):
    """Median/p20/p80 of fn on the current CUDA device, L2 flushed before every timed call. The timed window
    grows to min_samples calls for slow providers (do_bench alone would time a 60 ms call once).

    The flush (a 256 MiB memset, ~65 us on an H200) runs on the GPU while the host queues the call after it,
    so a call whose host-side cost (Python, dispatch, launches) exceeds its GPU time would be timed without
    that cost. Short calls are therefore timed back to back as well, without a flush, and where that per-call
    wall time is the larger it is the row's time (Stats.back_to_back)."""
    estimate_ms = max(_estimate_cuda_ms(fn), 1e-3)
    rep_ms = max(rep_ms, min_samples * estimate_ms)
    try:
        from triton.testing import do_bench
    except ImportError:
        stats = _time_cuda_events(fn, warmup_ms, rep_ms, estimate_ms)
    else:
        stats = summarize(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all"))
    if stats.median_ms < LAUNCH_BOUND_CHECK_MS:
        chained = _time_back_to_back(fn, rep_ms, estimate_ms)
        if chained.median_ms > stats.median_ms:
            return chained
    return stats


def _time_back_to_back(fn, rep_ms, estimate_ms, rounds=7):
    """Per-call wall time of calls queued back to back, no flush: rounds of calls between two events."""
    calls = max(1, int(rep_ms / rounds / estimate_ms))
    per_call = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        per_call.append(start.elapsed_time(end) / calls)
    s = summarize(per_call)
    return Stats(s.median_ms, s.p20_ms, s.p80_ms, s.n, back_to_back=True)


def _estimate_cuda_ms(fn):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _time_cuda_events(fn, warmup_ms, rep_ms, estimate_ms=None):
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    estimate_ms = estimate_ms or max(_estimate_cuda_ms(fn), 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        fn()
    n = max(1, int(rep_ms / estimate_ms))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends, strict=True):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)])


def cuda_peak_mb(setup):
    """(fn, MiB): fn = setup(), and the peak CUDA memory of one call of fn above what was allocated before
    setup: the provider's inputs, weights and workspaces plus the call's transient peak. The peak is taken on a
    second call: the first one's one-time costs (Triton's autotuning allocates a 256 MiB L2-flush buffer per
    tuned kernel, torch.compile its own timing buffers) are no part of what the provider needs to run."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    fn = setup()
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return fn, (torch.cuda.max_memory_allocated() - base) / 2**20


def warm_cuda_libraries(device):
    """cuBLAS / cuBLASLt keep a workspace per handle from their first call: made here, before any provider's
    peak window, so it is charged to none of them."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a = torch.ones(64, 64, device=device, dtype=dtype)
        (a @ a).sum().item()
