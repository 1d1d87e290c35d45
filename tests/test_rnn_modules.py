"""seqops.LSTM / GRU / RNN against torch.nn with the same weights: every option, outputs, final states and
every gradient; constructor, state_dict, dtype conversions, dropout, bad inputs, low precision, autocast."""

import contextlib
import io
import itertools
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import seqops
from seqops.ops import rnn_layer
from seqops.ops.rnn_stack import rnn_stack, weights_from_flat, weights_from_module

# Helper modules next to the tests (pytest puts tests/ on sys.path).
from conftest import raise_alike  # isort: skip
from rnn_module_cases import (  # isort: skip
    B, H, I, LENGTHS, MODES, P, T, assert_same_results, make_inputs, module_pair, pairwise_cases, run,
)

# torch.nn.LSTM with proj_size says so on the CPU; it is about torch.nn, not the module under test.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

BASE = {
    "num_layers": [1, 2],
    "bidirectional": [False, True],
    "layout": ["batched", "unbatched", "packed"],
    "with_hx": [False, True],
}
EXTRA = {
    "bias": [True, False],
    "batch_first": [False, True],
    "dtype": [torch.float64, torch.float32],
    "training": [False, True],  # eval too: backward must work there (cuDNN's does not)
    "noncontiguous": [False, True],
}


def _sweep():
    for mode in MODES:
        extra = dict(EXTRA, proj_size=[0, P]) if mode == "LSTM" else EXTRA
        for case in pairwise_cases(BASE, extra):
            case_id = "-".join(
                f"{k}={str(v).replace('torch.', '')}" if not isinstance(v, bool) else (k if v else f"no_{k}")
                for k, v in case.items()
            )
            yield pytest.param(mode, case, id=f"{mode}-{case_id}")


def _module_options(case):
    keys = ("num_layers", "bidirectional", "bias", "batch_first", "proj_size")
    return {k: case[k] for k in keys if k in case}


@pytest.mark.parametrize("mode,case", list(_sweep()))
def test_matches_torch_nn(mode, case):
    theirs, ours = module_pair(mode, **_module_options(case))
    dtype = case["dtype"]
    theirs.to(dtype).train(case["training"])
    ours.to(dtype).train(case["training"])
    inp, hx, leaves = make_inputs(mode, case, dtype)
    expected = run(theirs, mode, inp, hx, leaves)
    actual = run(ours, mode, inp, hx, leaves)
    assert_same_results(actual, expected)


def test_sweep_covers_every_pair():
    # The sweep's promise, checked: every value of every option meets every value of every other option.
    for mode in MODES:
        extra = dict(EXTRA, proj_size=[0, P]) if mode == "LSTM" else EXTRA
        cases = pairwise_cases(BASE, extra)
        options = {**BASE, **extra}
        names = list(options)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                seen = {(c[a], c[b]) for c in cases}
                assert len(seen) == len(options[a]) * len(options[b]), (mode, a, b)


# ---- constructor, parameters, state_dict ----


