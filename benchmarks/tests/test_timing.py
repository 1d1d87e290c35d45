"""Timing statistics and the CPU interleaving, with a fake clock so the expected numbers are exact."""

import itertools
import math
import time
from collections import Counter

import numpy as np
import pytest
import torch

from benchmarks import timing


@pytest.mark.parametrize("n", [1, 2, 5, 10, 101])
def test_summarize_matches_numpy_percentiles(n):
    samples = torch.rand(n, dtype=torch.float64).mul(10).tolist()
    stats = timing.summarize(samples)
    assert stats.n == n
    for got, q in ((stats.median_ms, 50), (stats.p20_ms, 20), (stats.p80_ms, 80)):
        assert math.isclose(got, float(np.percentile(samples, q)), rel_tol=1e-12)
    assert stats.p20_ms <= stats.median_ms <= stats.p80_ms


def test_summarize_is_order_independent():
    assert timing.summarize([5.0, 1.0, 3.0]) == timing.summarize([1.0, 3.0, 5.0])
    assert timing.summarize([5.0, 1.0, 3.0]).median_ms == 3.0


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")], [-1.0]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        timing.summarize(bad)


class FakeClock:
    """A clock that only moves when a fake provider 'runs' for its fixed duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, seconds):
        def fn():
            self.now += seconds

        return fn


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_round_orders_balance_positions_and_predecessors(n):
    names = [f"p{i}" for i in range(n)]
    cycle = len(timing.balanced_orders(n))
    orders = [timing.round_order(names, r) for r in range(cycle)]
    assert all(sorted(order) == names for order in orders)
    assert timing.round_order(names, cycle) == orders[0]
    # each provider takes each position equally often, and runs right after each other one equally often
    for position in range(n):
        assert Counter(order[position] for order in orders) == Counter({name: cycle // n for name in names})
    follows = Counter((a, b) for order in orders for a, b in itertools.pairwise(order))
    assert set(follows) == set(itertools.permutations(names, 2))
    assert len(set(follows.values())) <= 1


def test_interleaved_medians_and_rounds():
    clock = FakeClock()
    fns = {"a": clock.work(1e-3), "b": clock.work(4e-3), "c": clock.work(2e-3)}
    budget = timing.CpuBudget(warmup_s=0.01, budget_s=0.5, min_rounds=5, max_rounds=50, min_sample_s=4e-3)
    results = timing.time_cpu_interleaved(fns, budget, clock=clock)
    for name, ms in (("a", 1.0), ("b", 4.0), ("c", 2.0)):
        stats = results[name]
        assert (stats.p20_ms, stats.median_ms, stats.p80_ms) == pytest.approx((ms, ms, ms))
    # every provider gets one sample per round; rounds stop once the budget is spent
    assert len({s.n for s in results.values()}) == 1
    assert budget.min_rounds <= results["a"].n < budget.max_rounds


def test_interleaved_failure_is_reported_not_raised():
    clock = FakeClock()
    count = {"n": 0}

    def flaky():
        count["n"] += 1
        clock.now += 1e-3
        if count["n"] > 4:  # passes warm-up, fails while timed
            raise RuntimeError("boom")

    def broken():
        raise ValueError("never works")

    fns = {"good": clock.work(1e-3), "flaky": flaky, "broken": broken}
    budget = timing.CpuBudget(warmup_s=2e-3, budget_s=0.05, min_rounds=3, min_sample_s=1e-3)
    results = timing.time_cpu_interleaved(fns, budget, clock=clock)
    assert isinstance(results["good"], timing.Stats) and results["good"].median_ms == pytest.approx(1.0)
    assert isinstance(results["flaky"], RuntimeError)
    assert isinstance(results["broken"], ValueError)


def test_interleaved_real_clock():
    """On the real clock a 2 ms sleep measures at least 2 ms and more than a no-op (robust to a busy CPU)."""
    budget = timing.CpuBudget(warmup_s=0.005, budget_s=0.03, min_rounds=3, min_sample_s=1e-3)
    results = timing.time_cpu_interleaved({"sleep": lambda: time.sleep(2e-3), "noop": lambda: None}, budget)
    assert results["sleep"].median_ms >= 2.0 > results["noop"].median_ms


@pytest.mark.gpu
def test_time_cuda_orders_work_and_quantiles():
    a, b = torch.randn(512, 512, device="cuda"), torch.randn(4096, 4096, device="cuda")
    small = timing.time_cuda(lambda: a @ a, warmup_ms=5, rep_ms=20)
    big = timing.time_cuda(lambda: b @ b, warmup_ms=5, rep_ms=20)
    assert 0 < small.p20_ms <= small.median_ms <= small.p80_ms
    assert big.median_ms > small.median_ms


@pytest.mark.gpu
def test_cuda_events_fallback_quantiles():
    b = torch.randn(4096, 4096, device="cuda")
    stats = timing._time_cuda_events(lambda: b @ b, warmup_ms=5, rep_ms=20)
    assert 0 < stats.p20_ms <= stats.median_ms <= stats.p80_ms and stats.n >= 1


@pytest.mark.gpu
def test_cuda_peak_memory_counts_what_the_call_allocates():
    def allocate():
        t = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
        return t.sum()

    _, peak = timing.cuda_peak_mb(lambda: allocate)
    assert peak >= 64


@pytest.mark.gpu
def test_cuda_peak_memory_leaves_out_the_first_call_s_one_time_costs():
    # as Triton's autotuner's 256 MiB flush buffer on a kernel's first call
    kept = torch.empty(16 * 2**20, dtype=torch.uint8, device="cuda")  # the provider's inputs: counted
    first = [True]

    def setup():
        held = kept.clone()

        def call():
            if first[0]:
                torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda").zero_()
                first[0] = False
            return held.sum()

        return call

    _, peak = timing.cuda_peak_mb(setup)
    assert 16 <= peak < 64


@pytest.mark.gpu
def test_time_cuda_counts_host_time_of_launch_bound_calls():
    # 0.3 ms of host work before a tiny kernel: the flushed timing would see only the kernel
    a = torch.ones(16, device="cuda")

    def host_bound():
        deadline = time.perf_counter() + 3e-4
        while time.perf_counter() < deadline:
            pass
        return a + 1

    stats = timing.time_cuda(host_bound, warmup_ms=5, rep_ms=20)
    assert stats.back_to_back and stats.median_ms >= 0.3
    b = torch.randn(4096, 4096, device="cuda")
    assert not timing.time_cuda(lambda: b @ b, warmup_ms=5, rep_ms=20).back_to_back
