"""The fused whole-sequence layer ops (seqops.ops.rnn_layer) against seqops.reference.rnn_layer: padded and
packed input, both directions, proj_size, with and without bias; every gradient; opcheck; gradcheck;
double backward; compile; bad input; the low-precision error rule."""

import pytest
import torch
from error_rule import assert_error_rule
from hypothesis import given, settings
from hypothesis import strategies as st

import seqops
from conftest import devices, strided_copy
from seqops import reference
from seqops.ops.rnn_layer import rnn_layer

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
MODES = list(GATES)


def make_layer(mode, T=5, B=4, I=3, H=6, proj=0, bias=True, lengths=None, dtype=torch.float64, device="cpu"):
    """Random arguments of rnn_layer. lengths (sorted, longest first) makes the input packed."""
    g, P = GATES[mode], proj or H
    scale = H ** -0.5
    opts = dict(dtype=dtype, device=device)
    if lengths is None:
        batch_sizes, x = None, torch.randn(T, B, I, **opts)
    else:
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(max(lengths))])
        B = len(lengths)
        x = torch.randn(int(batch_sizes.sum()), I, **opts)
    w = lambda *s: (torch.rand(*s, **opts) * 2 - 1) * scale  # noqa: E731  torch.nn's init range
    args = dict(
        input=x, batch_sizes=batch_sizes, hx=torch.randn(B, P, **opts),
        cx=torch.randn(B, H, **opts) if mode == "LSTM" else None,
        w_ih=w(g * H, I), w_hh=w(g * H, P), b_ih=w(g * H) if bias else None, b_hh=w(g * H) if bias else None,
        w_hr=w(P, H) if proj else None,
    )
    return args


DIFFERENTIABLE = ("input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def run(fn, mode, args, reverse, out_grads=None):
    leaves = {k: (v.detach().clone().requires_grad_() if k in DIFFERENTIABLE and v is not None else v)
              for k, v in args.items()}
    outs = [o for o in fn(mode, reverse=reverse, **leaves) if o is not None]
    if out_grads is None:
        out_grads = [torch.randn_like(o) for o in outs]
    torch.autograd.backward(outs, out_grads)
    grads = [leaves[k].grad for k in DIFFERENTIABLE if leaves[k] is not None]
    return outs, grads, out_grads


def assert_matches_reference(mode, args, reverse, **tol):
    outs, grads, out_grads = run(rnn_layer, mode, args, reverse)
    ref_outs, ref_grads, _ = run(reference.rnn_layer, mode, args, reverse, out_grads)
    assert len(grads) == len(ref_grads)
    for name, a, b in zip(["output", "h_n", "c_n"], outs, ref_outs):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{mode} {name}: {m}")
    present = [k for k in DIFFERENTIABLE if args[k] is not None]
    for name, a, b in zip(present, grads, ref_grads):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{mode} grad {name}: {m}")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference_float64(device, mode, reverse, packed, bias):
    lengths = [5, 4, 4, 2, 1] if packed else None
    assert_matches_reference(mode, make_layer(mode, bias=bias, lengths=lengths, device=device), reverse)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_lstm_projection(device, reverse, packed):
    lengths = [6, 3, 3, 1] if packed else None
    assert_matches_reference("LSTM", make_layer("LSTM", H=7, proj=3, lengths=lengths, device=device), reverse)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 1, 5, 33), (3, 9, 16, 97)])  # (T, B, I, H) odd sizes
def test_odd_sizes_float32(device, mode, shape):
    T, B, I, H = shape
    assert_matches_reference(mode, make_layer(mode, T, B, I, H, dtype=torch.float32, device=device), False)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("H", [1, 16, 20, 48, 64, 100, 272])
