"""The eager entry of the recurrent ops (seqops.ops._autograd.call_op -> _EagerAutograd) against the op's
torch.library autograd registration it stands in for: the same outputs and bit-identical gradients, the same
double backward, and the registered path wherever a tracer or a transform has to see the custom op."""

import pytest
import torch
from test_rnn_layer_ops import DIFFERENTIABLE, make_layer
from torch.nn.utils.rnn import pack_padded_sequence

import seqops
from seqops.ops._autograd import call_op

_ops = torch.ops.seqops
LAYER_OPS = {"LSTM": _ops.lstm_layer_forward, "GRU": _ops.gru_layer_forward, "RNN_TANH": _ops.rnn_layer_forward}


def _layer_args(mode, args):
    # the op's own argument order (seqops.ops.rnn_layer's contract -> the schema in csrc/seqops.cpp)
    a = args
    if mode == "LSTM":
        return (a["input"], a["batch_sizes"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                a["w_hr"], False)
    tail = (False,) if mode == "GRU" else (False, False)
    return (a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], *tail)


def _leaves(args):
    return tuple(a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                 else a for a in args)


def _outputs_and_grads(call, op, args, out_grads=None):
    leaves = _leaves(args)
    outs = call(op, *leaves)
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    differentiable = [o for o in outs if o.requires_grad]
    if out_grads is None:
        out_grads = [torch.randn_like(o) for o in differentiable]
    torch.autograd.backward(differentiable, out_grads)
    return outs, [x.grad for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad], out_grads


def _registered(op, *args):
    return op(*args)


@pytest.mark.parametrize("mode", list(LAYER_OPS))
@pytest.mark.parametrize("packed", [False, True])
def test_layer_ops_eager_entry_matches_the_registered_autograd(mode, packed):
    args = _layer_args(mode, make_layer(mode, dtype=torch.float32, lengths=[5, 3, 3, 1] if packed else None))
    outs, grads, out_grads = _outputs_and_grads(call_op, LAYER_OPS[mode], args)
    ref_outs, ref_grads, _ = _outputs_and_grads(_registered, LAYER_OPS[mode], args, out_grads)
    assert type(outs[0].grad_fn).__name__ == "_EagerAutogradBackward"
    assert len(grads) == len(ref_grads) == sum(1 for k in DIFFERENTIABLE if make_layer(mode)[k] is not None)
    for a, b in zip((*outs, *grads), (*ref_outs, *ref_grads)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", ["lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"])
def test_cells_eager_entry_matches_the_registered_autograd(cell):
    B, I, H = 5, 6, 7
    g = {"lstm_cell": 4, "gru_cell": 3}.get(cell, 1)
    x, h = torch.randn(B, I), torch.randn(B, H)
    weights = [torch.randn(g * H, I), torch.randn(g * H, H), torch.randn(g * H), torch.randn(g * H)]
    state = (h, torch.randn(B, H)) if cell == "lstm_cell" else h
    leaves = [t.clone().requires_grad_() for t in (x, *weights)]
    out = getattr(seqops, cell)(leaves[0], state, *leaves[1:])
    out = out[0] if cell == "lstm_cell" else out
    assert type(out.grad_fn).__name__ == "_EagerAutogradBackward"  # the eager entry was taken
    out.sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (x, *weights)]
    op = {"lstm_cell": _ops.lstm_cell_forward, "gru_cell": _ops.gru_cell_forward}.get(cell, _ops.rnn_cell_forward)
    extra = () if cell in ("lstm_cell", "gru_cell") else (cell == "rnn_relu_cell",)
    state_args = state if cell == "lstm_cell" else (state,)
    ref = op(ref_leaves[0], *state_args, *ref_leaves[1:], *extra)
    ref = ref if isinstance(ref, torch.Tensor) else ref[0]
    assert type(ref.grad_fn).__name__.startswith("GeneratedBackwardFor_seqops")
    assert torch.equal(out, ref)
    ref.sum().backward()
    for a, b in zip(leaves, ref_leaves):
        assert torch.equal(a.grad, b.grad)


