"""seqops.reference.rnn (and the shared seqops.ops.rnn_stack plumbing) equals torch.nn in float64.

Forward and every gradient (input, h0, c0, each weight and bias), with the weights taken from a torch.nn
module, compared with assert_close's default float64 tolerances.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import seqops.reference as ref  # the package re-exports every name of seqops/reference/rnn.py
from seqops.ops.rnn_stack import rnn_stack, weights_from_module

F64 = torch.float64
T, B, I, H, P = 5, 3, 4, 6, 3  # P: proj_size
MODES = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]


def make_module(mode, *, num_layers=1, bias=True, batch_first=False, bidirectional=False, proj_size=0,
                dropout=0.0, dtype=F64):
    kwargs = dict(num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                  dropout=dropout, dtype=dtype)
    if mode == "LSTM":
        return nn.LSTM(I, H, proj_size=proj_size, **kwargs)
    if mode == "GRU":
        return nn.GRU(I, H, **kwargs)
    return nn.RNN(I, H, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", **kwargs)


def make_cell(mode, bias):
    if mode == "LSTM":
        return nn.LSTMCell(I, H, bias=bias, dtype=F64)
    if mode == "GRU":
        return nn.GRUCell(I, H, bias=bias, dtype=F64)
    return nn.RNNCell(I, H, bias=bias, nonlinearity="tanh" if mode == "RNN_TANH" else "relu", dtype=F64)


def make_hx(mode, module, batch):
    """Random leaf initial states for module; batch None gives unbatched states."""
    states = module.num_layers * (2 if module.bidirectional else 1)
    state_size = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
    lead = (states,) if batch is None else (states, batch)
    h0 = torch.randn(*lead, state_size, dtype=F64, requires_grad=True)
    if mode != "LSTM":
        return h0
    return h0, torch.randn(*lead, module.hidden_size, dtype=F64, requires_grad=True)


def flat(obj):
    """All tensors in a (possibly nested) result, PackedSequence data included; None gives none."""
    if obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, nn.utils.rnn.PackedSequence):
        return [obj.data]
    return [t for o in obj for t in flat(o)]


def assert_same_forward_and_grads(expected, actual, leaves):
    """Equal outputs, and equal gradients wrt every leaf for one random cotangent."""
    expected, actual = flat(expected), flat(actual)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e)
    cotangents = [torch.randn_like(e) for e in expected]
    grads_e = torch.autograd.grad(expected, leaves, cotangents)
    grads_a = torch.autograd.grad(actual, leaves, cotangents)
    for ge, ga in zip(grads_e, grads_a):
        torch.testing.assert_close(ga, ge)


def ref_forward(mode, module, input, hx, **kwargs):
    return ref.rnn(
        mode, input, hx, weights_from_module(module), num_layers=module.num_layers,
        bidirectional=module.bidirectional, batch_first=module.batch_first, **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------
# Cells


CELLS = {
    "LSTM": ref.lstm_cell,
    "GRU": ref.gru_cell,
    "RNN_TANH": ref.rnn_tanh_cell,
    "RNN_RELU": ref.rnn_relu_cell,
}


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_cell_matches_torch(mode, bias, batched):
    cell = make_cell(mode, bias)
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=F64, requires_grad=True)
    h = torch.randn(*lead, H, dtype=F64, requires_grad=True)
    c = torch.randn(*lead, H, dtype=F64, requires_grad=True)
    hx = (h, c) if mode == "LSTM" else h
    b_ih, b_hh = (cell.bias_ih, cell.bias_hh) if bias else (None, None)
    actual = CELLS[mode](x, hx, cell.weight_ih, cell.weight_hh, b_ih, b_hh)
    expected = cell(x, hx)
    assert flat(actual)[0].shape == lead + (H,)
    leaves = [x, h] + ([c] if mode == "LSTM" else []) + list(cell.parameters())
    assert_same_forward_and_grads(expected, actual, leaves)


# ---------------------------------------------------------------------------------------------------------
# Whole modules


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_rnn_matches_torch(mode, num_layers, bidirectional, bias, batch_first):
    module = make_module(mode, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         bidirectional=bidirectional)
    x = torch.randn(*((B, T) if batch_first else (T, B)), I, dtype=F64, requires_grad=True)
    hx = make_hx(mode, module, B)
    leaves = [x, *flat(hx), *module.parameters()]
    assert_same_forward_and_grads(module(x, hx), ref_forward(mode, module, x, hx), leaves)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_rnn_without_hx_matches_torch(mode, bidirectional):
    module = make_module(mode, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    leaves = [x, *module.parameters()]
    assert_same_forward_and_grads(module(x), ref_forward(mode, module, x, None), leaves)


@pytest.mark.parametrize("given_hx", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_proj_matches_torch(num_layers, bidirectional, given_hx):
    module = make_module("LSTM", num_layers=num_layers, bidirectional=bidirectional, proj_size=P)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    hx = make_hx("LSTM", module, B) if given_hx else None
    out, (h_n, c_n) = ref_forward("LSTM", module, x, hx)
    assert out.shape == (T, B, P * (2 if bidirectional else 1)) and h_n.shape[-1] == P and c_n.shape[-1] == H
    leaves = [x, *flat(hx), *module.parameters()]
    assert_same_forward_and_grads(module(x, hx), (out, (h_n, c_n)), leaves)


@pytest.mark.parametrize("given_hx", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_unbatched_matches_torch(mode, batch_first, given_hx):
    module = make_module(mode, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(T, I, dtype=F64, requires_grad=True)
    hx = make_hx(mode, module, None) if given_hx else None
    actual = ref_forward(mode, module, x, hx)
    assert flat(actual)[0].shape == (T, 2 * H) and flat(actual)[1].shape == (4, H)
    leaves = [x, *flat(hx), *module.parameters()]
    assert_same_forward_and_grads(module(x, hx), actual, leaves)


@pytest.mark.parametrize("given_hx", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_packed_unsorted_matches_torch(mode, bidirectional, given_hx):
    # Unsorted lengths with a tie and a length-1 sequence: exercises the permutation and the shrinking batch.
    lengths = torch.tensor([2, 5, 1, 5])
    proj = P if mode == "LSTM" else 0
    module = make_module(mode, num_layers=2, bidirectional=bidirectional, proj_size=proj)
    padded = torch.randn(T, len(lengths), I, dtype=F64, requires_grad=True)
    # Packed once per forward: the two backward passes must not share (and free) the packing graph.
    pack = lambda: pack_padded_sequence(padded, lengths, enforce_sorted=False)
    hx = make_hx(mode, module, len(lengths)) if given_hx else None
    packed = pack()
    expected, actual = module(pack(), hx), ref_forward(mode, module, packed, hx)
    assert torch.equal(actual[0].batch_sizes, packed.batch_sizes)
    assert torch.equal(actual[0].sorted_indices, packed.sorted_indices)
    assert torch.equal(actual[0].unsorted_indices, packed.unsorted_indices)
    out_e, _ = pad_packed_sequence(expected[0])
    out_a, len_a = pad_packed_sequence(actual[0])
    assert torch.equal(len_a, lengths)
    leaves = [padded, *flat(hx), *module.parameters()]
    # Padded outputs (original batch order) and final states (unpermuted), forward and gradients.
    assert_same_forward_and_grads((out_e, expected[1]), (out_a, actual[1]), leaves)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_dropout_masks_match_torch(mode, packed):
    # torch.nn draws one F.dropout mask per layer output (all but the last), in layer order, on the time-major
    # [T, B, D*H] tensor (packed: [N, D*H]); rnn_stack does the same, so equal seeds give equal masks.
    module = make_module(mode, num_layers=3, bidirectional=True, dropout=0.5).train()
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    lengths = torch.tensor([3, 5, 4])
    make_input = (lambda: pack_padded_sequence(x, lengths, enforce_sorted=False)) if packed else (lambda: x)
    hx = make_hx(mode, module, B)
    leaves = [x, *flat(hx), *module.parameters()]
    torch.manual_seed(1234)
    expected = module(make_input(), hx)
    torch.manual_seed(1234)
    actual = ref_forward(mode, module, make_input(), hx, dropout=0.5, training=True)
    assert_same_forward_and_grads(expected, actual, leaves)
    # And dropout did happen: the result differs from the same forward without it.
    no_dropout = ref_forward(mode, module, make_input(), hx, dropout=0.5, training=False)
    assert not torch.allclose(flat(actual)[0], flat(no_dropout)[0])


@pytest.mark.parametrize("shape", [(1, 1), (1, B), (T, 1), (T, 0)], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_edge_sizes_match_torch(mode, shape):
    """Length 1, batch 1 and an empty batch."""
    module = make_module(mode, num_layers=2, bidirectional=True)
    x = torch.randn(*shape, I, dtype=F64, requires_grad=True)
    hx = make_hx(mode, module, shape[1])
    actual = ref_forward(mode, module, x, hx)
    assert flat(actual)[0].shape == (*shape, 2 * H)
    assert_same_forward_and_grads(module(x, hx), actual, [x, *flat(hx), *module.parameters()])


@pytest.mark.parametrize("mode", MODES)
def test_conveniences_match_torch(mode):
    module = make_module(mode, num_layers=2)
    x = torch.randn(T, B, I, dtype=F64)
    fn = {"LSTM": ref.lstm, "GRU": ref.gru, "RNN_TANH": ref.rnn_tanh, "RNN_RELU": ref.rnn_relu}[mode]
    actual = fn(x, None, weights_from_module(module), num_layers=2, bidirectional=False)
    for a, e in zip(flat(actual), flat(module(x)), strict=True):
        torch.testing.assert_close(a, e)


# ---------------------------------------------------------------------------------------------------------
# upcast


def cast(obj, dtype):
    """obj (a tensor, None, or nested tuples/lists of them) with every tensor cast to dtype."""
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast(o, dtype) for o in obj)
    return None if obj is None else obj.to(dtype)


@pytest.mark.parametrize("mode", MODES)
def test_upcast_computes_in_fp32(mode):
    module = make_module(mode, num_layers=2, bidirectional=True, proj_size=P if mode == "LSTM" else 0)
    x16 = torch.randn(T, B, I, dtype=torch.float16)
    hx16 = cast(make_hx(mode, module, B), torch.float16)
    weights16 = cast(weights_from_module(module), torch.float16)
    kwargs = dict(num_layers=2, bidirectional=True)
    # fp32 on the same fp16-rounded inputs, so that only the precision of the computation differs.
    hx32, weights32 = cast(hx16, torch.float32), cast(weights16, torch.float32)
    fp32 = flat(ref.rnn(mode, x16.float(), hx32, weights32, **kwargs))
    upcast = flat(ref.rnn(mode, x16, hx16, weights16, upcast=True, **kwargs))
    plain = flat(ref.rnn(mode, x16, hx16, weights16, **kwargs))
    assert len(upcast) == len(fp32) == len(plain)
    for u, p, f in zip(upcast, plain, fp32):
        assert u.dtype == torch.float16 and p.dtype == torch.float16
        # upcast=True is the fp32 result rounded once to fp16, exactly ...
        torch.testing.assert_close(u, f.half(), rtol=0, atol=0)
        # ... so it is at least as close to fp32 as the all-fp16 computation.
        assert (u.float() - f).abs().max() <= (p.float() - f).abs().max()


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_cell_upcast_computes_in_fp32(mode, batched):
    cell = make_cell(mode, bias=True).half()
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=torch.float16)
    h, c = torch.randn(*lead, H, dtype=torch.float16), torch.randn(*lead, H, dtype=torch.float16)
    hx = (h, c) if mode == "LSTM" else h
    args = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    upcast = flat(CELLS[mode](x, hx, *args, upcast=True))
    fp32 = flat(CELLS[mode](x.float(), cast(hx, torch.float32), *cast(args, torch.float32)))
    for u, f in zip(upcast, fp32):
        assert u.dtype == torch.float16 and u.shape == lead + (H,)
        torch.testing.assert_close(u, f.half(), rtol=0, atol=0)


def test_upcast_keeps_float64():
    cell = make_cell("GRU", bias=True)
    x, h = torch.randn(B, I, dtype=F64), torch.randn(B, H, dtype=F64)
    args = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    out = ref.gru_cell(x, h, *args, upcast=True)
    assert out.dtype == F64
    torch.testing.assert_close(out, cell(x, h))


# ---------------------------------------------------------------------------------------------------------
# rnn_stack's errors


def failing_layer(*args):
    raise AssertionError("the layer must not run when the arguments are invalid")


def stack(mode, module, x, hx, weights=None, **kwargs):
    return rnn_stack(mode, x, hx, weights_from_module(module) if weights is None else weights,
                     num_layers=module.num_layers, bidirectional=module.bidirectional,
                     batch_first=module.batch_first, layer=failing_layer, **kwargs)


def assert_same_error(mode, module, x, hx):
    """rnn_stack raises torch.nn's exception type and message for this hx."""
    with pytest.raises((RuntimeError, ValueError)) as theirs:
        module(x, hx)
    with pytest.raises(theirs.type) as ours:
        stack(mode, module, x, hx)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("mode", MODES)
