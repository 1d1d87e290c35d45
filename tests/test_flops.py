"""torch.utils.flop_counter counts seqops' ops: SDPA's formulas for attention, the GEMMs of the RNN ops."""

import importlib
import subprocess
import sys
import types

import pytest
import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import seqops


def _count(fn):
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("gqa", [False, True])
def test_attention_counts_sdpa_s_formulas(gqa):
    # torch's counter has formulas for SDPA's CUDA kernels (its CPU flash kernel counts 0): seqops' ops use them.
    B, H, L, S, E = 2, 4, 33, 40, 16
    hkv = 2 if gqa else H
    q = torch.randn(B, H, L, E, requires_grad=True)
    k, v = (torch.randn(B, hkv, S, E, requires_grad=True) for _ in range(2))
    forward = 2 * (2 * B * H * L * S * E)  # QK^T and PV, the whole score matrix as for SDPA
    assert _count(lambda: seqops.attention(q, k, v, is_causal=True, enable_gqa=gqa)) == forward
    total = _count(lambda: seqops.attention(q, k, v, is_causal=True, enable_gqa=gqa).sum().backward())
    shape = (B, H, L, E)
    full = (B, H, S, E)
    assert total == forward + flop_counter.sdpa_backward_flop_count(shape, shape, full, full)
    assert total - forward == 5 * (2 * B * H * L * S * E)  # scores recomputed, dP, dV, dQ, dK


def test_packed_sequences_count_each_sequence():
    # As the counter does for SDPA on nested tensors: each sequence's own L x S scores, no padding.
    lengths_q, lengths_k, H, E, EV = [5, 0, 12], [7, 3, 9], 4, 16, 8
    q = torch.randn(sum(lengths_q), H, E, requires_grad=True)
    k = torch.randn(sum(lengths_k), 2, E, requires_grad=True)
    v = torch.randn(sum(lengths_k), 2, EV, requires_grad=True)
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(n).cumsum(0).tolist()]) for n in (lengths_q, lengths_k))
    pairs = sum(lq * lk for lq, lk in zip(lengths_q, lengths_k))
    forward = 2 * H * pairs * (E + EV)
    attend = lambda: seqops.attention_varlen(q, k, v, cu_q, cu_k, enable_gqa=True)  # noqa: E731
    assert _count(attend) == forward
    backward = 2 * H * pairs * (3 * E + 2 * EV)  # scores, dQ and dK over E; dP and dV over Ev
    assert _count(lambda: attend().sum().backward()) == forward + backward


def test_rnn_layers_and_cells_count_their_gemms():
    T, B, I, H = 6, 3, 4, 5
    x = torch.randn(T, B, I, requires_grad=True)
    N = T * B
    for mode, gates in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        G = gates * H
        m = getattr(seqops, mode)(I, H)
        forward = 2 * N * G * (I + H)
        assert _count(lambda m=m: m(x)) == forward
        backward = 2 * N * G * (2 * I + 2 * H)  # dx, dW_ih, dW_hh, the recurrent dh
        assert _count(lambda m=m: m(x)[0].sum().backward()) == forward + backward
    # A projected LSTM adds its projection forward and two GEMMs backward.
    P = 2
    m = seqops.LSTM(I, H, proj_size=P)
    assert _count(lambda: m(x)) == 2 * N * 4 * H * (I + P) + 2 * N * H * P
    cell = seqops.GRUCell(I, H)
    xb = torch.randn(B, I)
    assert _count(lambda: cell(xb)) == 2 * B * 3 * H * (I + H)


def test_gru_counts_close_to_torch_nn():
    # torch.nn's composite GRU skips the dh of the first step (h0 needs no grad); seqops' op computes it.
    x = torch.randn(6, 3, 4, requires_grad=True)
    theirs, ours = nn.GRU(4, 5), seqops.GRU(4, 5)
    counts = [_count(lambda m=m: m(x)[0].sum().backward()) for m in (theirs, ours)]
    assert counts[1] - counts[0] == 2 * 3 * 5 * 15


def _fresh_python(code):
    """code run in a new interpreter (a clean sys.modules); its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


_COUNT_AN_LSTM = ("import torch\n"
                  "m = seqops.LSTM(8, 8)\n"
                  "with FlopCounterMode(display=False) as counter:\n"
                  "    m(torch.randn(5, 2, 8))\n"
                  "print(counter.get_total_flops())\n")


def test_import_seqops_leaves_the_flop_counter_and_triton_unloaded():
    # They cost ~85 ms and ~75 MiB: seqops registers its formulas when the program imports the counter
    loaded = _fresh_python("import sys, seqops\n"
                           "print(sorted({'torch.utils.flop_counter', 'triton'} & set(sys.modules)))")
    assert loaded == "[]"


@pytest.mark.parametrize("counter_first", [False, True])
def test_the_counter_counts_seqops_whichever_is_imported_first(counter_first):
    imports = ["import seqops", "from torch.utils.flop_counter import FlopCounterMode"]
    if counter_first:
        imports.reverse()
    flops = _fresh_python("\n".join(imports) + "\n" + _COUNT_AN_LSTM)
    assert int(flops) == 2 * 5 * 2 * 32 * (8 + 8)  # the input projection and the recurrent GEMMs


def test_the_after_import_hook_keeps_the_module_s_loader_and_survives_a_failing_callback(tmp_path, monkeypatch):
    from seqops import _after_import

    calls = []
    _after_import.after_import("json", lambda: calls.append("now"))  # already imported: at once
    assert calls == ["now"]
    name = "seqops_test_module_imported_later"
    (tmp_path / f"{name}.py").write_text("VALUE = 3\n")
    (tmp_path / f"{name}_failing.py").write_text("VALUE = 4\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _after_import.after_import(name, lambda: calls.append(sys.modules[name].VALUE))
    assert calls == ["now"]
    module = importlib.import_module(name)
    assert calls == ["now", 3] and isinstance(module, types.ModuleType)
    assert "VALUE = 3" in module.__loader__.get_source(name)  # the real loader behind it
    assert not any(isinstance(f, _after_import._Watch) for f in sys.meta_path)  # once
    _after_import.after_import(name + "_failing", lambda: 1 / 0)
    with pytest.warns(UserWarning, match="ZeroDivisionError"):
        assert importlib.import_module(name + "_failing").VALUE == 4  # the user's import still works
