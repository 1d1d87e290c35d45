"""seqops.LSTMCell / GRUCell / RNNCell against torch.nn's cells with the same weights: outputs and every
gradient over every option, constructor and state_dict, bad inputs, double backward, low precision on CUDA."""

import itertools

import pytest
import torch
from torch import nn

import seqops

from conftest import raise_alike  # isort: skip

B, I, H = 3, 5, 7
KINDS = ("LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu")


def cell_pair(kind, seed=0, **kwargs):
    name, _, nonlinearity = kind.partition("_")
    if nonlinearity:
        kwargs["nonlinearity"] = nonlinearity
    torch.manual_seed(seed)
    theirs = getattr(nn, name)(I, H, **kwargs)
    ours = getattr(seqops, name)(I, H, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def make_inputs(kind, batched, with_hx, dtype, device="cpu", noncontiguous=False):
    batch = (B,) if batched else ()
    kw = dict(dtype=dtype, device=device)
    # Non-contiguous: the same logical [B, I], stored transposed.
    x = torch.randn(I, B, **kw).t() if noncontiguous and batched else torch.randn(*batch, I, **kw)
    leaves = [x.requires_grad_()]
    hx = None
    if with_hx:
        def state():
            return torch.randn(H, B, **kw).t() if noncontiguous and batched else torch.randn(*batch, H, **kw)

        states = [state().requires_grad_() for _ in range(2 if kind == "LSTMCell" else 1)]
        leaves += states
        hx = tuple(states) if kind == "LSTMCell" else states[0]
    return x, hx, leaves


def run(cell, x, hx, leaves):
    """Outputs and the gradients of every leaf and parameter under fixed random upstream gradients."""
    out = cell(x, hx)
    outs = list(out) if isinstance(out, tuple) else [out]
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    params = dict(cell.named_parameters())
    grads = torch.autograd.grad(outs, [*leaves, *params.values()], upstream)
    results = {f"out{k}": o for k, o in enumerate(outs)}
    results.update({f"grad_leaf{k}": g for k, g in enumerate(grads[: len(leaves)])})
    results.update({f"grad_{n}": g for n, g in zip(params, grads[len(leaves) :])})
    return results


def assert_same(actual, expected, **tol):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}", **tol)


@pytest.mark.parametrize(
    "kind,batched,with_hx,bias,dtype",
    list(itertools.product(KINDS, *[[True, False]] * 3, [torch.float64, torch.float32])),
)
def test_matches_torch_nn(kind, batched, with_hx, bias, dtype):
    theirs, ours = cell_pair(kind, bias=bias, dtype=dtype)
    x, hx, leaves = make_inputs(kind, batched, with_hx, dtype)
    assert_same(run(ours, x, hx, leaves), run(theirs, x, hx, leaves))


@pytest.mark.parametrize("kind", KINDS)
def test_noncontiguous_input_and_state(kind):
    theirs, ours = cell_pair(kind)
    x, hx, leaves = make_inputs(kind, True, True, torch.float32, noncontiguous=True)
    assert not x.is_contiguous() and not leaves[1].is_contiguous()
    assert_same(run(ours, x, hx, leaves), run(theirs, x, hx, leaves))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
def test_constructor_parameters_init_repr_match_torch(kind, bias):
    name, _, nonlinearity = kind.partition("_")
    kwargs = {"bias": bias, **({"nonlinearity": nonlinearity} if nonlinearity else {})}
    torch.manual_seed(4)
    theirs = getattr(nn, name)(I, H, **kwargs)
    torch.manual_seed(4)
    ours = getattr(seqops, name)(I, H, **kwargs)
    assert isinstance(ours, getattr(nn, name))
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (name_t, p_t), (name_o, p_o) in zip(theirs.named_parameters(), ours.named_parameters(), strict=True):
        assert name_o == name_t
        torch.testing.assert_close(p_o, p_t, rtol=0, atol=0)
    # ... and loads both ways.
    other_theirs, other_ours = cell_pair(kind, seed=9, bias=bias)
    other_theirs.load_state_dict(ours.state_dict())
    other_ours.load_state_dict(theirs.state_dict())


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_conversion_and_float64(kind):
    theirs, ours = cell_pair(kind)
    theirs.double()
    ours.double()
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    x, hx, leaves = make_inputs(kind, True, True, torch.float64)
    assert_same(run(ours, x, hx, leaves), run(theirs, x, hx, leaves))
    ours.bfloat16()
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_double_backward_matches_torch_nn(kind):
    theirs, ours = cell_pair(kind, dtype=torch.float64)
    x, hx, leaves = make_inputs(kind, True, True, torch.float64)

    def second_order(cell):
        out = cell(x, hx)
        out = out[0] + 2 * out[1] if isinstance(out, tuple) else out
        wrt = [*leaves, *cell.parameters()]
        first = torch.autograd.grad(out, wrt, torch.ones_like(out), create_graph=True)
        mix = sum((g * torch.sin(torch.arange(g.numel(), dtype=g.dtype).view_as(g))).sum() for g in first)
        return torch.autograd.grad(mix, [*leaves, *cell.parameters()])

    for actual, expected in zip(second_order(ours), second_order(theirs), strict=True):
        torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates_like_torch(kind):
    theirs, ours = cell_pair(kind)
    x, hx, _ = make_inputs(kind, True, True, torch.float32)
    x = x.detach().clone()
    x[1, 2] = float("nan")
    out_t, out_o = theirs(x, hx), ours(x, hx)
    out_t, out_o = (out_t[0], out_o[0]) if kind == "LSTMCell" else (out_t, out_o)
    assert out_o.isnan().any()
    assert torch.equal(out_o.isnan(), out_t.isnan())