@pytest.mark.parametrize(
    "mode,args,kwargs",
    [
        ("LSTM", (I, H, 2, False, True, 0.25, True, P), {}),
        ("LSTM", (I, H), {"num_layers": 3, "proj_size": 2, "bidirectional": True, "dtype": torch.float64}),
        ("GRU", (I, H, 2, True, False, 0.0, True), {}),
        ("GRU", (I, H), {"bias": False, "batch_first": True}),
        ("RNN", (I, H, 2, "relu", False), {}),
        ("RNN", (I, H), {"nonlinearity": "relu", "bidirectional": True}),
    ],
)
def test_constructor_parameters_init_repr_match_torch(mode, args, kwargs):
    torch_cls, seqops_cls = getattr(nn, mode), getattr(seqops, mode)
    torch.manual_seed(3)
    theirs = torch_cls(*args, **kwargs)
    torch.manual_seed(3)
    ours = seqops_cls(*args, **kwargs)
    assert isinstance(ours, nn.RNNBase)
    assert repr(ours) == repr(theirs)
    theirs_params, ours_params = dict(theirs.named_parameters()), dict(ours.named_parameters())
    assert list(ours_params) == list(theirs_params)
    for name, p in theirs_params.items():
        # Same names, shapes, dtypes and values: init draws the same numbers in the same order.
        assert ours_params[name].dtype == p.dtype
        torch.testing.assert_close(ours_params[name], p, rtol=0, atol=0)
    for attr in ("mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size", "_flat_weights_names"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.all_weights is not None and len(ours.all_weights) == len(theirs.all_weights)


@pytest.mark.parametrize(
    "mode,kwargs,error",
    [
        ("GRU", {"proj_size": 2}, ValueError),
        ("RNN", {"proj_size": 2}, ValueError),
        ("RNN", {"nonlinearity": "sigmoid"}, ValueError),
        ("LSTM", {"proj_size": H}, ValueError),
        ("LSTM", {"dropout": 1.5}, ValueError),
        ("LSTM", {"bias": 1}, TypeError),
        ("GRU", {"num_layers": 0}, ValueError),
    ],
)
def test_constructor_errors_match_torch(mode, kwargs, error):
    with pytest.raises(error) as theirs:
        getattr(nn, mode)(I, H, **kwargs)
    with pytest.raises(error) as ours:
        getattr(seqops, mode)(I, H, **kwargs)
    assert str(ours.value) == str(theirs.value)


def test_dropout_on_single_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        seqops.GRU(I, H, dropout=0.5)


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_loads_both_ways(mode):
    options = {"num_layers": 2, "bidirectional": True, **({"proj_size": P} if mode == "LSTM" else {})}
    theirs, ours = module_pair(mode, **options)
    other_theirs, other_ours = module_pair(mode, seed=7, **options)
    # seqops -> torch.nn
    other_theirs.load_state_dict(ours.state_dict())
    # torch.nn -> seqops (strict: same keys)
    other_ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    case = {"num_layers": 2, "bidirectional": True, "layout": "batched", "with_hx": False,
            "batch_first": False, "proj_size": options.get("proj_size", 0)}
    inp, hx, leaves = make_inputs(mode, case, torch.float32)
    assert_same_results(run(other_theirs, mode, inp, hx, leaves), run(theirs, mode, inp, hx, leaves))
    assert_same_results(run(other_ours, mode, inp, hx, leaves), run(theirs, mode, inp, hx, leaves))


def test_pickle_and_torch_save_round_trip():
    _, ours = module_pair("LSTM", num_layers=2, proj_size=P)
    x = torch.randn(T, B, I)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is seqops.LSTM
    torch.testing.assert_close(loaded(x)[0], ours(x)[0])
    torch.testing.assert_close(pickle.loads(pickle.dumps(ours))(x)[0], ours(x)[0])


def test_flatten_parameters_is_accepted():
    theirs, ours = module_pair("GRU", num_layers=2)
    ours.flatten_parameters()
    x = torch.randn(T, B, I)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


# ---- dtypes and devices ----


@pytest.mark.parametrize("convert", ["double", "to", "half", "bfloat16"])
def test_dtype_conversions_follow_torch(convert):
    theirs, ours = module_pair("LSTM", num_layers=2, proj_size=P)
    apply = {
        "double": lambda m: m.double(),
        "to": lambda m: m.to(torch.float64),
        "half": lambda m: m.half(),
        "bfloat16": lambda m: m.bfloat16(),
    }[convert]
    apply(theirs)
    apply(ours)
    dtype = theirs.weight_ih_l0.dtype
    assert all(p.dtype == dtype for p in ours.parameters())
    assert all(w.dtype == dtype for w in ours._flat_weights)
    if dtype == torch.float64:  # float64 on the CPU computes; fp16/bf16 on the CPU are checked on CUDA below
        x = torch.randn(T, B, I, dtype=dtype)
        y_theirs, (h_theirs, c_theirs) = theirs(x)
        y_ours, (h_ours, c_ours) = ours(x)
        torch.testing.assert_close(y_ours, y_theirs)
        torch.testing.assert_close(c_ours, c_theirs)


def test_functional_call_uses_the_given_weights():
    theirs, ours = module_pair("GRU", num_layers=2, bidirectional=True)
    _, other = module_pair("GRU", seed=5, num_layers=2, bidirectional=True)
    weights = dict(other.named_parameters())
    x = torch.randn(T, B, I)
    expected = torch.func.functional_call(theirs, weights, (x,))
    actual = torch.func.functional_call(ours, weights, (x,))
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grad", [False, True])
def test_vmap_over_an_ensemble_and_over_inputs(mode, grad):
    # float32 LSTM without grad is oneDNN's aten::lstm, which has no batching rule: under vmap seqops' op runs.
    modules = [module_pair(mode, seed=seed, num_layers=2)[1] for seed in range(3)]
    params, buffers = torch.func.stack_module_state(modules)
    x = torch.randn(T, B, I)
    with torch.set_grad_enabled(grad):
        ensemble = torch.func.vmap(lambda p, b: torch.func.functional_call(modules[0], (p, b), (x,)))(params, buffers)
        expected = [m(x) for m in modules]
        xs = torch.randn(2, T, B, I)
        over_inputs = torch.func.vmap(modules[0])(xs)
        expected_over_inputs = [modules[0](xi) for xi in xs]
    stacked = lambda results: torch.utils._pytree.tree_map(lambda *t: torch.stack(t), *results)  # noqa: E731
    torch.testing.assert_close(ensemble, stacked(expected))
    torch.testing.assert_close(over_inputs, stacked(expected_over_inputs))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_no_grad_and_inference_mode_give_the_training_forward_values(mode, context):
    # Without grad the layer ops are called below their autograd kernel (call_op): the same kernels, the same
    # numbers, and no graph (LSTM too: a batch of 3 is under the batch at which CPU inference takes oneDNN).
    _, ours = module_pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    expected = ours(x)
    with context():
        actual = ours(x)
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)):
        assert not a.requires_grad
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("setting,dtype,batch,steps,hidden,onednn", [
    # auto: float32 takes oneDNN at a batch of 8 or more over max(64, weight elements / 1024) rows
    ("auto", torch.float32, 1, 1, 256, False),      # decoding: oneDNN measured 5x slower
    ("auto", torch.float32, 4, 64, 256, False),     # a batch under 8
    ("auto", torch.float32, 32, 1, 512, False),     # 32 rows, under 2^21 / 1024 = 2048
    ("auto", torch.float32, 32, 64, 512, True),     # 2048 rows
    ("auto", torch.float32, 8, 8, 6, True),         # 64 rows of small weights
    ("auto", torch.float32, 8, 7, 6, False),        # 56
    ("auto", torch.bfloat16, 1, 1, 256, True),      # bfloat16: always (seqops computes it in float32)
    ("onednn", torch.float32, 1, 1, 256, True),
    ("fused", torch.float32, 32, 64, 512, False),
    ("fused", torch.bfloat16, 8, 8, 6, False),
])
@pytest.mark.parametrize("batch_first", [False, True])
def test_cpu_lstm_inference_takes_onednn_where_it_pays(monkeypatch, setting, dtype, batch, steps, hidden, onednn,
                                                       batch_first):
    monkeypatch.setattr(rnn_layer, "CPU_LSTM_INFERENCE", setting)
    calls = []
    monkeypatch.setattr(rnn_layer, "_onednn_lstm", lambda *args: calls.append("layer") or None)
    stack = seqops.nn.rnn._SeqopsRNNBase._onednn_lstm_stack
    monkeypatch.setattr(seqops.nn.rnn._SeqopsRNNBase, "_onednn_lstm_stack",
                        lambda *args: calls.append("stack") or stack(*args))
    torch.manual_seed(0)
    theirs = nn.LSTM(hidden, hidden, batch_first=batch_first).to(dtype).eval()
    ours = seqops.LSTM(hidden, hidden, batch_first=batch_first).to(dtype).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(*((batch, steps) if batch_first else (steps, batch)), hidden, dtype=dtype)
    with torch.no_grad():
        actual, expected = ours(x), theirs(x)
    assert calls == (["stack"] if onednn else [])
    if onednn:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    elif dtype == torch.float32:  # seqops' kernels: float32's rounding
        torch.testing.assert_close(actual, expected)


