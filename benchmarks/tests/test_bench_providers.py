"""Every provider under pytest-benchmark: `pytest benchmarks --benchmark-only` times them (grouped by case);
`make test` runs each once as a smoke check, with or without --benchmark-disable.

A provider whose code is missing (Unavailable) or that cannot take the case (Unsupported) is skipped with
the reason; any other error fails the test."""

import pytest
import torch

from benchmarks.cases import Case
from benchmarks.providers import PROVIDERS, Unavailable, Unsupported

CPU_CASES = (
    Case("cell", "lstm_cell", "fwdbwd", "fp32", B=8, I=32, H=32),
    Case("cell", "gru_cell", "fwd", "fp32", B=8, I=32, H=32),
    Case("cell", "rnn_tanh_cell", "bwd", "fp32", B=8, I=16, H=32),
    Case("rnn", "lstm", "fwdbwd", "fp32", B=4, T=8, I=32, H=32),
    Case("rnn", "gru", "bwd", "fp32", B=4, T=8, I=16, H=32),
    Case("rnn", "rnn_tanh", "fwd", "fp32", B=4, T=8, I=32, H=32),
    Case("attn", "attn", "fwd", "fp32", B=1, heads=2, L=64, S=64, D=32),
    Case("attn", "attn", "bwd", "fp32", B=1, heads=2, L=64, S=96, D=32, causal=True),
    Case("varlen", "attn_varlen", "fwd", "fp32", B=3, heads=2, L=48, S=48, D=16),
    Case("varlen", "attn_varlen", "bwd", "fp32", B=3, heads=2, L=48, S=48, D=16, causal=True),
)
CUDA_CASES = (
    Case("cell", "lstm_cell", "fwdbwd", "fp16", B=256, I=768, H=768),
    Case("rnn", "lstm", "fwdbwd", "fp16", B=16, T=256, I=768, H=768),
    Case("rnn", "gru", "fwd", "fp16", B=16, T=256, I=768, H=768),
    Case("attn", "attn", "fwd", "bf16", B=4, heads=16, L=2048, S=2048, D=128, causal=True),
    Case("attn", "attn", "bwd", "bf16", B=4, heads=16, L=2048, S=2048, D=128),
    Case("varlen", "attn_varlen", "bwd", "bf16", B=8, heads=16, L=2048, S=2048, D=128, causal=True),
)


def params():
    out = []
    for device, cases, marks in (("cpu", CPU_CASES, ()), ("cuda", CUDA_CASES, (pytest.mark.gpu,))):
        for case in cases:
            for provider in PROVIDERS[case.suite]:
                if device in provider.devices:
                    marks_ = [*marks, pytest.mark.benchmark(group=f"{device}:{case.name}")]
                    if provider.compiles:
                        marks_.append(pytest.mark.compile)
                    out.append(pytest.param(case, provider, device, marks=marks_,
                                            id=f"{device}-{case.name}-{provider.name}"))
    return out


def synchronized(fn, device):
    if device != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("case, provider, device", params())
def test_provider(benchmark, full_benchmarks, case, provider, device):
    if provider.compiles and not full_benchmarks:
        # Inductor takes 10-60 s a graph (C++ on 2 CPU cores, Triton on a GPU): beyond a smoke check's budget.
        # --benchmark-only and python -m benchmarks run them.
        pytest.skip("torch.compile providers run under --benchmark-only, not in the smoke check")
    try:
        fn = provider.setup(case, device)
    except (Unavailable, Unsupported) as why:
        pytest.skip(f"{provider.name}: {why}")
    fn = synchronized(fn, device)
    if full_benchmarks:
        fn()  # compile / lazy init outside the timed rounds
        fn()
        benchmark(fn)
    else:
        benchmark.pedantic(fn, rounds=1, iterations=1)
    benchmark.extra_info.update(flops=case.flops, provider=provider.name, case=case.name)


def test_a_refusing_sdpa_backend_gets_its_reasons_in_the_row():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.providers.attention import refuse_with_reasons

    q = torch.randn(1, 2, 8, 16)

    def refused():  # the CPU flash kernel has no dropout
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return torch.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.5)

    with pytest.raises(Unsupported, match=r"^SDPA FLASH_ATTENTION refuses this case: .*dropout") as info:
        refuse_with_reasons(refused, "SDPA FLASH_ATTENTION")
    assert "Triggered internally" not in str(info.value) and "not used because" not in str(info.value)
    refuse_with_reasons(lambda: q.sum(), "SDPA MATH")  # a call that runs passes

    def broken():  # an error with no refusal warnings is the error itself
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError, match="something else"):
        refuse_with_reasons(broken, "SDPA MATH")
