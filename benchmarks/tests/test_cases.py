"""Case names (the headline.json keys), FLOP counts and case selection."""

import pytest

from benchmarks import cases as C
from benchmarks.cases import Case


def test_headline_cases_have_the_issue_names():
    got = [c.name for c in C.headline_cases()]
    assert sorted(got) == sorted(C.HEADLINE)
    lstm = next(c for c in C.headline_cases() if c.name == "lstm.fwd.B16.T1024.H768.fp16")
    assert (lstm.I, lstm.H, lstm.T, lstm.B) == (768, 768, 1024, 16)


def test_gpu_default_covers_headline_and_sweeps():
    default = C.select(C.default_cases("cuda"))
    names = {c.name for c in default}
    assert set(C.HEADLINE) <= names
    tags = set().union(*(C.sweep_tags(c.sweep) for c in default))
    assert {"batch", "hidden", "seqlen"} <= tags
    assert {c.dtype for c in default if c.suite == "rnn"} == {"fp32", "fp16", "bf16"}


def test_varlen_lengths_spread_from_a_quarter_to_the_longest():
    assert C.varlen_lengths(3, 8) == [2, 5, 8]
    lengths = C.varlen_lengths(16, 4096)
    assert (min(lengths), max(lengths), len(lengths)) == (1024, 4096, 16) and lengths == sorted(lengths)
    assert C.varlen_lengths(1, 100) == [100]
    case = Case("varlen", "attn_varlen", "bwd", "bf16", B=16, heads=16, L=4096, S=4096, D=128, causal=True)
    assert case.name == "varlen.bwd.causal.B16.H16.L4096.D128.bf16"
    assert {c.suite for c in C.default_cases("cuda")} >= {"varlen"} and {c.suite for c in C.default_cases("cpu")} >= {
        "varlen"}


def test_cpu_default_starts_with_the_lstm_cell_and_stays_small():
    default = C.select(C.default_cases("cpu"))
    assert default[0].op == "lstm_cell"
    assert all(c.working_bytes < 64 * 2**20 for c in default)


@pytest.mark.parametrize(
    "case, fwd_flops",
    [
        # 4*B*H*L*S*D = 4*2*3*5*7*11
        (Case("attn", "attn", "fwd", "bf16", B=2, heads=3, L=5, S=7, D=11), 4 * 2 * 3 * 5 * 7 * 11),
        (Case("attn", "attn", "fwd", "bf16", B=2, heads=3, L=5, S=7, D=11, causal=True), 2 * 2 * 3 * 5 * 77),
        # varlen: each sequence's own L*L, lengths 2, 5, 8 (L/4 to L = 8): 4*H*D*(4 + 25 + 64)
        (Case("varlen", "attn_varlen", "fwd", "bf16", B=3, heads=3, L=8, S=8, D=11), 4 * 3 * 11 * 93),
        (Case("varlen", "attn_varlen", "fwd", "bf16", B=3, heads=3, L=8, S=8, D=11, causal=True), 2 * 3 * 11 * 93),
        # LSTM: 2*T*B*4H*(I+H) = 2*3*2*20*(7+5)
        (Case("rnn", "lstm", "fwd", "fp32", B=2, T=3, I=7, H=5), 2 * 3 * 2 * 20 * 12),
        (Case("rnn", "gru", "fwd", "fp32", B=2, T=3, I=7, H=5), 2 * 3 * 2 * 15 * 12),
        (Case("cell", "rnn_tanh_cell", "fwd", "fp32", B=2, I=7, H=5), 2 * 2 * 5 * 12),
    ],
)
def test_forward_flops(case, fwd_flops):
    assert case.flops == fwd_flops


def test_backward_flop_factors():
    attn = Case("attn", "attn", "fwd", "bf16", B=1, heads=1, L=8, S=8, D=4)
    assert C.Case(**{**attn.__dict__, "mode": "bwd"}).flops == 2.5 * attn.flops
    assert C.Case(**{**attn.__dict__, "mode": "fwdbwd"}).flops == 3.5 * attn.flops
    rnn = Case("rnn", "lstm", "fwd", "fp32", B=1, T=2, I=3, H=3)
    assert C.Case(**{**rnn.__dict__, "mode": "fwdbwd"}).flops == 3 * rnn.flops


@pytest.mark.parametrize("bad", [dict(op="conv"), dict(mode="train"), dict(dtype="fp8")])
def test_case_rejects_unknown_fields(bad):
    with pytest.raises(ValueError):
        Case(**{"suite": "rnn", "op": "lstm", "mode": "fwd", "dtype": "fp32", "B": 1, **bad})


def test_names():
    attn = Case("attn", "attn", "bwd", "fp16", B=1, heads=2, L=4, S=8, D=16)
    assert attn.name == "attn.bwd.B1.H2.L4.S8.D16.fp16"
    assert Case("rnn", "gru", "fwd", "fp32", B=1, T=2, I=3, H=4).name == "gru.fwd.B1.T2.I3.H4.fp32"
    assert Case("cell", "lstm_cell", "fwdbwd", "bf16", B=8, I=4, H=4).name == "lstm_cell.fwdbwd.B8.H4.bf16"


def test_dedupe_joins_sweep_tags():
    base = Case("rnn", "lstm", "fwd", "fp32", B=1, T=2, I=3, H=3)
    a = C.Case(**{**base.__dict__, "sweep": "batch"})
    b = C.Case(**{**base.__dict__, "sweep": "hidden"})
    (merged,) = C.dedupe([base, a, b])
    assert C.sweep_tags(merged.sweep) == {"base", "batch", "hidden"} and C.is_base(merged.sweep)
    (sweep_only,) = C.dedupe([a, b])
    assert not C.is_base(sweep_only.sweep)


def test_select_and_override_sizes():
    everything = C.cpu_cases()
    lstm_fwd = C.select(everything, ops=["lstm"], modes=["fwd"])
    assert lstm_fwd and all(c.gate_op == "lstm" and c.mode == "fwd" for c in lstm_fwd)
    assert {c.suite for c in lstm_fwd} == {"cell", "rnn"}  # "lstm" picks the layer and its cell
    attn = C.select(everything, suites=["attn"], contains=["causal"])
    assert attn and all(c.causal for c in attn)
    resized = C.override_sizes(C.select(everything, suites=["rnn", "attn"]), B=[3], T=[5], L=[7], H=[9])
    for c in resized:
        assert c.B == 3
        if c.suite == "rnn":
            assert (c.T, c.H, c.I) == (5, 9, 9)
        else:
            assert (c.L, c.S) == (7, 7) and c.heads != 9
    assert len({c.name for c in resized}) == len(resized)