@pytest.mark.parametrize("B,T", [(1, 9), (7, 5), (12, 2), (13, 3)])
def test_cpu_packed_step_kernels_float32(mode, reverse, packed, H, B, T):
    """The CPU float32 step kernels on packed weight panels (csrc/cpu/packed_step.cpp): the LSTM's fused step,
    its whole-sequence forward and backward (unpacked input), per-step use for packed input, the plain product
    with and without bias (GRU, RNN). A panel is 4 SIMD vectors wide (64 floats with AVX-512, 32 with AVX2);
    weights that do not fill their last panel are padded, and only the real lanes are stored: H = 1, 20 and 100
    leave a vector partly or wholly past the last row (H = 20: the backward's W_hh^T panel has 16 + 4 + 0 + 0
    real lanes), which a stray store would write into the next gate or row. Rows split evenly over tiles of at
    most 6: 1, 4 + 3, 6 + 6, 5 + 4 + 4. H = 100 and 272 take the recurrent products over several K blocks (128
    wide), whose partial sums go through the output, in the forward as well as the backward (K = 4H)."""
    lengths = sorted([T, max(1, T - 2), 1] + [T] * (B - 3), reverse=True)[:B] if packed else None
    args = make_layer(mode, T=T, B=B, I=5, H=H, dtype=torch.float32, lengths=lengths)
    assert_matches_reference(mode, args, reverse)


@pytest.mark.parametrize("mode,proj", [(mode, 0) for mode in MODES] + [("LSTM", 16)])
@pytest.mark.parametrize("reverse", [False, True])
def test_one_step_float32_at_packed_step_sizes(mode, proj, reverse):
    # T = 1 (token-by-token decoding): the step products take at::mm, one product cannot repay a weight repack;
    # the recurrent weight gradient is the one init term (no shifted rows)
    args = make_layer(mode, T=1, B=4, I=5, H=64, proj=proj, dtype=torch.float32)
    assert_matches_reference(mode, args, reverse)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_cpu_packed_lstm_step_with_projection_float32(reverse, packed):
    lengths = [6, 4, 4, 1] if packed else None
    args = make_layer("LSTM", T=6, B=4, I=5, H=64, proj=16, dtype=torch.float32, lengths=lengths)
    assert_matches_reference("LSTM", args, reverse)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("H", [64, 100])
def test_cpu_packed_step_kernels_any_thread_count(threads, mode, H):
    # The whole-sequence kernels split panels over one OpenMP team with a barrier per step: one thread, and
    # more threads than the panels divide evenly over (some get none), must give the same results; H = 100
    # also splits a padded last panel and a partial last unit block.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = make_layer(mode, T=5, B=7, I=5, H=H, dtype=torch.float32)
        for reverse in (False, True):
            assert_matches_reference(mode, args, reverse)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("H", [20, 64])
def test_cpu_packed_step_kernels_propagate_nan_and_inf(mode, H):
    args = make_layer(mode, T=4, B=3, I=5, H=H, dtype=torch.float32)
    args["input"][1, 0, 2], args["input"][2, 2, 0], args["hx"][1, 5] = float("nan"), float("inf"), float("-inf")
    ours = rnn_layer(mode, reverse=False, **args)
    theirs = reference.rnn_layer(mode, reverse=False, **args)
    for a, b in zip(ours, theirs):
        if a is not None:
            torch.testing.assert_close(a, b, equal_nan=True)


def test_packed_equal_lengths_matches_padded():
    args = make_layer("GRU", T=4, B=3)
    packed = dict(args, input=args["input"].reshape(12, -1), batch_sizes=torch.tensor([3, 3, 3, 3]))
    out, h_n, _ = rnn_layer("GRU", reverse=True, **args)
    out_p, h_n_p, _ = rnn_layer("GRU", reverse=True, **packed)
    torch.testing.assert_close(out.reshape(12, -1), out_p)
    torch.testing.assert_close(h_n, h_n_p)


def test_non_contiguous_input_and_state():
    args = make_layer("LSTM", T=4, B=3, I=5, H=6)
    nc = dict(args)
    nc["input"] = args["input"].transpose(0, 1).contiguous().transpose(0, 1)  # [T, B, I] with B-major strides
    nc["hx"] = args["hx"].t().contiguous().t()
    nc["w_ih"] = args["w_ih"].t().contiguous().t()
    assert not nc["input"].is_contiguous() and not nc["hx"].is_contiguous()
    outs, grads, out_grads = run(rnn_layer, "LSTM", args, False)
    outs_nc, grads_nc, _ = run(rnn_layer, "LSTM", nc, False, out_grads)
    for a, b in zip(outs + grads, outs_nc + grads_nc):
        torch.testing.assert_close(a, b)