_WEIGHT_LAYOUTS = [{}, {"bias": False}, {"num_layers": 3, "bidirectional": True},
                   {"proj_size": 3, "num_layers": 2, "bidirectional": True}, {"proj_size": 3, "bias": False}]


@pytest.mark.parametrize("mode,kwargs", [(m, k) for m in MODES for k in _WEIGHT_LAYOUTS
                                         if m == "LSTM" or "proj_size" not in k])
def test_forward_reads_the_same_weights_as_weights_from_module(mode, kwargs):
    # The modules' forward reads torch.nn's _flat_weights list (weights_from_flat): the same tensors, in order.
    _, ours = module_pair(mode, **kwargs)
    ours._update_flat_weights()
    flat, named = weights_from_flat(ours), weights_from_module(ours)
    assert len(flat) == len(named)
    for a, b in zip(flat, named):
        assert all(x is y for x, y in zip(a, b))


# ---- dropout ----


@pytest.mark.parametrize("mode", MODES)
def test_dropout_one_zeroes_the_upper_layer_input_like_torch(mode):
    # p = 1 is deterministic (everything dropped), so training-mode dropout can be compared with torch.nn.
    theirs, ours = module_pair(mode, num_layers=3, dropout=1.0, bidirectional=True)
    theirs.train()
    ours.train()
    case = {"num_layers": 3, "bidirectional": True, "layout": "batched", "with_hx": True,
            "batch_first": False}
    inp, hx, leaves = make_inputs(mode, case, torch.float64)
    theirs.double()
    ours.double()
    actual = run(ours, mode, inp, hx, leaves)
    expected = run(theirs, mode, inp, hx, leaves)
    assert_same_results(actual, expected)
    assert actual["grad_weight_ih_l1"].abs().sum() == 0  # layer 1 only ever saw zeros


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_dropout_applies_between_layers_in_training_only(mode):
    theirs, ours = module_pair(mode, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, I)
    # Training: the same masks as the shared stack over the reference layer, drawn from the same seed.
    ours.train()
    torch.manual_seed(11)
    actual = ours(x)
    torch.manual_seed(11)
    expected = rnn_stack(ours.mode, x, None, weights_from_module(ours), num_layers=2, bidirectional=False,
                         dropout=0.5, training=True, layer=seqops.reference.rnn_layer)
    torch.testing.assert_close(actual[0], expected[0])
    # ... and dropout did act: eval (no dropout) differs.
    ours.eval()
    theirs.eval()
    assert not torch.allclose(ours(x)[0], actual[0])
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


# ---- packed sequences ----


@pytest.mark.parametrize("mode", MODES)
def test_packed_in_packed_out_keeps_indices(mode):
    theirs, ours = module_pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, 4, I)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 1, 5]), enforce_sorted=False)
    out_theirs, _ = theirs(packed)
    out_ours, _ = ours(packed)
    assert type(out_ours) is type(out_theirs)
    assert torch.equal(out_ours.batch_sizes, out_theirs.batch_sizes)
    assert torch.equal(out_ours.sorted_indices, out_theirs.sorted_indices)
    assert torch.equal(out_ours.unsorted_indices, out_theirs.unsorted_indices)
    torch.testing.assert_close(out_ours.data, out_theirs.data)


# ---- gradients: first order by finite differences, second order ----


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [{}, {"batch_first": True}, {"num_layers": 2, "bidirectional": True}])
def test_truncated_bptt_detaches_the_carried_state_in_place_like_torch(mode, options):
    # The common idiom: h.detach_() between chunks. torch.nn's h_n and c_n are not views, so it works there.
    theirs, ours = module_pair(mode, **options)
    x = torch.randn(3, B, T, I) if options.get("batch_first") else torch.randn(3, T, B, I)
    grads, finals = [], []
    for module in (theirs, ours):
        state = None
        for chunk in x:
            out, state = module(chunk, state)
            out.sum().backward()
            for s in state if isinstance(state, tuple) else (state,):
                s.detach_()
        grads.append([p.grad for p in module.parameters()])
        finals.append(state if isinstance(state, tuple) else (state,))
    for got, want in zip(grads[1] + list(finals[1]), grads[0] + list(finals[0])):
        torch.testing.assert_close(got, want)
    assert not any(s.requires_grad for s in finals[1])


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode):
    # Tiny sizes: finite differences cost two forwards per input element and weight.
    cls = {"LSTM": seqops.LSTM, "GRU": seqops.GRU, "RNN_TANH": seqops.RNN, "RNN_RELU": seqops.RNN}[mode]
    options = {"num_layers": 2, "bidirectional": True, "dtype": torch.float64}
    if mode == "LSTM":
        options["proj_size"] = 2
    if mode.startswith("RNN"):
        options["nonlinearity"] = mode[4:].lower()
    ours = cls(2, 3, **options)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    params = list(ours.parameters())
    names = [n for n, _ in ours.named_parameters()]

    def f(x, *weights):
        out, state = torch.func.functional_call(ours, dict(zip(names, weights)), (x,))
        return (out, *state) if mode == "LSTM" else (out, state)

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


# ---- bad inputs: torch.nn's error types (and messages where torch.nn's come from Python) ----


