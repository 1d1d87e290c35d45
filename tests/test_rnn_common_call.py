"""The drop-in RNN modules' and cells' lean path for the common call (seqops/nn/_rnn_common_call.py, cells.py):
which calls take it, that every other call takes the full path with torch.nn's errors, and that both paths give
the same numbers, forward and every gradient."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import seqops
import seqops.nn.cells as cells_module
import seqops.nn.rnn as rnn_module
import seqops.ops._cell_args as cell_args
from seqops.ops._autograd import plain_eager

from rnn_module_cases import B, I, LENGTHS, MODES, P, T, make_inputs, module_pair, run  # isort: skip

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

# Options of the common calls: each takes the lean path, layers and directions included.
COMMON_OPTIONS = [
    {},
    {"batch_first": True},
    {"num_layers": 2, "bidirectional": True},
    {"num_layers": 2, "dropout": 0.5},
    {"bias": False},
]


def _common_cases():
    for mode in MODES:
        options = COMMON_OPTIONS + ([{"proj_size": P, "num_layers": 2}] if mode == "LSTM" else [])
        for opts in options:
            for with_hx in (False, True):
                yield pytest.param(mode, opts, with_hx, id=f"{mode}-{opts}-{'hx' if with_hx else 'no_hx'}")


def _case(opts, with_hx, dtype=torch.float64):
    return {"num_layers": opts.get("num_layers", 1), "bidirectional": opts.get("bidirectional", False),
            "layout": "batched", "with_hx": with_hx, "batch_first": opts.get("batch_first", False),
            "proj_size": opts.get("proj_size", 0)}


def _count_full_path_calls(monkeypatch, module, gate_name, sent_to_full_path):
    """Wraps the lean-path gate module.gate_name; returns a list that each call it sends to the full path joins."""
    calls = []
    gate = getattr(module, gate_name)

    def counted(*args):
        answer = gate(*args)
        if sent_to_full_path(answer):
            calls.append(args)
        return answer

    monkeypatch.setattr(module, gate_name, counted)
    return calls


@pytest.fixture
def full_path_calls(monkeypatch):
    """The modules' calls that their lean-path gate (common_call_weights) sent to the full path."""
    return _count_full_path_calls(monkeypatch, rnn_module, "common_call_weights", lambda flat: flat is None)


def _force_full_path(monkeypatch):
    monkeypatch.setattr(rnn_module, "common_call_weights", lambda *args: None)


@pytest.mark.parametrize("mode,opts,with_hx", list(_common_cases()))
def test_common_calls_take_the_lean_path_and_match_torch_nn(full_path_calls, mode, opts, with_hx):
    theirs, ours = module_pair(mode, **opts)
    theirs.double(), ours.double()
    torch.manual_seed(1)
    inp, hx, leaves = make_inputs(mode, _case(opts, with_hx), torch.float64)
    torch.manual_seed(2)  # the same dropout masks in both
    expected = run(theirs, mode, inp, hx, leaves)
    torch.manual_seed(2)
    actual = run(ours, mode, inp, hx, leaves)
    assert full_path_calls == []
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("mode,opts,with_hx", list(_common_cases()))
@pytest.mark.parametrize("grad", [True, False])
def test_the_lean_path_gives_the_full_path_s_numbers_exactly(monkeypatch, mode, opts, with_hx, grad):
    _, ours = module_pair(mode, **opts)
    torch.manual_seed(1)
    inp, hx, leaves = make_inputs(mode, _case(opts, with_hx), torch.float32)

    def results():
        torch.manual_seed(2)
        if grad:
            return run(ours, mode, inp, hx, leaves)
        with torch.no_grad():
            out, state = ours(inp, hx)
        return {"output": out, "states": state}

    lean = results()
    _force_full_path(monkeypatch)
    full = results()
    torch.testing.assert_close(lean, full, rtol=0, atol=0)