def test_zero_length_sequence_returns_initial_state():
    args = make_layer("LSTM", T=0)
    out, h_n, c_n = rnn_layer("LSTM", reverse=False, **args)
    assert out.shape == (0, 4, 6)
    torch.testing.assert_close(h_n, args["hx"])
    torch.testing.assert_close(c_n, args["cx"])


@pytest.mark.parametrize("mode", MODES)
def test_gradients_when_only_final_state_is_used(mode):
    # Autograd hands the backward None for unused outputs; the op must treat them as zeros.
    args = make_layer(mode, lengths=[4, 2, 1])
    leaves = {k: (v.clone().requires_grad_() if k in DIFFERENTIABLE and v is not None else v) for k, v in args.items()}
    rnn_layer(mode, reverse=False, **leaves)[1].sum().backward()
    ref = {k: (v.clone().requires_grad_() if k in DIFFERENTIABLE and v is not None else v) for k, v in args.items()}
    reference.rnn_layer(mode, reverse=False, **ref)[1].sum().backward()
    for k in DIFFERENTIABLE:
        if args[k] is not None:
            torch.testing.assert_close(leaves[k].grad, ref[k].grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_float64(mode, packed):
    args = make_layer(mode, T=3, B=2, I=2, H=3, proj=2 if mode == "LSTM" else 0,
                      lengths=[3, 1] if packed else None)
    if mode == "RNN_RELU":  # shift pre-activations off relu's kink, where finite differences are wrong
        args["b_ih"] = args["b_ih"] + 1.0
    names = [k for k in DIFFERENTIABLE if args[k] is not None]

    def f(*tensors):
        return tuple(o for o in rnn_layer(mode, reverse=packed, **dict(args, **dict(zip(names, tensors))))
                     if o is not None)

    inputs = tuple(args[k].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(f, inputs)
    if mode in ("LSTM", "GRU"):  # double backward, recomputed through the reference (see ops/_autograd.py)
        assert torch.autograd.gradgradcheck(f, inputs)


def _forward_op(mode, args, reverse):
    a = args
    if mode == "LSTM":
        return torch.ops.seqops.lstm_layer_forward.default, (
            a["input"], a["batch_sizes"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["w_hr"],
            reverse)
    if mode == "GRU":
        return torch.ops.seqops.gru_layer_forward.default, (
            a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], reverse)
    return torch.ops.seqops.rnn_layer_forward.default, (
        a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], reverse,
        mode == "RNN_RELU")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_opcheck(mode, packed, layout):
    # strided: every argument non-contiguous; the ops return contiguous tensors and their fakes must say so.
    args = make_layer(mode, T=3, B=3, I=2, H=4, dtype=torch.float32, lengths=[3, 2, 2] if packed else None,
                      proj=3 if mode == "LSTM" and packed else 0)
    if layout == "strided":
        args = {k: strided_copy(v) for k, v in args.items()}
    grad_args = {k: (v.requires_grad_() if k in DIFFERENTIABLE and v is not None else v) for k, v in args.items()}
    op, op_args = _forward_op(mode, grad_args, packed)
    torch.library.opcheck(op, op_args)
    # The backward op, on what the forward saved.
    plain = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    op, op_args = _forward_op(mode, plain, packed)
    saved = op(*op_args)
    a, g = plain, torch.randn_like(saved[0])
    if mode == "LSTM":
        bwd = torch.ops.seqops.lstm_layer_backward.default
        bwd_args = (g, torch.randn_like(a["hx"]), torch.randn_like(a["cx"]), a["input"], a["batch_sizes"], a["hx"],
                    a["cx"], a["w_ih"], a["w_hh"], a["w_hr"], packed, saved[0], saved[3], saved[4], saved[5], True)
    elif mode == "GRU":
        bwd = torch.ops.seqops.gru_layer_backward.default
        bwd_args = (g, torch.randn_like(a["hx"]), a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], packed,
                    saved[0], saved[2], saved[3], True)
    else:
        bwd = torch.ops.seqops.rnn_layer_backward.default
        bwd_args = (g, torch.randn_like(a["hx"]), a["input"], a["batch_sizes"], a["hx"], a["w_ih"], a["w_hh"], packed,
                    mode == "RNN_RELU", saved[0], True)
    torch.library.opcheck(bwd, bwd_args)