def _bad_inputs():
    x = torch.randn(T, B, I)
    h = torch.randn(1, B, H)
    yield "wrong_input_size", "GRU", (torch.randn(T, B, I + 1), None), RuntimeError, True
    yield "4d_input", "GRU", (torch.randn(T, B, I, 1), None), ValueError, True
    yield "1d_input", "RNN", (torch.randn(I), None), ValueError, True
    yield "wrong_dtype_input", "LSTM", (x.double(), None), ValueError, True
    yield "integer_input", "GRU", (torch.ones(T, B, I, dtype=torch.long), None), ValueError, True
    yield "wrong_h0_batch", "GRU", (x, torch.randn(1, B + 1, H)), RuntimeError, True
    yield "wrong_h0_size", "RNN", (x, torch.randn(1, B, H + 1)), RuntimeError, True
    yield "wrong_h0_layers", "GRU", (x, torch.randn(2, B, H)), RuntimeError, True
    yield "2d_h0_for_batched", "GRU", (x, torch.randn(B, H)), RuntimeError, True
    yield "3d_h0_for_unbatched", "RNN", (torch.randn(T, I), h), RuntimeError, True
    yield "wrong_c0", "LSTM", (x, (h, torch.randn(1, B, H + 1))), RuntimeError, True
    yield "wrong_h0_lstm", "LSTM", (x, (torch.randn(1, B, H + 1), h)), RuntimeError, True
    yield "2d_states_for_batched_lstm", "LSTM", (x, (h[0], h[0])), RuntimeError, True
    yield "h0_dtype", "GRU", (x, h.double()), RuntimeError, False
    yield "c0_dtype", "LSTM", (x, (h, h.double())), RuntimeError, False
    yield "empty_sequence", "LSTM", (torch.randn(0, B, I), None), RuntimeError, True
    packed = pack_padded_sequence(torch.randn(T, 2, I), torch.tensor([5, 3]))
    yield "packed_wrong_h0", "GRU", (packed, torch.randn(1, 3, H)), RuntimeError, True


@pytest.mark.parametrize(
    "name,mode,args,error,same_message", list(_bad_inputs()), ids=[case[0] for case in _bad_inputs()]
)
def test_bad_inputs_raise_like_torch(name, mode, args, error, same_message):
    ours_message, theirs_message = raise_alike(error, *module_pair(mode), args)
    if same_message:
        assert ours_message == theirs_message
    else:  # torch.nn's message comes from deep inside a kernel; ours says what is wrong
        assert "hidden" in ours_message and "dtype" in ours_message


def test_packed_lstm_with_wrong_state_raises():
    # torch.nn.LSTM leaves this check to its C++ kernel; ours makes it up front, with RuntimeError too.
    _, ours = module_pair("LSTM")
    packed = pack_padded_sequence(torch.randn(T, 2, I), torch.tensor([5, 3]))
    h = torch.randn(1, 3, H)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 6\), got \[1, 3, 6\]"):
        ours(packed, (h, h))


def test_bad_packed_input_raises_as_padded_does():
    # torch.nn fails on these deep inside (a matmul's RuntimeError, an IndexError); ours raise what the same
    # mistake on a padded tensor raises (README: "Where seqops and torch.nn differ").
    _, ours = module_pair("LSTM")
    x = torch.randn(T, 2, I)
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight dtype"):
        ours(pack_padded_sequence(x.double(), torch.tensor([5, 3])))
    h = torch.randn(2, H)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(1, 2, 6\), got \[2, 6\]"):
        ours(pack_padded_sequence(x, torch.tensor([5, 3])), (h, h))


@pytest.mark.parametrize("mode", MODES)
def test_states_with_more_rows_than_an_unsorted_packed_batch_raise(mode):
    # torch.nn reorders the states by sorted_indices first, which drops the extra rows without a word.
    _, ours = module_pair(mode)
    packed = pack_padded_sequence(torch.randn(T, 2, I), torch.tensor([3, 5]), enforce_sorted=False)
    h = torch.randn(1, 3, H)
    with pytest.raises(RuntimeError, match=r"size \(1, 2, 6\), got \[1, 3, 6\]"):
        ours(packed, (h, h) if mode == "LSTM" else h)


def test_tensors_on_different_devices_raise():
    # Two devices without a GPU: the meta device stands in for the other one.
    _, ours = module_pair("LSTM")
    x, h = torch.randn(T, B, I), torch.randn(1, B, H)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        ours(x, (h, h.to("meta")))
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
        ours.to("meta")(x)


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_like_torch(mode):
    theirs, ours = module_pair(mode, num_layers=2)
    x = torch.randn(T, 0, I)
    out_theirs, _ = theirs(x)
    out_ours, state = ours(x)
    assert out_ours.shape == out_theirs.shape
    assert (state[0] if mode == "LSTM" else state).shape == (2, 0, H)


@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_like_torch(mode):
    theirs, ours = module_pair(mode, num_layers=2)
    x = torch.randn(T, B, I)
    x[2, 1, 0] = float("nan")
    out_theirs, _ = theirs(x)
    out_ours, _ = ours(x)
    assert torch.equal(out_ours.isnan(), out_theirs.isnan())
    assert out_ours.isnan().any()


def test_module_is_an_rnnbase_but_not_an_nn_lstm():
    # Deliberate: Dynamo refuses to trace instances of nn.LSTM/GRU/RNN (see seqops/nn/rnn.py).
    assert isinstance(seqops.LSTM(I, H), nn.RNNBase)
    assert not isinstance(seqops.LSTM(I, H), nn.LSTM)


# ---- low precision: fp32 on CUDA against float64; fp16/bf16 by the FlashAttention rule ----


def _max_errors(results, reference):
    return {k: (results[k].double() - reference[k].double()).abs().max().item() for k in reference
            if results[k].is_floating_point()}


def _on(device, *args):
    return pytest.param(device, *args, marks=[pytest.mark.gpu] if device == "cuda" else [])


