"""torch.compile(fullgraph=True) over models with seqops RNN layers: no graph break, same values and gradients
as eager, a second sequence length without error."""

import pytest
import torch
from torch import nn

import seqops
from seqops.ops import rnn_layer

pytestmark = pytest.mark.compile

T, B, I, H = 5, 3, 4, 6


class Tagger(nn.Module):
    """An RNN layer and a linear head; returns a scalar built from every output of the RNN."""

    def __init__(self, rnn, out_features):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(out_features, 2)

    def forward(self, x, hx=None):
        y, state = self.rnn(x, hx)
        states = state if isinstance(state, tuple) else (state,)
        return self.head(y).square().mean() + sum(s.sin().sum() for s in states)


def _model(mode):
    if mode == "LSTM":
        rnn, out = seqops.LSTM(I, H, 2, batch_first=True, bidirectional=True, proj_size=3), 6
    elif mode == "GRU":
        rnn, out = seqops.GRU(I, H, 2, dropout=0.0, bidirectional=True), 2 * H
    else:
        rnn, out = seqops.RNN(I, H, 1, nonlinearity="relu"), H
    return Tagger(rnn, out)


def _loss_and_grads(model, x, hx):
    loss = model(x, hx)
    leaves = [x, *(hx if isinstance(hx, tuple) else [hx] if hx is not None else [])]
    return loss, torch.autograd.grad(loss, [*leaves, *model.parameters()])

def _assert_same_loss_and_grads(compiled, eager, x, hx):
    loss, grads = _loss_and_grads(compiled, x, hx)
    loss_eager, grads_eager = _loss_and_grads(eager, x, hx)
    torch.testing.assert_close(loss, loss_eager)
    for g, g_eager in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(g, g_eager)



def _inputs(mode, length):
    x = torch.randn(B, length, I) if mode == "LSTM" else torch.randn(length, B, I)
    x.requires_grad_()
    if mode == "LSTM":
        return x, (torch.randn(4, B, 3, requires_grad=True), torch.randn(4, B, H, requires_grad=True))
    if mode == "GRU":
        return x, torch.randn(4, B, H, requires_grad=True)
    return x, None


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_RELU"])
def test_fullgraph_matches_eager(mode):
    model = _model(mode)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for length in (T, T + 2):  # a second length: recompiles (or goes dynamic) instead of failing
        _assert_same_loss_and_grads(compiled, model, *_inputs(mode, length))


def test_fullgraph_inductor_training_step():
    # The default backend end to end (inductor generates C++ for the head and the glue around the op).
    torch.manual_seed(0)
    model = _model("LSTM")
    reference = _model("LSTM")
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    _assert_same_loss_and_grads(compiled, reference, *_inputs("LSTM", T))


def test_torch_nn_lstm_still_breaks_the_graph():
    # Why seqops.LSTM subclasses nn.RNNBase and not nn.LSTM (seqops/nn/rnn.py). If this ever starts to
    # pass through, Dynamo has learnt to trace nn.LSTM and the choice can be revisited.
    model = Tagger(nn.LSTM(I, H), H)
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(model, fullgraph=True, backend="eager")(torch.randn(T, B, I))


def test_fullgraph_takes_a_packed_sequence():
    # Packing itself is torch.nn.utils.rnn code that Dynamo skips, so it happens outside; the packed
    # batch goes through the compiled model whole (batch_sizes are CPU values, read at trace time).
    model = seqops.GRU(I, H, 2, bidirectional=True)

    def final_states(packed):
        return model(packed)[1]

    x = torch.randn(T, B, I, requires_grad=True)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 5, 2]), enforce_sorted=False)
    compiled = torch.compile(final_states, fullgraph=True, backend="aot_eager")(packed)
    eager = final_states(packed)
    torch.testing.assert_close(compiled, eager)
    # Eager first, keeping the shared packing graph: the compiled backward runs once (donated buffers).
    grad_eager = torch.autograd.grad(eager.sum(), x, retain_graph=True)[0]
    grad = torch.autograd.grad(compiled.sum(), x)[0]
    torch.testing.assert_close(grad, grad_eager)


@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_fullgraph_takes_a_packed_sequence_with_initial_states(mode, enforce_sorted):
    # torch's own state check reads batch_sizes[0], data that fullgraph cannot guard on.
    model = getattr(seqops, mode)(I, H, 2, bidirectional=True)
    x = torch.randn(T, B, I, requires_grad=True)
    lengths = torch.tensor([5, 3, 2]) if enforce_sorted else torch.tensor([3, 5, 2])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    h0 = torch.randn(4, B, H, requires_grad=True)
    hx = (h0, torch.randn(4, B, H)) if mode == "LSTM" else h0

    def run(packed, hx):
        out, state = model(packed, hx)
        return out.data, state

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    got, want = compiled(packed, hx), run(packed, hx)
    torch.testing.assert_close(got, want)
    loss = lambda result: result[0].sum() + sum(s.sum() for s in torch.utils._pytree.tree_leaves(result[1]))  # noqa: E731
    # Eager first, keeping the shared packing graph: the compiled backward runs once (donated buffers).
    want_grads = torch.autograd.grad(loss(want), (x, h0), retain_graph=True)
    for a, b in zip(want_grads, torch.autograd.grad(loss(got), (x, h0))):
        torch.testing.assert_close(a, b)
    # A state of the wrong batch is still refused, by the module's check or by the op's against batch_sizes.
    bad = torch.randn(4, B + 1, H)
    with pytest.raises(RuntimeError, match=r"size|expected hx of shape \[3, 6\]"):
        compiled(packed, (bad, bad) if mode == "LSTM" else bad)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grad", [True, False])
def test_fullgraph_plain_lstm_under_autocast(monkeypatch, grad, input_dtype):
    # Under CPU autocast the LSTM's result dtype depends on whether torch.nn's LSTM would take oneDNN, which
    # the module must decide without queries Dynamo cannot trace. (Eager on seqops' kernels too, as compiled
    # code always is: oneDNN's bf16 LSTM rounds differently.)
    monkeypatch.setattr(rnn_layer, "CPU_LSTM_INFERENCE", "fused")
    lstm = seqops.LSTM(I, H, 2)
    x = torch.randn(T, B, I, dtype=input_dtype)

    def run(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return lstm(x)

    with torch.set_grad_enabled(grad):
        got = torch.compile(run, fullgraph=True, backend="aot_eager")(x)
        want = run(x)
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want), strict=True):
        torch.testing.assert_close(a, b)  # dtypes included


@pytest.mark.parametrize("grad", [True, False])
def test_fullgraph_plain_lstm(grad):
    # No proj_size, so the CPU inference route to oneDNN's fused LSTM is considered: Dynamo must not trace its
    # availability checks (torch.backends.mkldnn.is_available() is a graph break), with grad on or off.
    lstm = seqops.LSTM(I, H, 2)
    x = torch.randn(T, B, I)
    with torch.set_grad_enabled(grad):
        out, (h, c) = torch.compile(lstm, fullgraph=True, backend="aot_eager")(x)
        want, (h_want, c_want) = lstm(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h, h_want)
    torch.testing.assert_close(c, c_want)
