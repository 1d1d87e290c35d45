"""The runner: every provider outcome is a row (never a crash); the timed closures compute what they say."""

import pytest
import torch

from benchmarks import runner, timing
from benchmarks.cases import Case
from benchmarks.providers import Provider, Unavailable, Unsupported, providers_for
from benchmarks.providers.base import mode_fn

ENV = {"device": "cpu", "device_slug": "cpu-x", "torch": "t", "triton": None, "cuda": None, "seqops": "s",
       "commit": "c", "date": "d", "load_avg": None}
CASE = Case("cell", "lstm_cell", "fwd", "fp32", B=2, I=3, H=3)
FAST = timing.CpuBudget(warmup_s=1e-3, budget_s=1e-3, min_rounds=2, min_sample_s=1e-4)


def raising(err):
    def setup(case, device):
        raise err

    return setup


def fails_when_run(case, device):
    def fn():
        raise RuntimeError("kernel exploded\nsecond line")

    return fn


def test_each_failure_is_a_row():
    providers = [
        Provider("good", "cell", lambda case, device: lambda: torch.ones(4).sum()),
        Provider("missing", "cell", raising(Unavailable("seqops has no lstm_cell yet"))),
        Provider("no-fp32", "cell", raising(Unsupported("fp16 only"))),
        Provider("setup-crash", "cell", raising(ValueError("bad shape"))),
        Provider("run-crash", "cell", fails_when_run),
        Provider("oom", "cell", raising(torch.OutOfMemoryError("CUDA out of memory. Tried ..."))),
    ]
    rows = runner.run_case_cpu(CASE, providers, torch.device("cpu"), ENV, FAST)
    by = {r["provider"]: r for r in rows}
    assert [r["provider"] for r in rows] == [p.name for p in providers]
    assert by["good"]["status"] == "ok" and by["good"]["median_ms"] > 0 and by["good"]["us_per_step"] > 0
    assert (by["missing"]["status"], by["missing"]["note"]) == ("unavailable", "seqops has no lstm_cell yet")
    assert (by["no-fp32"]["status"], by["no-fp32"]["note"]) == ("unsupported", "fp16 only")
    assert (by["setup-crash"]["status"], by["setup-crash"]["note"]) == ("failed", "ValueError: bad shape")
    assert (by["run-crash"]["status"], by["run-crash"]["note"]) == ("failed", "RuntimeError: kernel exploded")
    assert (by["oom"]["status"], by["oom"]["note"]) == ("failed", "out of memory")
    for r in rows:
        assert r["device"] == "cpu" and r["name"] == CASE.name
        if r["status"] != "ok":
            assert r["median_ms"] is None and r["tflops"] is None


def test_rotation_cycles_through_copies():
    made = []

    def setup(case, device):
        i = len(made)
        made.append(i)
        return lambda: i

    fn = runner._setup(Provider("p", "cell", setup), CASE, "cpu", 3)
    assert [fn() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert runner.rotation(CASE, "cuda") == 1
    assert 1 < runner.rotation(CASE, "cpu") <= runner.MAX_ROTATION  # a tiny case spills no cache: rotate
    huge = Case("attn", "attn", "fwd", "fp32", B=64, heads=16, L=4096, S=4096, D=128)
    assert runner.rotation(huge, "cpu") == 1


def test_row_rates():
    case = Case("rnn", "lstm", "fwd", "fp32", B=2, T=10, I=4, H=4)
    r = runner.make_row(case, "p", ENV, stats=timing.Stats(2.0, 1.0, 3.0, 5))
    assert r["us_per_step"] == pytest.approx(200.0)
    assert r["tflops"] == pytest.approx(case.flops / 2e-3 / 1e12)
    assert (r["T"], r["L"], r["causal"]) == (10, None, None)


@pytest.mark.parametrize("mode", ["bwd", "fwdbwd"])
def test_mode_fn_backward_gives_true_gradients_each_call(mode):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)

    def forward():
        return torch.tanh(x @ w), ((x * 2).sum(1), x.detach())  # nested; a constant output is skipped

    fn = mode_fn(mode, forward, [x, w])
    fn()
    fn()  # a second call must not accumulate into the first call's gradients
    out = forward()
    expected = torch.autograd.grad([out[0], out[1][0]], [x, w], fn.grads)
    torch.testing.assert_close(x.grad, expected[0])
    torch.testing.assert_close(w.grad, expected[1])


def test_mode_fn_forward_is_the_forward():
    x = torch.randn(4, requires_grad=True)
    fn = mode_fn("fwd", lambda: x * 3, [x])
    torch.testing.assert_close(fn(), x * 3)
    assert x.grad is None


def test_mode_fn_rejects_outputs_without_grad():
    x = torch.randn(3)
    with pytest.raises(Unsupported):
        mode_fn("bwd", lambda: x * 2, [x])