def _assert_same_outcome(call, theirs, ours, raises, low_precision):
    """call(ours) raises what call(theirs) raises (the messages: the bad-input tests of test_rnn_modules and
    test_cell_modules), or gives its results; low precision: its dtypes and shapes (the numbers: the
    low-precision tests)."""
    if raises:
        with pytest.raises(Exception) as expected:
            call(theirs)
        with pytest.raises(type(expected.value)):
            call(ours)
        return
    torch.manual_seed(3)
    expected = call(theirs)
    torch.manual_seed(3)
    actual = call(ours)
    if low_precision:
        first = (lambda r: r[0]) if isinstance(expected, tuple) else (lambda r: r)
        assert first(actual).dtype == first(expected).dtype and first(actual).shape == first(expected).shape
    else:
        torch.testing.assert_close(actual, expected)


def _other_calls():
    """(name, mode, call(module) or a special case's name, raises): calls the full path serves, valid or not."""
    x = torch.randn(T, B, I)

    def same_call(*args, **kwargs):
        return lambda module: module(*args, **kwargs)

    yield "unbatched", "GRU", same_call(torch.randn(T, I)), False
    yield "packed", "LSTM", same_call(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)), False
    yield "bfloat16 on the cpu", "GRU", "bfloat16", False
    yield "autocast", "GRU", "autocast", False
    yield "weight norm on w_hh", "GRU", "weight_norm", False
    yield "wrong input size", "RNN_TANH", same_call(torch.randn(T, B, I + 1)), True
    yield "3-D state of another batch", "GRU", same_call(x, torch.randn(1, B + 1, 6)), True
    yield "state of another dtype", "RNN_RELU", same_call(x, torch.randn(1, B, 6, dtype=torch.float64)), True
    yield "lstm state not a pair", "LSTM", same_call(x, (torch.randn(1, B, 6),)), True
    yield "4-D input", "LSTM", same_call(torch.randn(T, B, I, 1)), True
    yield "empty sequence", "GRU", same_call(torch.randn(0, B, I)), True
    yield "input of another dtype", "GRU", same_call(x.double()), True
    yield "input not a tensor", "RNN_TANH", same_call(x.tolist()), True
    yield "hidden_size set past the weights' size", "GRU", "hidden_size=7", True


@pytest.mark.parametrize("name,mode,call,raises", [pytest.param(*c, id=c[0]) for c in _other_calls()])
def test_other_calls_take_the_full_path_like_torch_nn(full_path_calls, name, mode, call, raises):
    theirs, ours = module_pair(mode)
    if call == "bfloat16":
        theirs.bfloat16(), ours.bfloat16()
        call = lambda module: module(torch.randn(T, B, I, dtype=torch.bfloat16))  # noqa: E731
    elif call == "autocast":
        def call(module):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(torch.randn(T, B, I))
    elif call == "hidden_size=7":
        theirs.hidden_size = ours.hidden_size = 7
        call = lambda module: module(torch.randn(T, B, I), torch.randn(1, B, 7))  # noqa: E731
    elif call == "weight_norm":
        for module in (theirs, ours):
            nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")
        call = lambda module: module(torch.randn(T, B, I))  # noqa: E731
    _assert_same_outcome(call, theirs, ours, raises, low_precision=name in ("bfloat16 on the cpu", "autocast"))
    assert full_path_calls, f"{name}: the call did not reach the full path"


def test_a_functional_call_s_weights_reach_the_lean_path(full_path_calls):
    theirs, ours = module_pair("LSTM", num_layers=2)
    weights = {name: torch.randn_like(p) for name, p in theirs.named_parameters()}
    x = torch.randn(T, B, I)
    expected = torch.func.functional_call(theirs, weights, (x,))
    actual = torch.func.functional_call(ours, weights, (x,))
    torch.testing.assert_close(actual, expected)
    assert full_path_calls == []


def test_tracers_and_transforms_take_the_full_path(full_path_calls):
    _, ours = module_pair("GRU")
    x = torch.randn(T, B, I)
    torch.jit.trace(ours, (x,), check_trace=False)
    assert len(full_path_calls) == 1
    torch.func.vmap(ours, in_dims=1, out_dims=1)(x)
    assert len(full_path_calls) == 2
    with torch.autograd.forward_ad.dual_level():
        ours(x)
    assert len(full_path_calls) == 3