def _state(kind, *shape, dtype=torch.float32):
    s = torch.randn(*shape, dtype=dtype)
    return (s, s) if kind == "LSTMCell" else s


def _bad_inputs():
    for kind in ("LSTMCell", "GRUCell", "RNNCell_tanh"):
        yield kind, "3d_input", (torch.randn(1, B, I), None), ValueError, True
        yield kind, "3d_state", (torch.randn(B, I), _state(kind, 1, B, H)), ValueError, True
        yield kind, "1d_state_batched_input", (torch.randn(B, I), _state(kind, H)), RuntimeError, False
        yield kind, "2d_state_unbatched_input", (torch.randn(I), _state(kind, 1, H)), RuntimeError, False
        yield kind, "wrong_input_size", (torch.randn(B, I + 1), None), RuntimeError, False
        yield kind, "wrong_hidden_size", (torch.randn(B, I), _state(kind, B, H + 1)), RuntimeError, False
        yield kind, "batch_mismatch", (torch.randn(B, I), _state(kind, B + 1, H)), RuntimeError, False
        yield kind, "input_dtype", (torch.randn(B, I, dtype=torch.float64), None), RuntimeError, False
        wrong_dtype_state = _state(kind, B, H, dtype=torch.float64)
        yield kind, "state_dtype", (torch.randn(B, I), wrong_dtype_state), RuntimeError, False
    yield "LSTMCell", "hx_a_tensor", (torch.randn(B, I), torch.randn(B, H)), TypeError, False
    yield "LSTMCell", "hx_one_state", (torch.randn(B, I), (torch.randn(B, H),)), RuntimeError, False
    yield "LSTMCell", "hx_three_states", (torch.randn(B, I), (torch.randn(B, H),) * 3), RuntimeError, False


@pytest.mark.parametrize("kind,case,args,error,same_message", list(_bad_inputs()),
                         ids=[f"{k}-{c}" for k, c, *_ in _bad_inputs()])
def test_bad_inputs_raise_like_torch(kind, case, args, error, same_message):
    ours_message, theirs_message = raise_alike(error, *cell_pair(kind), args)
    if same_message:
        assert ours_message == theirs_message
    else:  # torch.nn's text comes from its kernels; seqops' names the op and the offending tensor
        assert ours_message.split(":")[0] in {"lstm_cell", "gru_cell", "rnn_cell", "rnn_tanh_cell", "rnn_relu_cell"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_no_grad_and_inference_mode_give_the_training_forward_values(kind, context):
    # Without grad the cell ops are called below their autograd kernel (call_op): the same numbers, no graph.
    _, ours = cell_pair(kind)
    x, hx, _ = make_inputs(kind, True, True, torch.float32)
    expected = ours(x, hx)
    with context():
        actual = ours(x, hx)
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)):
        assert not a.requires_grad
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_unknown_nonlinearity_raises_at_forward_like_torch():
    theirs, ours = cell_pair("RNNCell_tanh")
    theirs.nonlinearity = ours.nonlinearity = "gelu"
    x = torch.randn(B, I)
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        theirs(x)
    with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
        ours(x)


def test_cell_loop_compiles_fullgraph():
    _, cell = cell_pair("LSTMCell")
    xs = torch.randn(4, B, I)

    def loop(xs):
        h = c = torch.zeros(B, H)
        for x in xs:
            h, c = cell(x, (h, c))
        return h

    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(xs), loop(xs))