def _low_precision_params():
    for mode in MODES:
        for layout in ("batched", "packed"):
            yield _on("cuda", mode, torch.float32, layout)
            for dtype in (torch.float16, torch.bfloat16):
                yield from (_on(device, mode, dtype, layout) for device in ("cpu", "cuda"))


def _low_precision_case(mode, layout):
    # ReLU: one layer. Between layers the output is rounded to the low-precision dtype (in torch.nn too), which
    # moves the next layer's pre-activations by ~1e-2 in bf16; one that crosses 0 flips relu's derivative and a
    # whole row of gradient with it, in whichever run it happens to cross: a coin toss, not a measure of error.
    layers = 1 if mode == "RNN_RELU" else 2
    case = {"num_layers": layers, "bidirectional": True, "layout": layout, "with_hx": True, "batch_first": True}
    options = {"num_layers": layers, "bidirectional": True, "batch_first": True}
    if mode == "LSTM":
        case["proj_size"] = options["proj_size"] = P
    return case, options


@pytest.mark.parametrize("device,mode,dtype,layout", list(_low_precision_params()))
def test_low_precision_matches_torch_nn(device, mode, dtype, layout):
    _check_low_precision_against_torch_nn(device, mode, dtype, layout)


def _check_low_precision_against_torch_nn(device, mode, dtype, layout):
    case, options = _low_precision_case(mode, layout)
    theirs, ours = module_pair(mode, **options)
    _, _, leaves64 = make_inputs(mode, case, torch.float64, device)
    leaves = [t.detach().to(dtype).requires_grad_() for t in leaves64]

    def inputs(leaves):
        inp = leaves[0]
        if layout == "packed":
            inp = pack_padded_sequence(inp, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
        return inp, (leaves[1], leaves[2]) if mode == "LSTM" else leaves[1]

    # Reference: torch.nn in float64 (cuDNN fp32 may use TF32, so it is no reference), on the inputs, weights and
    # upstream gradients the low-precision runs see, rounded (FlashAttention's method): the rule then weighs
    # the computations' errors, not the rounding of what they are given.
    leaves_ref = [t.detach().double().requires_grad_() for t in leaves]
    expected = run(theirs.to(device, dtype).double(), mode, *inputs(leaves_ref), leaves_ref, upstream_dtype=dtype)
    inp, hx = inputs(leaves)
    actual = run(ours.to(device, dtype), mode, inp, hx, leaves)
    if dtype == torch.float32:
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key].to(actual[key].dtype), msg=key)
        return
    assert all(g.dtype == dtype for k, g in actual.items() if k.startswith("grad_"))
    torch_lowp = module_pair(mode, **options)[0].to(device, dtype)
    _assert_flash_attention_rule(actual, run(torch_lowp, mode, inp, hx, leaves), expected)


def _assert_flash_attention_rule(actual, baseline, expected):
    """seqops' low-precision error vs the float64 reference is at most 2x torch.nn's own, for the outputs and
    every gradient, on every device (on the CPU seqops computes fp16/bf16 layers in fp32, see rnn_layer.py)."""
    ours_err, torch_err = _max_errors(actual, expected), _max_errors(baseline, expected)
    for key in expected:
        if key in ours_err:
            assert ours_err[key] <= 2 * torch_err[key], (key, ours_err[key], torch_err[key])
        if key.startswith("grad_"):
            assert actual[key].isfinite().all(), key


# ---- low precision at a size where a largest error is a measure, not one rounding ----

_AT_SCALE = {"T": 40, "B": 16, "I": 32, "H": 48, "P": 24}
_AT_SCALE_LENGTHS = [40, 38, 38, 35, 31, 30, 24, 24, 20, 17, 12, 9, 6, 3, 2, 1]


def _at_scale_pair(mode):
    torch_cls, seqops_cls = {"LSTM": (nn.LSTM, seqops.LSTM), "GRU": (nn.GRU, seqops.GRU),
                             "RNN_TANH": (nn.RNN, seqops.RNN)}[mode]
    options = {"num_layers": 2, "bidirectional": True}
    if mode == "LSTM":
        options["proj_size"] = _AT_SCALE["P"]
    torch.manual_seed(3)
    theirs = torch_cls(_AT_SCALE["I"], _AT_SCALE["H"], **options)
    ours = seqops_cls(_AT_SCALE["I"], _AT_SCALE["H"], **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _at_scale_params():
    # Not RNN_RELU: over 640 rows some pre-activations round across 0 in any low-precision run, flipping relu's
    # derivative and a whole gradient row, so its largest error says which run flipped the worst element (the
    # CUDA structure flips as many as torch.nn: 34 vs 30 fp16, 270 vs 268 bf16 over 8 draws at this size; the
    # CPU's fp32 detour none). Smaller sizes above and test_rnn_layer_ops' error rule cover it.
    for mode in ("LSTM", "GRU", "RNN_TANH"):
        for dtype in (torch.float16, torch.bfloat16):
            for packed in (False, True):
                yield pytest.param("cpu", False, mode, dtype, packed)
                yield pytest.param("cpu", True, mode, dtype, packed)
                yield pytest.param("cuda", False, mode, dtype, packed, marks=pytest.mark.gpu)


@pytest.mark.parametrize("device,cuda_structure,mode,dtype,packed", list(_at_scale_params()))
def test_low_precision_at_scale_matches_torch_nn(monkeypatch, device, cuda_structure, mode, dtype, packed):
    # 640 rows per layer-direction, 48 hidden: every gradient's largest error is over hundreds to thousands of
    # elements. cuda_structure: CUDA runs the layer ops in fp16/bf16 themselves (gate workspaces, their gradients
    # and the carried states in the low-precision dtype, fp32 math inside each kernel and GEMM), the CPU in fp32
    # (rnn_layer.py); without that detour the CPU runs CUDA's structure on the same C++ layer ops, the nearest
    # check of CUDA's low-precision numerics a machine without a GPU can make.
    detours = []
    if cuda_structure:
        monkeypatch.setattr(rnn_layer, "_CPU_LOW_PRECISION", ())
        monkeypatch.setattr(rnn_layer, "_in_fp32", lambda *args: detours.append(args))
    theirs, ours = _at_scale_pair(mode)
    T_, B_, I_ = _AT_SCALE["T"], _AT_SCALE["B"], _AT_SCALE["I"]
    x = torch.randn(B_, T_, I_, dtype=torch.float64).to(dtype)  # the inputs every run sees, rounded once
    lengths = torch.tensor(_AT_SCALE_LENGTHS)

    def results(module, run_dtype):
        module = module.to(device, run_dtype)
        module.batch_first = True
        leaf = x.to(device, run_dtype).requires_grad_()
        inp = pack_padded_sequence(leaf, lengths, batch_first=True, enforce_sorted=False) if packed else leaf
        out, state = module(inp)
        out = out.data if packed else out
        states = list(state) if mode == "LSTM" else [state]
        gen = torch.Generator().manual_seed(1)
        upstream = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype).to(t) for t in (out, *states)]
        grads = torch.autograd.grad([out, *states], [leaf, *module.parameters()], upstream)
        names = ["grad_input"] + [f"grad_{n}" for n, _ in module.named_parameters()]
        return {"output": out, **{f"state{k}": s for k, s in enumerate(states)}, **dict(zip(names, grads))}

    expected = results(_at_scale_pair(mode)[0].to(dtype), torch.float64)
    baseline = results(theirs, dtype)
    actual = results(ours, dtype)
    assert not detours
    _assert_flash_attention_rule(actual, baseline, expected)