def test_plain_eager_is_false_under_every_tracer_and_transform():
    assert plain_eager()
    with torch.autograd.forward_ad.dual_level():
        assert not plain_eager()
    seen = []
    torch.func.vmap(lambda t: seen.append(plain_eager()) or t)(torch.randn(2))
    torch.func.grad(lambda t: seen.append(plain_eager()) or t.sum())(torch.randn(2))
    torch.jit.trace(lambda t: seen.append(plain_eager()) or t * 2, (torch.randn(2),), check_trace=False)
    assert seen == [False, False, False]

    @torch.compile(backend="eager", fullgraph=True)
    def compiled(t):
        return t + 1 if plain_eager() else t - 1

    torch.testing.assert_close(compiled(torch.zeros(2)), torch.full((2,), -1.0))


# ---- cells ----

CELLS = {"LSTMCell": "lstm_cell", "GRUCell": "gru_cell", "RNNCell": "rnn_tanh_cell"}


def _cell_pair(name, **kwargs):
    torch.manual_seed(0)
    theirs = getattr(nn, name)(I, 6, **kwargs)
    ours = getattr(seqops, name)(I, 6, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.fixture
def full_cell_calls(monkeypatch):
    """The cell modules' calls that their lean-path gate (common_cell_call) sent to the full path."""
    return _count_full_path_calls(monkeypatch, cells_module, "common_cell_call", lambda common: not common)


@pytest.fixture
def full_functional_calls(monkeypatch):
    """The functional cells' calls that their lean-path gate (with_lean_path's common_cell_call) sent to the
    full path."""
    return _count_full_path_calls(monkeypatch, cell_args, "common_cell_call", lambda common: not common)


def _cell_run(cell, name, x, hx):
    out = cell(x, hx)
    outs = out if name == "LSTMCell" else (out,)
    params = list(cell.parameters())
    leaves = [t for t in (x, *(hx if isinstance(hx, tuple) else (hx,))) if t is not None and t.requires_grad]
    grads = torch.autograd.grad([o.sum() * (k + 1) for k, o in enumerate(outs)], leaves + params)
    return outs, grads


def _cell_state(name, batch=B, **kw):
    if name == "LSTMCell":
        return (torch.randn(batch, 6, **kw).requires_grad_(), torch.randn(batch, 6, **kw).requires_grad_())
    return torch.randn(batch, 6, **kw).requires_grad_()


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_common_cell_calls_take_the_lean_path_and_match_torch_nn(full_cell_calls, monkeypatch, name, with_hx,
                                                                 nonlinearity):
    if nonlinearity == "relu" and name != "RNNCell":
        pytest.skip("only RNNCell has a nonlinearity")
    kwargs = {"nonlinearity": nonlinearity} if name == "RNNCell" else {}
    theirs, ours = _cell_pair(name, **kwargs)
    theirs.double(), ours.double()
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    hx = _cell_state(name, dtype=torch.float64) if with_hx else None
    expected = _cell_run(theirs, name, x, hx)
    lean = _cell_run(ours, name, x, hx)
    assert full_cell_calls == []
    torch.testing.assert_close(lean, expected)
    monkeypatch.setattr(cells_module, "common_cell_call", lambda *args: False)
    torch.testing.assert_close(lean, _cell_run(ours, name, x, hx), rtol=0, atol=0)


def _other_cell_calls(name):
    """(case, args or "autocast", raises)"""
    state = _cell_state(name)
    yield "unbatched", (torch.randn(I), None), False
    yield "autocast", "autocast", False
    one_d = tuple(s[0] for s in state) if name == "LSTMCell" else state[0]
    yield "1-D state", (torch.randn(B, I), one_d), True
    yield "3-D input", (torch.randn(1, B, I), None), True
    yield "input not a tensor", (torch.randn(B, I).tolist(), None), True
    yield "empty hidden size", "hidden_size=0", False
    if name == "LSTMCell":
        yield "state not a pair", (torch.randn(B, I), state[0]), True


@pytest.mark.parametrize("name,case,args,raises", [
    pytest.param(n, *c, id=f"{n}-{c[0]}") for n in CELLS for c in _other_cell_calls(n)])
def test_other_cell_calls_take_the_full_path_like_torch_nn(full_cell_calls, name, case, args, raises):
    theirs, ours = _cell_pair(name)
    if args == "autocast":
        def call(cell):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return cell(torch.randn(B, I))
    elif args == "hidden_size=0":
        theirs, ours = getattr(nn, name)(I, 0), getattr(seqops, name)(I, 0)
        call = lambda cell: cell(torch.randn(B, I))  # noqa: E731
    else:
        call = lambda cell: cell(*args)  # noqa: E731
    _assert_same_outcome(call, theirs, ours, raises, low_precision=case == "autocast")
    assert full_cell_calls, f"{case}: the call did not reach the full path"


FUNCTIONAL = {"lstm_cell": torch.lstm_cell, "gru_cell": torch.gru_cell, "rnn_tanh_cell": torch.rnn_tanh_cell,
              "rnn_relu_cell": torch.rnn_relu_cell}


def _functional_args(name, batched=True, dtype=torch.float64):
    torch.manual_seed(0)
    gates = {"lstm_cell": 4, "gru_cell": 3}.get(name, 1)
    x = torch.randn(*((B,) if batched else ()), I, dtype=dtype, requires_grad=True)
    h = torch.randn(*((B,) if batched else ()), 6, dtype=dtype, requires_grad=True)
    hx = (h, torch.randn_like(h).requires_grad_()) if name == "lstm_cell" else h
    weights = [torch.randn(gates * 6, I, dtype=dtype, requires_grad=True),
               torch.randn(gates * 6, 6, dtype=dtype, requires_grad=True),
               torch.randn(gates * 6, dtype=dtype, requires_grad=True),
               torch.randn(gates * 6, dtype=dtype, requires_grad=True)]
    return x, hx, weights


def _functional_run(fn, x, hx, weights):
    out = fn(x, hx, *weights)
    outs = out if isinstance(out, tuple) else (out,)
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *weights]
    return outs, torch.autograd.grad([o.sum() * (k + 1) for k, o in enumerate(outs)], leaves)


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_common_functional_cell_calls_take_the_lean_path(full_functional_calls, monkeypatch, name):
    x, hx, weights = _functional_args(name)
    expected = _functional_run(FUNCTIONAL[name], x, hx, weights)
    lean = _functional_run(getattr(seqops, name), x, hx, weights)
    assert full_functional_calls == []
    torch.testing.assert_close(lean, expected)
    monkeypatch.setattr(cell_args, "common_cell_call", lambda *args: False)
    torch.testing.assert_close(lean, _functional_run(getattr(seqops, name), x, hx, weights), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FUNCTIONAL))