def test_stack_rejects_wrong_hx_shapes_like_torch(mode):
    module = make_module(mode, num_layers=2, bidirectional=False, proj_size=P if mode == "LSTM" else 0)
    x = torch.randn(T, B, I, dtype=F64)
    h, c = torch.randn(2, B, P if mode == "LSTM" else H, dtype=F64), torch.randn(2, B, H, dtype=F64)
    wrap = (lambda h_, c_=c: (h_, c_)) if mode == "LSTM" else (lambda h_: h_)
    assert_same_error(mode, module, x, wrap(h[:1]))  # wrong number of layers
    assert_same_error(mode, module, x, wrap(h[:, :2]))  # wrong batch
    assert_same_error(mode, module, x, wrap(torch.randn(2, B, H + 1, dtype=F64)))  # wrong hidden/proj size
    assert_same_error(mode, module, x, wrap(h[0]))  # 2-D state for batched input
    assert_same_error(mode, module, x[:, 0], wrap(h))  # 3-D state for unbatched input
    if mode == "LSTM":
        assert_same_error(mode, module, x, (h, c[:, :2]))  # wrong c0 batch
        assert_same_error(mode, module, x, (h, torch.randn(2, B, P, dtype=F64)))  # c0 sized like h0
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        stack(mode, module, x[None], None)
    assert_same_error(mode, module, x[:0], None)  # empty sequence