def _autocast_params():
    # The CPU GRU returns float32, as torch.nn's does. RNN_RELU is left to test_rnn_layer_ops' error-rule test,
    # which keeps pre-activations off relu's kink: a bf16 rounding across 0 flips a whole gradient row.
    yield from (_on("cpu", mode) for mode in MODES if mode != "RNN_RELU")
    yield from (_on("cuda", mode) for mode in MODES)


@pytest.mark.parametrize("device,mode", list(_autocast_params()))
def test_autocast_runs_in_low_precision_like_torch_nn(device, mode):
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    case, options = _low_precision_case(mode, "batched")
    theirs, ours = module_pair(mode, **options)
    inp64, hx64, leaves64 = make_inputs(mode, case, torch.float64, device)
    expected = run(module_pair(mode, **options)[0].to(device, torch.float64), mode, inp64, hx64, leaves64)
    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    hx = (leaves[1], leaves[2]) if mode == "LSTM" else leaves[1]
    with torch.autocast(device, dtype=dtype):
        actual = run(ours.to(device), mode, leaves[0], hx, leaves)
        baseline = run(theirs.to(device), mode, leaves[0], hx, leaves)
    assert actual["output"].dtype == baseline["output"].dtype  # float32 for the CPU GRU: autocast_result_dtypes
    assert all(p.dtype == torch.float32 for k, p in actual.items() if k.startswith("grad_"))
    _assert_flash_attention_rule(actual, baseline, expected)


@pytest.mark.parametrize("mode", MODES)
def test_fp32_backward_inside_an_autocast_region_stays_fp32(mode):
    # The ops pick their own precision: an autocast region around backward() must not recast their GEMMs.
    _, ours = module_pair(mode)
    x = torch.randn(T, B, I, requires_grad=True)
    grads = []
    for region in (contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16)):
        out = ours(x)[0]
        with region:
            grads.append(torch.autograd.grad(out.sum(), [x, *ours.parameters()]))
    for plain, in_autocast in zip(*grads):
        assert in_autocast.dtype == torch.float32
        torch.testing.assert_close(in_autocast, plain, rtol=0, atol=0)