def test_torch_compile_fullgraph_layer():
    torch._dynamo.reset()
    args = make_layer("LSTM", dtype=torch.float32, lengths=[5, 3, 2])

    def f(input, hx, cx, w_ih, w_hh):
        out, h_n, c_n = rnn_layer("LSTM", input, args["batch_sizes"], hx, cx, w_ih, w_hh, None, None, None, True)
        return out.sum() + h_n.sum() * 2 + c_n.sum()

    names = ["input", "hx", "cx", "w_ih", "w_hh"]
    eager = [args[k].clone().requires_grad_() for k in names]
    compiled = [args[k].clone().requires_grad_() for k in names]
    f(*eager).backward()
    torch.compile(f, fullgraph=True)(*compiled).backward()
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_rule(device, mode, dtype):
    # Reference in fp32 is the truth; PyTorch's own low-precision computation is the reference run in dtype.
    args = make_layer(mode, T=12, B=8, I=32, H=48, dtype=torch.float32, device=device, lengths=None)
    if mode == "RNN_RELU":
        # A pre-activation that rounds across 0 flips relu's derivative and a whole gradient row with it, in any
        # low-precision computation (the bf16 reference included): keep pre-activations off the kink.
        args["b_ih"] = args["b_ih"] + 1.0
    low = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in args.items()}
    ref_outs, ref_grads, out_grads = run(reference.rnn_layer, mode, args, False)
    low_grads = [g.to(dtype) for g in out_grads]
    outs, grads, _ = run(rnn_layer, mode, low, False, low_grads)
    pt_outs, pt_grads, _ = run(reference.rnn_layer, mode, low, False, low_grads)
    for i, (ours, theirs, ref) in enumerate(zip(outs + grads, pt_outs + pt_grads, ref_outs + ref_grads)):
        assert ours.dtype == dtype
        assert_error_rule(ours, theirs, ref, name=f"{mode} output/grad #{i}")


# ---- bad input ----
def test_bad_batch_sizes_raise_clear_errors():
    args = make_layer("GRU", lengths=[3, 2, 1])
    with pytest.raises(RuntimeError, match="non-increasing"):
        rnn_layer("GRU", reverse=False, **dict(args, batch_sizes=torch.tensor([1, 2, 3])))
    with pytest.raises(RuntimeError, match="sum to"):
        rnn_layer("GRU", reverse=False, **dict(args, batch_sizes=torch.tensor([3, 2, 2])))
    with pytest.raises(RuntimeError, match="int64 CPU"):
        rnn_layer("GRU", reverse=False, **dict(args, batch_sizes=torch.tensor([3.0, 2.0, 1.0])))
    with pytest.raises(RuntimeError, match="2-D"):
        rnn_layer("GRU", reverse=False, **dict(args, input=args["input"].unsqueeze(0)))
    with pytest.raises(RuntimeError, match=r"batch_sizes\[1\] = 2 after 1"):
        rnn_layer("GRU", reverse=False, **dict(args, batch_sizes=torch.tensor([1, 2, 3])))
    # sizes whose int64 sum wraps around to the row count (2 (2^63 - 1) + 8 = 2^64 + 6): refused before the
    # sum can overflow
    with pytest.raises(RuntimeError, match="sum to more than the packed input's 6 rows"):
        rnn_layer("GRU", reverse=False, **dict(args, batch_sizes=torch.tensor([2**63 - 1, 2**63 - 1, 8])))