@pytest.mark.parametrize("case", ["unbatched", "autocast", "state not a pair or tensor", "keyword arguments"])
def test_other_functional_cell_calls_take_the_full_path(full_functional_calls, name, case):
    x, hx, weights = _functional_args(name, batched=case != "unbatched", dtype=torch.float32)
    theirs, ours = FUNCTIONAL[name], getattr(seqops, name)
    if case == "autocast":
        def call(fn):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x, hx, *weights)
    elif case == "state not a pair or tensor":
        def call(fn):
            return fn(x, [hx] if name != "lstm_cell" else hx[0], *weights)
    elif case == "keyword arguments":  # the lean path by keyword
        def call(fn):
            return fn(input=x, hx=hx, w_ih=weights[0], w_hh=weights[1], b_ih=weights[2], b_hh=weights[3])
        theirs = getattr(seqops, name)
    else:
        def call(fn):
            return fn(x, hx, *weights)
    if case == "unbatched":  # torch's functional cells take batched input only: theirs on a batch of one
        def theirs(x, hx, *weights, fn=theirs):
            states = tuple(s.unsqueeze(0) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(0)
            out = fn(x.unsqueeze(0), states, *weights)
            return tuple(o.squeeze(0) for o in out) if isinstance(out, tuple) else out.squeeze(0)
    _assert_same_outcome(call, theirs, ours, raises=case == "state not a pair or tensor",
                         low_precision=case == "autocast")
    assert bool(full_functional_calls) == (case != "keyword arguments")