@pytest.mark.parametrize("mode,options,packed", [
    ("LSTM", {}, False), ("LSTM", {}, True), ("LSTM", {"proj_size": 3}, False), ("LSTM", {"proj_size": 3}, True),
    ("GRU", {"num_layers": 2}, False), ("GRU", {}, True), ("RNN_TANH", {}, False), ("RNN_RELU", {}, True),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("state_dtype", [None, torch.float32, "low"])
def test_autocast_result_dtypes_are_torch_nn_s_on_the_cpu(mode, options, packed, dtype, state_dtype):
    # torch.nn's CPU RNNs return float32 under autocast where a float32 state meets the GEMMs in composite math
    # (GRU; LSTM packed or projected, its c_n always): seqops computes in the autocast dtype and returns those.
    theirs, ours = module_pair(mode, **options)
    P = options.get("proj_size", 0) or H
    x = torch.randn(T, B, I)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([T, T - 1, 2]), enforce_sorted=False)
    hx = None
    if state_dtype is not None:
        sd = dtype if state_dtype == "low" else state_dtype
        layers = theirs.num_layers
        hx = torch.randn(layers, B, P, dtype=sd)
        hx = (hx, torch.randn(layers, B, H, dtype=sd)) if mode == "LSTM" else hx
    dtypes = []
    for module in (theirs, ours):
        with torch.autocast("cpu", dtype=dtype):
            try:
                out, h_n = module(x, hx)
            except RuntimeError as err:
                # torch.nn's oneDNN LSTM has no fp16 kernel on the CPU, nor a bf16 one below AVX-512 (Zen 2)
                no_kernel = dtype == torch.float16 or not torch.backends.cpu.get_cpu_capability().startswith("AVX512")
                assert module is theirs and no_kernel and "primitive" in str(err)
                out, h_n = ours(x, hx)  # seqops runs where torch.nn cannot, in the autocast dtype
                assert (out.data if packed else out).dtype == dtype
                return
        out = out.data if packed else out
        dtypes.append([t.dtype for t in (out, *(h_n if mode == "LSTM" else (h_n,)))])
    assert dtypes[0] == dtypes[1]


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("onednn", [True, False])
def test_autocast_lstm_result_dtypes_follow_whether_torch_nn_takes_onednn(monkeypatch, input_dtype, dtype, onednn):
    # torch.nn's unpacked LSTM returns the autocast dtype where oneDNN's fused LSTM (on autocast's list) takes
    # its input as passed: not an fp16 input with grad on (nor without fp16 CPU support), not with oneDNN off.
    # Elsewhere it is a composite whose c meets the GEMMs in float: promote(autocast dtype, c's dtype).
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    theirs, ours = module_pair("LSTM")
    x = torch.randn(T, B, I, dtype=input_dtype)
    for hx, grad in itertools.product([None, tuple(torch.randn(2, 1, B, H).unbind())], [True, False]):
        dtypes = []
        with torch.set_grad_enabled(grad):
            for module in (theirs, ours):
                with torch.autocast("cpu", dtype=dtype):
                    try:
                        out, (h_n, c_n) = module(x, hx)
                    except RuntimeError as err:  # torch.nn's oneDNN LSTM without a kernel for this CPU and dtype
                        assert module is theirs and "primitive" in str(err)
                        ours(x, hx)
                        break
                dtypes.append((out.dtype, h_n.dtype, c_n.dtype))
        assert len(dtypes) in (0, 2)
        assert not dtypes or dtypes[0] == dtypes[1], (hx is not None, grad)


def test_autocast_gru_on_cpu_returns_and_computes_float32_like_torch_nn():
    _, ours = module_pair("GRU")
    x = torch.randn(T, B, I, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = ours(x)
    assert out.dtype == h.dtype == torch.float32
    torch.testing.assert_close(out, ours(x)[0], rtol=0, atol=0)
    out.sum().backward()
    assert x.grad.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in ours.parameters())


@pytest.mark.gpu
def test_cuda_backward_in_eval_mode_where_cudnn_refuses():
    theirs, ours = module_pair("LSTM", num_layers=2)
    theirs.cuda().eval()
    ours.cuda().eval()
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    ours(x)[0].sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in ours.parameters())