def test_stack_rejects_bad_arguments():
    module = make_module("LSTM", num_layers=2)
    x = torch.randn(T, B, I, dtype=F64)
    h = torch.randn(2, B, H, dtype=F64)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(2, 4, 6\), got \[2, 3, 6\]"):
        packed = pack_padded_sequence(torch.randn(T, 4, I, dtype=F64), torch.tensor([5, 3, 4, 1]),
                                      enforce_sorted=False)
        stack("LSTM", module, packed, (h, h))
    with pytest.raises(RuntimeError, match="LSTM expects hx as a tuple"):
        stack("LSTM", module, x, h)
    with pytest.raises(RuntimeError, match="GRU expects hx as a Tensor"):
        stack("GRU", make_module("GRU", num_layers=2), x, (h, h))
    with pytest.raises(RuntimeError, match="not the same dtype"):
        stack("LSTM", module, x, (h.float(), h))
    with pytest.raises(RuntimeError, match="not the same dtype"):
        stack("LSTM", module, x, (h, h.float()))
    with pytest.raises(ValueError, match="expected 2 weight tuples"):
        stack("LSTM", module, x, None, weights=weights_from_module(module)[:1])
    with pytest.raises(ValueError, match="Unrecognized RNN mode"):
        stack("lstm", module, x, None)


