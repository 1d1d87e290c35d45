"""seqops under CUDA graphs: a training step (forward and backward) captured once and replayed on new data gives
what the eager step gives. A small-batch recurrence is bound by kernel launches (two per step), which a graph
replays without the CPU; for that the ops must be capturable: no host synchronisation, no device-to-host read,
all allocations through PyTorch's allocator. Skipped where no GPU is visible."""

import pytest
import torch
from torch import nn

import seqops

pytestmark = pytest.mark.gpu


class _Head(nn.Module):
    """The layer under test with a flat tensor output: output, then every final state."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        out = self.layer(x)
        if isinstance(out, torch.Tensor):
            return out
        out, state = out
        states = state if isinstance(state, tuple) else (state,)
        return (out, *states)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _captured_step(model, static_inputs, upstream):
    """Captures forward + backward of model(*static_inputs) against fixed upstream gradients; returns the graph,
    the static outputs and the static gradients (inputs first, then parameters)."""
    wrt = [*static_inputs, *model.parameters()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: lazy initialisation, cuBLAS handles, autotuning
        for _ in range(3):
            torch.autograd.grad(_as_tuple(model(*static_inputs)), wrt, upstream)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _as_tuple(model(*static_inputs))
        grads = torch.autograd.grad(outs, wrt, upstream)
    return graph, outs, grads


def _assert_replay_matches_eager(model, make_inputs, dtype):
    torch.manual_seed(0)
    static_inputs = [t.requires_grad_() for t in make_inputs()]
    with torch.no_grad():
        shapes = [t.shape for t in _as_tuple(model(*static_inputs))]
    upstream = [torch.randn(s, device="cuda", dtype=dtype) for s in shapes]
    graph, outs, grads = _captured_step(model, static_inputs, upstream)
    for _ in range(2):  # fresh data each replay: nothing of the capture's data may be baked in
        fresh = make_inputs()
        with torch.no_grad():
            for static, new in zip(static_inputs, fresh):
                static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        leaves = [t.detach().clone().requires_grad_() for t in fresh]
        want_outs = _as_tuple(model(*leaves))
        want_grads = torch.autograd.grad(want_outs, [*leaves, *model.parameters()], upstream)
        for got, want in zip((*outs, *grads), (*want_outs, *want_grads), strict=True):
            _assert_same_up_to_rounding(got, want)


def _assert_same_up_to_rounding(got, want):
    # The same kernels on the same data: equal, up to cuBLAS choosing another reduction order on the capture
    # stream. Data the capture baked in (a stale input, a host-side value) would be off by the data's own scale.
    atol = 4 * torch.finfo(want.dtype).eps * max(want.abs().max().item(), 1e-3)
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["LSTM", "LSTM-proj", "GRU", "RNN"])
def test_rnn_training_step_replays_like_eager(name, dtype):
    T, B, I, H = 12, 4, 16, 32
    options = {"num_layers": 2, "bidirectional": True}
    if name == "LSTM-proj":
        options["proj_size"] = 8
    cls = getattr(seqops, name.split("-")[0])
    torch.manual_seed(0)
    model = _Head(cls(I, H, **options)).to("cuda", dtype)
    _assert_replay_matches_eager(model, lambda: [torch.randn(T, B, I, device="cuda", dtype=dtype)], dtype)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_training_step_replays_like_eager(name):
    B, I, H = 4, 16, 32
    torch.manual_seed(0)
    cell = getattr(seqops, name)(I, H).cuda()

    class Unrolled(nn.Module):  # three steps of the cell, the state carried
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x, h):
            state = (h, torch.zeros_like(h)) if name == "LSTMCell" else h
            for t in range(x.shape[0]):
                state = self.cell(x[t], state)
            return state[0] if name == "LSTMCell" else state

    _assert_replay_matches_eager(
        Unrolled(), lambda: [torch.randn(3, B, I, device="cuda"), torch.randn(B, H, device="cuda")], torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_forward_backward_replays_like_eager(dtype, is_causal):
    B, Hq, Hkv, L, D = 2, 4, 2, 200, 64

    class Attend(nn.Module):
        def forward(self, q, k, v):
            return seqops.attention(q, k, v, is_causal=is_causal, enable_gqa=True)

    def make_inputs():
        return [torch.randn(B, heads, L, D, device="cuda", dtype=dtype) for heads in (Hq, Hkv, Hkv)]

    _assert_replay_matches_eager(Attend(), make_inputs, dtype)


def test_attention_with_dropout_replays_reproducibly():
    # Dropout's seed is drawn from the CUDA generator inside the graph: each replay draws a new mask (as
    # eager calls do), and replays from one generator state draw the same one.
    q, k, v = (torch.randn(1, 2, 64, 32, device="cuda") for _ in range(3))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        seqops.attention(q, k, v, dropout_p=0.3)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = seqops.attention(q, k, v, dropout_p=0.3)
    torch.cuda.manual_seed(5)
    graph.replay()
    first = out.clone()
    graph.replay()
    second = out.clone()
    torch.cuda.manual_seed(5)
    graph.replay()
    assert not torch.equal(first, second)
    torch.testing.assert_close(out, first, rtol=0, atol=0)