@pytest.mark.parametrize("dtype,batch", [(torch.float32, 16), (torch.bfloat16, B)])
@pytest.mark.parametrize("with_hx", [False, True])
def test_lstm_cpu_inference_is_torch_nn_exactly(dtype, batch, with_hx):
    # Where CPU LSTM inference runs the whole stack in torch's fused oneDNN LSTM (float32 over a batch of 8 or
    # more and at least 64 rows here; bfloat16 always), as torch.nn does: the same numbers.
    theirs, ours = module_pair("LSTM", num_layers=2, bidirectional=True, batch_first=True)
    theirs, ours = theirs.to(dtype).eval(), ours.to(dtype).eval()
    x = torch.randn(batch, T, I, dtype=dtype)
    hx = (torch.randn(4, batch, H, dtype=dtype), torch.randn(4, batch, H, dtype=dtype)) if with_hx else None
    with torch.no_grad():
        out, (h, c) = ours(x, hx)
        out_nn, (h_nn, c_nn) = theirs(x, hx)
    for a, b in ((out, out_nn), (h, h_nn), (c, c_nn)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_batch_first_output_is_a_view_where_torch_nn_s_is(mode, bidirectional, grad):
    # torch.nn's CPU LSTM returns a transposed view; its GRU and RNN transpose their result in place, so
    # `out.detach_()` (which refuses views) works on theirs, and must on ours.
    theirs, ours = module_pair(mode, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(B, T, I)
    with torch.set_grad_enabled(grad):
        actual, expected = ours(x)[0], theirs(x)[0]
    assert (actual._base is None) == (expected._base is None) == (mode != "LSTM")
    assert actual.stride() == expected.stride()
    torch.testing.assert_close(actual, expected)
    if mode != "LSTM":
        actual.detach_()
        expected.detach_()
    if grad:  # and the graph still trains
        ours(x)[0].square().sum().backward()
        assert all(p.grad is not None for p in ours.parameters())


def test_no_warning_on_plain_use():
    _, ours = module_pair("LSTM", num_layers=2, proj_size=P)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(torch.randn(T, B, I))


@pytest.mark.parametrize("mode", MODES)
def test_double_backward_matches_torch_nn(mode):
    # torch.nn's CPU path is made of differentiable ATen ops, so its second derivatives are the reference.
    options = {"num_layers": 2, "bidirectional": True, **({"proj_size": P} if mode == "LSTM" else {})}
    theirs, ours = module_pair(mode, **options)
    theirs.double()
    ours.double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(T, B, 2 * (P if mode == "LSTM" else H), dtype=torch.float64)

    def second_order(module):
        params = list(module.parameters())
        out = module(x)[0]
        first = torch.autograd.grad(out, [x, *params], upstream, create_graph=True)
        # A scalar mixing every first-order gradient, differentiated again.
        mix = sum((g * torch.cos(torch.arange(g.numel(), dtype=g.dtype).view_as(g))).sum() for g in first)
        return torch.autograd.grad(mix, [x, *params])

    for actual, expected in zip(second_order(ours), second_order(theirs), strict=True):
        torch.testing.assert_close(actual, expected)


# ---- CPU float32 at sizes where the weight gradients run on oneDNN (csrc/rnn/gemm.h weight_grad) ----


def _onednn_products(fn):
    # how many of oneDNN's linear products fn() ran (the ops reach them through the dispatcher, so the
    # profiler sees each)
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")


@pytest.mark.parametrize("mode,proj_size",
                         [(mode, 16 if mode == "LSTM" else 0) for mode in MODES] + [("LSTM", 0), ("LSTM", 8)])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("gemms", ["onednn", "mm"])
def test_cpu_float32_weight_gradients_at_scale_match_torch_nn(monkeypatch, mode, proj_size, packed, gemms):
    # 600 rows per layer-direction and weights of 2^16 elements and more. With gemms="onednn" (the default
    # where the CPU has AVX-512) the weight gradients run on oneDNN in 256-row partial products with a tail
    # (packed: from the gathered previous states); with "mm" (the default without AVX-512) every product is
    # at::mm. fp32 sums over 600 rows outgrow assert_close's fp32 defaults, torch.nn's own too; so this is
    # FlashAttention's rule at fp32: seqops' error vs float64 at most 2x torch.nn's fp32 error (+1 ulp of the
    # largest value), on the outputs and every gradient. The step GEMMs (cpu/packed_step.cpp) run here over
    # several K blocks and 15 rows = three register tiles of 5; the unprojected LSTM over its fused sequence
    # kernels. proj_size 8: the [4H, 8] and [8, H] weight gradients in 64-row blocks (gemm.h: narrow outputs).
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setenv("SEQOPS_ONEDNN", "1" if gemms == "onednn" else "0")
    T_, B_, I_, H_ = 40, 15, 256, 256
    kwargs = {"bidirectional": True, "proj_size": proj_size} if proj_size else {"bidirectional": True}
    if mode.startswith("RNN"):
        kwargs["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
    cls = {"LSTM": (nn.LSTM, seqops.LSTM), "GRU": (nn.GRU, seqops.GRU)}.get(mode, (nn.RNN, seqops.RNN))
    theirs = cls[0](I_, H_, **kwargs)
    ours = cls[1](I_, H_, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    exact = cls[0](I_, H_, **kwargs).double()
    exact.load_state_dict(theirs.state_dict())
    x = torch.randn(T_, B_, I_)
    lengths = torch.tensor([40] * 9 + [33, 21, 21, 8, 2, 1]) if packed else None

    def results(module, dtype):
        leaf = x.to(dtype, copy=True).requires_grad_()
        inp = pack_padded_sequence(leaf, lengths) if packed else leaf
        out, _ = module(inp)
        out = out.data if packed else out
        gen = torch.Generator().manual_seed(1)
        out.backward(torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype))
        return {"output": out, "grad_input": leaf.grad, **{n: p.grad for n, p in module.named_parameters()}}

    ours_results = {}
    products = _onednn_products(lambda: ours_results.update(results(ours, torch.float32)))
    if gemms == "onednn":
        # both directions' input and recurrent weight gradients, each in >= 3 parts of 256 rows (packed: 446 rows,
        # 2 parts; with proj_size the LSTM's [4H, 16] recurrent weight is below oneDNN's threshold)
        assert products >= 2 * (1 if proj_size else 2) * (2 if packed else 3)
    else:
        assert products == 0
    baseline, expected = results(theirs, torch.float32), results(exact, torch.float64)
    for key, want in expected.items():
        err = (ours_results[key].double() - want).abs().max().item()
        torch_err = (baseline[key].double() - want).abs().max().item()
        ulp = torch.finfo(torch.float32).eps * want.abs().max().item()
        assert err <= 2 * torch_err + ulp, f"{mode} {key}: {err:.3e} > 2 x torch.nn's {torch_err:.3e} + {ulp:.2e}"


@pytest.mark.parametrize("name,options", [("LSTM", {"num_layers": 2, "bidirectional": True}),
                                          ("LSTM", {"proj_size": 2}), ("GRU", {}), ("RNN", {}),
                                          ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {})])
def test_meta_device_gives_torch_nn_s_shapes_forward_and_backward(name, options):
    # Shape inference without memory (model sizing, torch.device("meta") initialisation): the fake kernels run.
    shapes = []
    for lib in (nn, seqops):
        module = getattr(lib, name)(4, 5, device="meta", **options)
        x = torch.empty(6, 3, 4, device="meta", requires_grad=True) if "Cell" not in name else \
            torch.empty(3, 4, device="meta", requires_grad=True)
        out = module(x)
        first = out[0] if isinstance(out, tuple) else out
        first.sum().backward()
        shapes.append([tuple(first.shape), tuple(x.grad.shape), *(tuple(p.grad.shape) for p in module.parameters())])
    assert shapes[0] == shapes[1]


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_float64_modules_stay_float64_under_autocast_like_torch_nn(name):
    x = torch.randn(T, B, I, dtype=torch.float64) if "Cell" not in name else torch.randn(B, I, dtype=torch.float64)
    dtypes = []
    for lib in (nn, seqops):
        torch.manual_seed(0)
        module = getattr(lib, name)(I, H).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x)
        dtypes.append(torch.utils._pytree.tree_leaves(out)[0].dtype)
    assert dtypes == [torch.float64, torch.float64]


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_a_float64_module_on_float32_input_under_autocast_raises_like_torch_nn(name):
    # autocast leaves float64 weights alone and casts the input: the dtypes differ, which torch.nn refuses
    # (with messages of its kernels); seqops must not round the weights down to run anyway.
    x = torch.randn(T, B, I) if "Cell" not in name else torch.randn(B, I)
    for lib in (nn, seqops):
        module = getattr(lib, name)(I, H).double()
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="dtype|data type"):
            module(x)


@pytest.mark.parametrize("mode", MODES)
def test_the_two_bias_gradients_are_two_tensors(mode):
    # The biases add up, so the backward computes one gradient for both; it must hand back two tensors, as
    # torch.nn does: scaling one in place (a functional optimizer step) or an in-place hook on one bias must
    # leave the other alone.
    theirs, ours = module_pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    results = []
    for module in (theirs, ours):
        names = [n for n, _ in module.named_parameters()]
        grads = dict(zip(names, torch.autograd.grad(module(x)[0].pow(2).sum(), list(module.parameters()))))
        expected = grads["bias_hh_l0"].clone()
        grads["bias_ih_l0"].mul_(0.1)
        torch.testing.assert_close(grads["bias_hh_l0"], expected)
        results.append(grads)
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name])