def test_double_backward_through_a_module_matches_torch_nn():
    lstm = seqops.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = lstm(x)
    # create_graph: the backward runs through the reference, whose graph hangs off the saved inputs
    (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.sum(), x)
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(lstm.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(ref(x_ref)[0].pow(2).sum(), x_ref, create_graph=True)
    (ggx_ref,) = torch.autograd.grad(gx_ref.sum(), x_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(ggx, ggx_ref)


def test_no_graph_to_record_skips_autograd():
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    w_ih, w_hh = torch.randn(12, 3), torch.randn(12, 4)
    assert seqops.gru_cell(x, h, w_ih, w_hh).grad_fn is None


def test_activation_checkpointing_gives_the_same_gradients():
    from torch.utils.checkpoint import checkpoint

    gru = seqops.GRU(5, 7, num_layers=2).double()
    x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
    checkpoint(lambda t: gru(t)[0], x, use_reentrant=False).sum().backward()
    grads = [x.grad.clone(), *(p.grad.clone() for p in gru.parameters())]
    x.grad = None
    gru.zero_grad()
    gru(x)[0].sum().backward()
    for a, b in zip(grads, [x.grad, *(p.grad for p in gru.parameters())]):
        assert torch.equal(a, b)


def test_functorch_transforms_see_the_registered_op():
    # vmap over a cell: call_op hands transforms the custom op itself (they cannot take this autograd.Function)
    x, h, c = torch.randn(3, 5), torch.randn(7), torch.randn(7)
    w_ih, w_hh = torch.randn(28, 5), torch.randn(28, 7)
    batched = torch.func.vmap(lambda xi: seqops.lstm_cell(xi, (h, c), w_ih, w_hh)[0])(x)
    torch.testing.assert_close(batched, torch.lstm_cell(x, (h.expand(3, 7), c.expand(3, 7)), w_ih, w_hh)[0])


@pytest.mark.parametrize("masked", [False, True])
def test_attention_eager_entry_matches_the_registered_autograd(masked):
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    mask = torch.randn(2, 4, 9, 9) if masked else None
    args = (q, k, v, mask, None, 0.25, not masked, 0.0)
    outs, grads, out_grads = _outputs_and_grads(call_op, _ops.attention_fwd, args)
    ref_outs, ref_grads, _ = _outputs_and_grads(_registered, _ops.attention_fwd, args, out_grads)
    assert len(grads) == (4 if masked else 3)
    for a, b in zip((*outs, *grads), (*ref_outs, *ref_grads)):
        assert torch.equal(a, b)
    assert type(outs[0].grad_fn).__name__ == "_EagerAutogradBackward"
    assert type(ref_outs[0].grad_fn).__name__ == "GeneratedBackwardFor_seqops_attention_fwd_defaultBackward"


def test_jit_trace_records_the_custom_op_and_saves():
    # torch.jit.trace cannot export the Python autograd.Function: call_op hands the tracer the op itself
    import io

    gru = seqops.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    traced = torch.jit.trace(gru, (x,), check_trace=True)
    assert "seqops::gru_layer_forward" in {n.kind() for n in traced.inlined_graph.nodes()}
    torch.testing.assert_close(traced(x), gru(x))
    torch.jit.save(traced, io.BytesIO())


def _train_with_in_place_residual(module, x, residual, packed):
    # `out += residual` on the layer's output, then a backward through it -> the parameters' gradients
    module.zero_grad()
    if packed:
        out, _ = module(pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True))
        out = out.data  # a PackedSequence's data field: the output tensor itself
    else:
        out, _ = module(x)
    out += residual.reshape(-1, 4)[: out.shape[0]] if packed else residual
    out.sum().backward()
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("packed", [False, True])
def test_outputs_may_be_modified_in_place_and_trained_through(mode, packed):
    # As with torch.nn's CPU GRU/RNN: seqops' output is a copy of the tensor its backward reads, and no tracked
    # view. (torch.nn's CPU LSTM, on oneDNN, refuses this; seqops' LSTM is compared with torch.nn's LSTM with
    # the in-place add made out of place.)
    ours = getattr(seqops, mode)(3, 4, batch_first=True)
    theirs = getattr(torch.nn, mode)(3, 4, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    x, residual = torch.randn(2, 5, 3), torch.randn(2, 5, 4)
    got = _train_with_in_place_residual(ours, x, residual, packed)
    if mode == "LSTM":
        theirs.zero_grad()
        out, _ = theirs(pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True) if packed else x)
        out = out.data if packed else out
        (out + (residual.reshape(-1, 4)[: out.shape[0]] if packed else residual)).sum().backward()
        want = [p.grad.clone() for p in theirs.parameters()]
    else:
        want = _train_with_in_place_residual(theirs, x, residual, packed)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs", [{}, {"proj_size": 2}, {"num_layers": 2, "bidirectional": True}])
def test_jit_trace_of_an_lstm_passes_its_check(kwargs):
    # The trace check reruns with grad off, where eager CPU LSTM inference takes oneDNN's fused LSTM: while
    # tracing it must take the op it took with grad on.
    lstm = seqops.LSTM(3, 4, **kwargs)
    x = torch.randn(5, 2, 3)
    traced = torch.jit.trace(lstm, (x,), check_trace=True)
    torch.testing.assert_close(traced(x), lstm(x))