def test_provider_selection_by_device():
    cpu = {p.name for p in providers_for("attn", "cpu")}
    cuda = {p.name for p in providers_for("attn", "cuda")}
    assert {"sdpa-efficient", "sdpa-cudnn"}.isdisjoint(cpu)
    assert {"seqops", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex", "reference"} == cuda
    assert "flex" not in {p.name for p in providers_for("attn", "cuda", quick=True)}
    assert {p.name for p in providers_for("rnn", "cuda")} == {"seqops", "torch.nn", "torch.nn-nocudnn",
                                                              "compile-ref", "pyloop"}
    assert {p.name for p in providers_for("rnn", "cpu", names=["compile-ref"])} == {"compile-ref"}


def test_cuda_runner_rows_without_a_gpu(monkeypatch):
    """The CUDA path's bookkeeping (peak memory window, failures, OOM) with the CUDA timers stubbed out."""
    calls = []

    def fake_peak(setup):  # as the real one: setup, then the call whose peak it takes
        fn = setup()
        fn()
        return fn, 12.5

    def fake_time(fn, warmup_ms, rep_ms):
        calls.append((warmup_ms, rep_ms))
        fn()
        return timing.Stats(3.0, 2.0, 4.0, None)

    monkeypatch.setattr(timing, "cuda_peak_mb", fake_peak)
    monkeypatch.setattr(timing, "time_cuda", fake_time)
    monkeypatch.setattr(runner, "_cuda_cleanup", lambda: None)
    providers = [
        Provider("good", "cell", lambda case, device: lambda: None),
        Provider("oom", "cell", fails_when_run),
        Provider("missing", "cell", raising(Unavailable("not built"))),
    ]
    rows, stop = runner.run_case_cuda(CASE, providers, torch.device("cpu"), ENV, warmup_ms=7, rep_ms=11)
    assert stop is None
    assert [r["status"] for r in rows] == ["ok", "failed", "unavailable"]
    good = rows[0]
    assert (good["median_ms"], good["p20_ms"], good["p80_ms"], good["peak_mem_mb"]) == (3, 2, 4, 12.5)
    assert rows[1]["note"] == "RuntimeError: kernel exploded" and rows[1]["peak_mem_mb"] is None
    assert calls == [(7, 11)]


def test_allow_recompiles_raises_limits_and_fails_loudly(monkeypatch):
    from benchmarks.providers.base import allow_recompiles

    config = torch._dynamo.config
    for name in ("recompile_limit", "accumulated_recompile_limit", "fail_on_recompile_limit_hit"):
        if hasattr(config, name):
            monkeypatch.setattr(config, name, getattr(config, name))  # restored after the test
    allow_recompiles(per_function=300)
    assert config.recompile_limit >= 300 and config.accumulated_recompile_limit >= 2400
    assert config.fail_on_recompile_limit_hit is True


def _stub_cuda_timers(monkeypatch, lost_after=None):
    def peak(setup):
        fn = setup()
        fn()
        return fn, 1.0

    monkeypatch.setattr(timing, "cuda_peak_mb", peak)
    monkeypatch.setattr(timing, "time_cuda", lambda fn, warmup_ms, rep_ms: timing.Stats(1.0, 1.0, 1.0, None))
    monkeypatch.setattr(timing, "warm_cuda_libraries", lambda device: None)
    calls = []

    def cleanup():
        calls.append(1)
        return RuntimeError("CUDA error: an illegal memory access was encountered") if len(calls) == lost_after \
            else None

    monkeypatch.setattr(runner, "_cuda_cleanup", cleanup)


def _interrupted(case, device):
    def fn():
        raise KeyboardInterrupt

    return fn


def test_an_interrupt_keeps_the_case_s_rows_and_stops_the_run(monkeypatch):
    # A GPU session's time cap sends SIGINT: the providers measured so far keep their rows, the interrupted one
    # and the rest say so, and the run stops after that case's rows are out.
    _stub_cuda_timers(monkeypatch)
    providers = [Provider("first", "cell", lambda case, device: lambda: None),
                 Provider("compiling", "cell", _interrupted), Provider("last", "cell", lambda c, d: lambda: None)]
    rows, stop = runner.run_case_cuda(CASE, providers, torch.device("cpu"), ENV, warmup_ms=1, rep_ms=1)
    assert stop == "interrupted"
    assert [(r["provider"], r["status"]) for r in rows] == [("first", "ok"), ("compiling", "failed"),
                                                             ("last", "failed")]
    assert "interrupted" in rows[1]["note"] and "not run: interrupted" in rows[2]["note"]


def test_a_lost_cuda_context_stops_the_run_after_saving_the_case(monkeypatch):
    _stub_cuda_timers(monkeypatch, lost_after=1)
    providers = [Provider("crashing", "cell", lambda case, device: lambda: None),
                 Provider("after", "cell", lambda case, device: lambda: None)]
    monkeypatch.setattr(runner, "providers_for", lambda *args: providers)
    stream = runner.run_cases([CASE, CASE], "cuda", ENV)  # a torch.device("cuda") needs no GPU; nothing runs on it
    case, rows = next(stream)
    assert [(r["provider"], r["status"]) for r in rows] == [("crashing", "ok"), ("after", "failed")]
    assert "CUDA context lost after crashing" in rows[1]["note"]
    with pytest.raises(runner.StopRun, match="CUDA context lost"):
        next(stream)


def test_done_pairs_are_skipped(monkeypatch):
    providers = [Provider("a", "cell", lambda case, device: lambda: None),
                 Provider("b", "cell", lambda case, device: lambda: None)]
    monkeypatch.setattr(runner, "providers_for", lambda *args: providers)
    out = list(runner.run_cases([CASE], "cpu", ENV, cpu_budget=FAST, done={(CASE.name, "a")}))
    assert [[r["provider"] for r in rows] for _, rows in out] == [["b"]]
    assert list(runner.run_cases([CASE], "cpu", ENV, cpu_budget=FAST,
                                 done={(CASE.name, "a"), (CASE.name, "b")})) == []


def test_a_provider_returning_non_finite_values_gets_a_failed_row():
    providers = [Provider("good", "cell", lambda case, device: lambda: torch.ones(3)),
                 Provider("nan", "cell", lambda case, device: lambda: (torch.ones(2), torch.tensor([float("nan")])))]
    rows = runner.run_case_cpu(CASE, providers, torch.device("cpu"), ENV, FAST)
    assert [(r["provider"], r["status"]) for r in rows] == [("good", "ok"), ("nan", "failed")]
    assert "non-finite" in rows[1]["note"]