def test_sizes_without_memory_behind_them_are_refused_not_walked():
    # Stride-0 views: sizes no memory backs. A padded input's steps are not listed one by one before the other
    # checks (2^40 of them grew to 14 GB and the OOM killer); seq_len * batch of an empty input cannot wrap.
    ops = torch.ops.seqops
    huge_t = torch.zeros(1, 1, 5).expand(2**40, 2, 5)
    with pytest.raises(RuntimeError, match="hx"):
        ops.rnn_layer_forward(huge_t, None, torch.zeros(3, 3), torch.zeros(3, 5), torch.zeros(3, 3), None, None,
                              False, False)
    with pytest.raises(RuntimeError, match="allocate"):  # consistent sizes: the output's allocation fails
        ops.rnn_layer_forward(huge_t, None, torch.zeros(2, 3), torch.zeros(3, 5), torch.zeros(3, 3), None, None,
                              False, False)
    empty = torch.zeros(1, 1, 0).expand(3, 2**62, 0)
    with pytest.raises(RuntimeError, match="seq_len \\* batch overflows"):
        ops.rnn_layer_forward(empty, None, torch.zeros(1, 1).expand(2**62, 1), torch.zeros(1, 0), torch.zeros(1, 1),
                              None, None, False, False)


def _raw_layer_ops(mode, args):
    """The raw forward op (torch.ops.seqops) on make_layer's arguments, padded, forward direction -> (its state
    outputs [output, h_n(, c_n)], its saved workspaces, backward(**replaced)): the raw backward op on that
    forward's results, the output and states as their own gradients, any argument replaced by name."""
    ops, a = torch.ops.seqops, args
    if mode == "LSTM":
        out, h_n, c_n, *saved = ops.lstm_layer_forward(a["input"], None, a["hx"], a["cx"], a["w_ih"], a["w_hh"],
                                                       a["b_ih"], a["b_hh"], a["w_hr"], False)

        def backward(grad_output=out, grad_h_n=h_n, grad_c_n=c_n, output=out, gates=saved[0], cells=saved[1],
                     proj_in=saved[2]):
            return ops.lstm_layer_backward(grad_output, grad_h_n, grad_c_n, a["input"], None, a["hx"], a["cx"],
                                           a["w_ih"], a["w_hh"], a["w_hr"], False, output, gates, cells, proj_in,
                                           True)
        return [out, h_n, c_n], saved, backward
    if mode == "GRU":
        out, h_n, *saved = ops.gru_layer_forward(a["input"], None, a["hx"], a["w_ih"], a["w_hh"], a["b_ih"],
                                                 a["b_hh"], False)

        def backward(grad_output=out, grad_h_n=h_n, output=out, gates=saved[0], hn=saved[1]):
            return ops.gru_layer_backward(grad_output, grad_h_n, a["input"], None, a["hx"], a["w_ih"], a["w_hh"],
                                          False, output, gates, hn, True)
        return [out, h_n], saved, backward
    out, h_n = ops.rnn_layer_forward(a["input"], None, a["hx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], False,
                                     mode == "RNN_RELU")

    def backward(grad_output=out, grad_h_n=h_n, output=out):
        return ops.rnn_layer_backward(grad_output, grad_h_n, a["input"], None, a["hx"], a["w_ih"], a["w_hh"], False,
                                      mode == "RNN_RELU", output, True)
    return [out, h_n], [], backward


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_backward_op_checks_saved_tensors_before_copying_them(mode):
    # A malformed stride-0 workspace argument is refused by its shape, not first copied out (48 TB here)
    _, saved, backward = _raw_layer_ops(mode, make_layer(mode, dtype=torch.float32))
    bad_gates = torch.zeros(1, 1).expand(2**40, saved[0].shape[1])
    with pytest.raises(RuntimeError, match="gates"):
        backward(gates=bad_gates)


def test_lstm_backward_op_with_a_projection_takes_inputs_that_require_grad():
    # called directly on gradients that require grad, its add_out must not refuse them
    outs, _, backward = _raw_layer_ops("LSTM", make_layer("LSTM", proj=2, dtype=torch.float32))
    out, h_n, c_n = (t.detach().clone().requires_grad_() for t in outs)
    got = backward(grad_output=out, grad_h_n=h_n, grad_c_n=c_n, output=out)
    for a, b in zip(got, backward()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_bad_shapes_and_dtypes_raise_clear_errors(mode):
    args = make_layer(mode)
    with pytest.raises(RuntimeError, match="inconsistent input_size"):
        rnn_layer(mode, reverse=False, **dict(args, input=torch.randn(5, 4, 7, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="hx"):
        rnn_layer(mode, reverse=False, **dict(args, hx=torch.randn(3, 6, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="dtype"):
        rnn_layer(mode, reverse=False, **dict(args, hx=args["hx"].float()))
    with pytest.raises(RuntimeError, match="seq_len, batch, input_size"):
        rnn_layer(mode, reverse=False, **dict(args, input=args["input"][0]))
    with pytest.raises(RuntimeError, match="floating-point"):
        rnn_layer(mode, reverse=False, **{k: (v.long() if isinstance(v, torch.Tensor) and k != "batch_sizes" else v)
                                          for k, v in args.items()})
    if mode == "LSTM":
        with pytest.raises(RuntimeError, match="cx"):
            rnn_layer(mode, reverse=False, **dict(args, cx=torch.randn(4, 5, dtype=torch.float64)))
    else:
        with pytest.raises(ValueError, match="proj_size"):
            rnn_layer(mode, reverse=False, **dict(args, w_hr=torch.randn(2, 6, dtype=torch.float64)))


@pytest.mark.parametrize("mode", MODES)
def test_input_without_grad_skips_its_gradient_and_keeps_the_rest(mode):
    # A first layer's data needs no gradient: the op skips that GEMM (input_grad=False) and the others agree.
    args = make_layer(mode, lengths=[5, 3, 3, 1])
    ours = {k: (v.clone().requires_grad_() if k in DIFFERENTIABLE[1:] and v is not None else v)
            for k, v in args.items()}
    ref = {k: (v.clone().requires_grad_() if k in DIFFERENTIABLE[1:] and v is not None else v)
           for k, v in args.items()}
    g = torch.randn(int(args["batch_sizes"].sum()), 6, dtype=torch.float64)
    (rnn_layer(mode, reverse=False, **ours)[0] * g).sum().backward()
    (reference.rnn_layer(mode, reverse=False, **ref)[0] * g).sum().backward()
    for k in DIFFERENTIABLE[1:]:
        if args[k] is not None:
            torch.testing.assert_close(ours[k].grad, ref[k].grad)
    assert ours["input"].grad is None


def test_layer_op_follows_autocast():
    args = make_layer("GRU", dtype=torch.float32, lengths=[5, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n, _ = rnn_layer("GRU", reverse=False, **args)
    low = {k: (v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in args.items()}
    out_low, h_n_low, _ = rnn_layer("GRU", reverse=False, **low)
    assert out.dtype == h_n.dtype == torch.bfloat16
    torch.testing.assert_close(out, out_low)
    torch.testing.assert_close(h_n, h_n_low)


@pytest.mark.parametrize("backend", ["onednn", "fused"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cpu_inference_backends_agree(monkeypatch, backend, reverse, bias):
    # Both CPU inference paths (oneDNN's fused LSTM where it applies, seqops' kernels) against the reference.
    import seqops.ops.rnn_layer as layer_module

    monkeypatch.setattr(layer_module, "CPU_LSTM_INFERENCE", backend)
    args = make_layer("LSTM", T=6, B=3, I=5, H=7, dtype=torch.float32, bias=bias)
    with torch.no_grad():
        ours = rnn_layer("LSTM", reverse=reverse, **args)
        ref = reference.rnn_layer("LSTM", reverse=reverse, **args)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    mode=st.sampled_from(MODES),
    reverse=st.booleans(),
    bias=st.booleans(),
    size=st.tuples(st.integers(1, 6), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),  # (T, B, I, H)
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4) | st.none(),
    proj=st.integers(0, 3),
)
def test_random_layers_match_reference(mode, reverse, bias, size, lengths, proj):
    # Property: any mode, direction, size, packing (random lengths, sorted as PackedSequence does) and
    # projection agrees with the reference in float64, outputs and every gradient.
    T, B, I, H = size  # T and B are set by lengths for packed input
    if lengths is not None:
        lengths = sorted(lengths, reverse=True)
    proj = proj if mode == "LSTM" and proj < H else 0
    args = make_layer(mode, T=T, B=B, I=I, H=H, proj=proj, bias=bias, lengths=lengths)
    assert_matches_reference(mode, args, reverse)


def _backward_call(mode, device="cpu"):
    """(call(grad_output, output), grad_output, output) of one direct backward-op call on a forward's results."""
    outs, _, backward = _raw_layer_ops(mode, make_layer(mode, dtype=torch.float32, device=device))
    return (lambda grad, output: backward(grad_output=grad, output=output)), torch.randn_like(outs[0]), outs[0]


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_backward_op_checks_output_and_its_gradient(mode):
    # Called directly (torch.ops.seqops), a backward must refuse what its kernels would read out of bounds: a
    # gradient of the right size but the wrong width (the kernels read H columns of each row), or another dtype
    # (the device goes through the same check, check_same_device_dtype; a meta tensor would dispatch to the
    # fake kernel instead, and this machine may have no second device).
    call, grad, out = _backward_call(mode)
    call(grad, out)  # the right arguments pass
    T, B, H = grad.shape
    # the wrong width; the right numel laid out batch-first or flattened (read in the wrong row order)
    for name, args in (("grad_output", (grad.reshape(T, 2 * B, H // 2), out)),
                       ("grad_output", (grad[..., :1], out)),
                       ("output", (grad, out.reshape(T, 2 * B, H // 2))),
                       ("grad_output", (grad.transpose(0, 1).contiguous(), out)),
                       ("output", (grad, out.reshape(T * B, H)))):
        with pytest.raises(RuntimeError, match=rf"{name} has shape .*, expected \[{T}, {B}, {H}\]"):
            call(*args)
    with pytest.raises(RuntimeError, match="grad_output has dtype Double but input has dtype Float"):
        call(grad.double(), out)
    with pytest.raises(RuntimeError, match="output has dtype Double but input has dtype Float"):
        call(grad, out.double())


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
def test_backward_op_refuses_a_gradient_on_another_device(mode):
    # A CPU gradient beside CUDA inputs dispatches to the CUDA kernel, which would dereference a host pointer.
    call, grad, out = _backward_call(mode, device="cuda")
    with pytest.raises(RuntimeError, match="grad_output is on cpu but input is on cuda"):
        call(grad.cpu(), out)
    with pytest.raises(RuntimeError, match="output is on cpu but input is on cuda"):
        call(grad, out.cpu())


def _meta_mixing_cases():
    x, h = torch.randn(4, 8), torch.randn(4, 16)
    meta = {"device": "meta"}

    def gru_with_meta_weight():
        module = seqops.GRU(8, 16)
        module.weight_hh_l0 = torch.nn.Parameter(torch.randn(48, 16, **meta))
        return module(torch.randn(3, 2, 8))

    return {
        "gru_cell, meta b_ih": lambda: seqops.gru_cell(x, h, torch.randn(48, 8), torch.randn(48, 16),
                                                       torch.randn(48, **meta), None),
        "lstm_cell, meta cx": lambda: seqops.lstm_cell(x, (h, torch.randn(4, 16, **meta)), torch.randn(64, 8),
                                                       torch.randn(64, 16)),
        "rnn_tanh_cell, meta hx": lambda: seqops.rnn_tanh_cell(x, torch.randn(4, 16, **meta), torch.randn(16, 8),
                                                               torch.randn(16, 16)),
        "GRU, meta weight_hh": gru_with_meta_weight,
        "rnn_layer op, meta batch_sizes": lambda: torch.ops.seqops.rnn_layer_forward(
            torch.randn(5, 16), torch.tensor([3, 2], **meta), torch.randn(3, 16), torch.randn(16, 16),
            torch.randn(16, 16), None, None, False, False),
    }


@pytest.mark.parametrize("case", list(_meta_mixing_cases()))
def test_a_meta_tensor_among_cpu_tensors_raises(case):
    # The Meta key wins such a dispatch and runs the fake kernel, which used to return uninitialised CPU memory.
    with pytest.raises(RuntimeError, match="meta"):
        _meta_mixing_cases()[case]()