# ---- low precision: fp32 on CUDA against float64; fp16/bf16 by the FlashAttention rule ----


def _low_precision_params():
    for kind in KINDS:
        yield pytest.param("cuda", kind, torch.float32, marks=pytest.mark.gpu)
        for dtype in (torch.float16, torch.bfloat16):
            yield pytest.param("cpu", kind, dtype)
            yield pytest.param("cuda", kind, dtype, marks=pytest.mark.gpu)


@pytest.mark.parametrize("device,kind,dtype", list(_low_precision_params()))
def test_low_precision_matches_torch_nn(device, kind, dtype):
    theirs, ours = cell_pair(kind)
    x64, hx64, leaves64 = make_inputs(kind, True, True, torch.float64, device)
    expected = run(theirs.to(device, torch.float64), x64, hx64, leaves64)
    leaves = [t.detach().to(dtype).requires_grad_() for t in leaves64]
    hx = tuple(leaves[1:]) if kind == "LSTMCell" else leaves[1]
    actual = run(ours.to(device, dtype), leaves[0], hx, leaves)
    if dtype == torch.float32:  # CUDA only; float64 reference, as cuBLAS may use TF32 for torch.nn's fp32
        assert_same(actual, {k: v.float() for k, v in expected.items()})
        return
    # FlashAttention rule: seqops' low-precision error is at most 2x torch.nn's own.
    baseline = run(cell_pair(kind)[0].to(device, dtype), leaves[0], hx, leaves)
    for key in expected:
        ours_err = (actual[key].double() - expected[key]).abs().max().item()
        torch_err = (baseline[key].double() - expected[key]).abs().max().item()
        assert ours_err <= 2 * torch_err, (key, ours_err, torch_err)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("kind", KINDS)
def test_autocast_computes_in_the_autocast_dtype(device, kind):
    # Returned in torch.nn's dtype and computed in it: the autocast dtype, except on the CPU for LSTMCell and
    # GRUCell with float32 states, where torch's composites promote to float32 (see seqops/nn/_autocast.py).
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    theirs, ours = cell_pair(kind)
    x, hx, leaves = make_inputs(kind, True, True, torch.float32, device)
    with torch.autocast(device, dtype=dtype):
        actual = run(ours.to(device), x, hx, leaves)
        baseline = run(theirs.to(device), x, hx, leaves)
    expected_dtype = torch.float32 if device == "cpu" and kind in ("LSTMCell", "GRUCell") else dtype
    for key in (k for k in actual if k.startswith("out")):
        assert actual[key].dtype == baseline[key].dtype == expected_dtype, key
    assert all(v.dtype == torch.float32 for k, v in actual.items() if k.startswith("grad_"))
    # Same numbers as the cell run on inputs and weights cast to the result dtype by hand.
    cast = [t.detach().to(expected_dtype).requires_grad_() for t in leaves]
    by_hand = run(ours.to(expected_dtype), cast[0], tuple(cast[1:]) if kind == "LSTMCell" else cast[1], cast)
    for key in actual:
        torch.testing.assert_close(actual[key], by_hand[key].to(actual[key].dtype), msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_the_two_bias_gradients_are_two_tensors(kind):
    # One gradient serves both biases; the backward hands back two tensors, as torch.nn does, so an in-place
    # change of one (a functional optimizer step, an in-place hook) leaves the other alone.
    for cell in cell_pair(kind):
        x, hx, leaves = make_inputs(kind, True, True, torch.float32)
        grads = run(cell, x, hx, leaves)
        expected = grads["grad_bias_hh"].clone()
        grads["grad_bias_ih"].mul_(0.1)
        torch.testing.assert_close(grads["grad_bias_hh"], expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batched", [True, False])
def test_hidden_size_zero_gives_empty_states_like_torch(kind, batched):
    name, _, nonlinearity = kind.partition("_")
    kwargs = {"nonlinearity": nonlinearity} if nonlinearity else {}
    theirs, ours = getattr(nn, name)(I, 0, **kwargs), getattr(seqops, name)(I, 0, **kwargs)
    x = torch.randn((B, I) if batched else (I,), requires_grad=True)
    want, got = theirs(x), ours(x)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.requires_grad
    sum(s.sum() for s in got).backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the result dtypes of torch.nn's cells too
        want, got = theirs(x), ours(x)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    assert [t.dtype for t in got] == [t.dtype for t in want]

