"""Runs cases against providers and turns every outcome (a time, a missing provider, a failure) into a row."""

import gc
import math
from pathlib import Path

import torch

from benchmarks import timing
from benchmarks.cases import ATTENTION_SUITES
from benchmarks.providers import Unavailable, Unsupported, providers_for
from benchmarks.providers.base import tensors_in

MAX_ROTATION = 8


def llc_bytes():
    """Size of the CPU's last-level cache (32 MiB when sysfs does not say)."""
    for index in (3, 2):
        try:
            text = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    return 32 * 2**20


def rotation(case, device_type):
    """How many independent copies of a case's tensors to cycle through. On CUDA the timer flushes L2
    before every call, so one; on the CPU enough copies to spill twice the last-level cache, at most 8."""
    if device_type == "cuda":
        return 1
    return max(1, min(MAX_ROTATION, math.ceil(2 * llc_bytes() / max(case.working_bytes, 1))))


def describe_error(err):
    if isinstance(err, torch.OutOfMemoryError):
        return "out of memory"
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first_line}"[:240]


def status_of(err):
    if isinstance(err, Unavailable):
        return "unavailable"
    if isinstance(err, Unsupported):
        return "unsupported"
    return "failed"


def make_row(case, provider, env, stats=None, error=None, peak_mb=None, rot=1):
    row = {
        "name": case.name,
        "suite": case.suite,
        "op": case.op,
        "mode": case.mode,
        "dtype": case.dtype,
        "provider": provider,
        "status": "ok" if error is None else status_of(error),
        "note": "" if error is None else str(error) if isinstance(error, (Unavailable, Unsupported))
        else describe_error(error),
        "median_ms": None,
        "p20_ms": None,
        "p80_ms": None,
        "samples": None,
        "us_per_step": None,
        "tflops": None,
        "peak_mem_mb": None if peak_mb is None else round(peak_mb, 2),
        "rotation": rot,
        "flops": case.flops,
        "B": case.B,
        "T": case.T if case.suite == "rnn" else None,
        "I": case.I or None,
        "H": case.H or None,
        "heads": case.heads or None,
        "L": case.L or None,
        "S": case.S or None,
        "D": case.D or None,
        "causal": case.causal if case.suite in ATTENTION_SUITES else None,
        "sweep": case.sweep,
        **env,
    }
    if stats is not None:
        row.update(median_ms=stats.median_ms, p20_ms=stats.p20_ms, p80_ms=stats.p80_ms, samples=stats.n)
        if stats.back_to_back:
            row["note"] = "launch-bound: per-call wall time of back-to-back calls (the flushed timing was lower)"
        if stats.median_ms > 0:
            row["tflops"] = case.flops / (stats.median_ms * 1e-3) / 1e12
        if case.suite not in ATTENTION_SUITES:
            row["us_per_step"] = stats.median_ms * 1e3 / case.steps
    return row


def finite_checked(fn):
    """fn, whose first call raises if it returns a non-finite tensor (the inputs are random normal draws, so
    every output is finite): a broken kernel gets a failed row instead of a fast one, and cannot become a
    headline peer. Later calls are not checked (the check syncs)."""
    checked = []

    def call():
        out = fn()
        if not checked:
            checked.append(True)
            if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors_in(out)):
                raise RuntimeError("non-finite output on random inputs")
        return out

    return call


def _cycle(fns):
    if len(fns) == 1:
        return fns[0]
    state = {"i": 0}

    def call():
        fn = fns[state["i"]]
        state["i"] = (state["i"] + 1) % len(fns)
        return fn()

    return call


def _setup(provider, case, device, copies):
    return _cycle([finite_checked(provider.setup(case, device)) for _ in range(copies)])


def run_case_cpu(case, providers, device, env, budget):
    rot = rotation(case, "cpu")
    fns, rows = {}, {}
    for p in providers:
        try:
            fns[p.name] = _setup(p, case, device, rot)
        except Exception as err:  # a provider that cannot run gives a row; the others go on
            rows[p.name] = make_row(case, p.name, env, error=err, rot=rot)
    for name, outcome in timing.time_cpu_interleaved(fns, budget).items():
        if isinstance(outcome, Exception):
            rows[name] = make_row(case, name, env, error=outcome, rot=rot)
        else:
            rows[name] = make_row(case, name, env, stats=outcome, rot=rot)
    fns.clear()
    gc.collect()
    return [rows[p.name] for p in providers]


class StopRun(Exception):
    """Raised by run_cases after yielding a case's rows, when the run cannot go on: interrupted (the time cap of
    a GPU session sends SIGINT), or the CUDA context is lost (an illegal access poisons every later call)."""


def _cuda_cleanup():
    # -> None, or the error that shows the CUDA context is gone (a sticky error surfaces at the next sync)
    gc.collect()
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    except RuntimeError as err:
        return err
    return None


def run_case_cuda(case, providers, device, env, warmup_ms, rep_ms):
    """-> (rows, reason to stop the run or None). A provider interrupted or losing the CUDA context still gets
    its row, and so does every provider after it; the rows measured before it are kept."""
    rows, stop = [], None
    for p in providers:
        if stop is not None:
            rows.append(make_row(case, p.name, env, error=RuntimeError(f"not run: {stop}")))
            continue
        fn = None
        try:
            fn, peak = timing.cuda_peak_mb(lambda p=p: finite_checked(p.setup(case, device)))
            stats = timing.time_cuda(fn, warmup_ms=warmup_ms, rep_ms=rep_ms)
            rows.append(make_row(case, p.name, env, stats=stats, peak_mb=peak))
        except KeyboardInterrupt:
            stop = "interrupted"
            rows.append(make_row(case, p.name, env, error=RuntimeError("interrupted (the run's time cap)")))
        except Exception as err:
            rows.append(make_row(case, p.name, env, error=err))
        finally:
            del fn
            lost = _cuda_cleanup()
            if lost is not None and stop is None:
                stop = f"CUDA context lost after {p.name}: {describe_error(lost)}"
    return rows, stop


def pending_providers(case, device_type, provider_names=None, quick=False, done=frozenset()):
    """The case's providers on this device type, less the (case name, provider) pairs in done."""
    return [p for p in providers_for(case.suite, device_type, provider_names, quick)
            if (case.name, p.name) not in done]


def run_cases(cases, device, env, provider_names=None, quick=False, cpu_budget=None, warmup_ms=25,
              rep_ms=100, done=frozenset()):
    """Yields (case, rows) case by case; rows hold one row per provider of the case's suite, less the
    (case name, provider) pairs in done. Raises StopRun after the rows of a case that ended the run."""
    device = torch.device(device)
    budget = cpu_budget or timing.CpuBudget()
    if device.type == "cuda":
        timing.warm_cuda_libraries(device)
    for case in cases:
        providers = pending_providers(case, device.type, provider_names, quick, done)
        if not providers:
            continue
        if device.type == "cuda":
            rows, stop = run_case_cuda(case, providers, device, env, warmup_ms, rep_ms)
            yield case, rows
            if stop is not None:
                raise StopRun(stop)
        else:
            yield case, run_case_cpu(case, providers, device, env, budget)