def test_stack_passes_contiguous_tensors_to_layer():
    module = make_module("LSTM", num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, I, dtype=F64)
    # Non-contiguous states: a transposed view.
    h0 = torch.randn(B, 4, H, dtype=F64).transpose(0, 1)
    seen = []

    def layer(mode, input, batch_sizes, hx, cx, *weights_and_reverse):
        seen.extend(t for t in (input, hx, cx, *weights_and_reverse[:-1]) if t is not None)
        return ref.rnn_layer(mode, input, batch_sizes, hx, cx, *weights_and_reverse)

    out, _ = rnn_stack("LSTM", x, (h0, h0), weights_from_module(module), num_layers=2, bidirectional=True,
                       batch_first=True, layer=layer)
    assert seen and all(t.is_contiguous() for t in seen)
    torch.testing.assert_close(out, module(x, (h0, h0))[0])


def test_the_reference_refuses_what_torch_refuses():
    # An oracle that broadcast a state, promoted a dtype or read a malformed batch_sizes would agree with a
    # caller making that mistake.
    w_ih, w_hh = torch.randn(12, 3), torch.randn(12, 4)
    with pytest.raises(RuntimeError, match=r"state of shape \[2, 4\]"):
        ref.gru_cell(torch.randn(2, 3), torch.randn(1, 4), w_ih, w_hh)  # torch: batch size mismatch
    with pytest.raises(RuntimeError, match="dtype"):
        ref.gru_cell(torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4), w_ih, w_hh)
    with pytest.raises(RuntimeError, match=r"state of shape \[5, 4\]"):
        ref.rnn_layer("GRU", torch.randn(3, 5, 3), None, torch.randn(4, 4), None, w_ih, w_hh, None, None,
                            None, False)
    x, h = torch.randn(3, 3), torch.randn(2, 4)
    for sizes in ([1, 2], [2, 0, 1], [2, 2]):
        with pytest.raises(RuntimeError, match="batch_sizes"):
            ref.rnn_layer("GRU", x, torch.tensor(sizes), h, None, w_ih, w_hh, None, None, None, False)
