"""seqops' attention on CPU tensors without the Triton interpreter (what a user without a GPU runs).

seqops.attention is SDPA itself wherever SDPA runs PyTorch's CPU flash kernel (tested first, below). The ops
(attention_with_lse, and seqops.attention elsewhere) run that kernel where it computes the same function
(seqops.ops.attention_cpu) and the reference otherwise: against the float64 oracle and
F.scaled_dot_product_attention, forward and every gradient, and that the fast route is the one taken."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attention_checks import assert_close_fp32_grad, check_fp32, float64_oracle, make_qkv, max_err, through_the_ops
from torch.utils.flop_counter import FlopCounterMode

import seqops
from seqops.ops import attention as attention_module
from seqops.ops import attention_cpu
from seqops.ops.errors import InvalidDtypeError


@pytest.fixture(autouse=True)
def _cpu_path(monkeypatch):
    # tests/conftest.py turns the interpreter on for the rest of the suite; here CPU tensors take the CPU path
    monkeypatch.setattr(attention_module, "_INTERPRET", False)


@pytest.fixture
def flash_calls(monkeypatch):
    """Counts the CPU flash kernel's forward and backward calls."""
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = attention_cpu._flash, attention_cpu._flash_backward

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(attention_cpu, "_flash", counted("fwd", fwd))
    monkeypatch.setattr(attention_cpu, "_flash_backward", counted("bwd", bwd))
    return calls


def _count_calls(monkeypatch, name):
    """The argument tuples of every call to seqops.ops.attention's function `name`, from now on."""
    calls = []
    real = getattr(attention_module, name)

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(attention_module, name, counted)
    return calls


@pytest.fixture
def op_route_calls(monkeypatch):
    """Counts seqops.attention's calls into seqops' own ops (the rest went to SDPA)."""
    return _count_calls(monkeypatch, "_attention_op")


def _interleaved(B, H, L, E, dtype=torch.float32):
    return torch.randn(B, L, H, E, dtype=dtype).transpose(1, 2)


# (q, k, v, kwargs) makers for which SDPA runs its CPU flash kernel
SDPA_FLASH_CASES = {
    "plain": lambda: ((2, 4, 33, 16), (2, 4, 33, 16), (2, 4, 33, 16), {}),
    "key_padding_bool": lambda: ((2, 3, 9, 16), (2, 3, 12, 16), (2, 3, 12, 16),
                                 {"attn_mask": torch.rand(2, 1, 1, 12) > 0.3}),
    "float_mask": lambda: ((2, 3, 9, 16), (2, 3, 12, 16), (2, 3, 12, 16), {"attn_mask": torch.randn(9, 12)}),
    "causal_L_ne_S": lambda: ((2, 2, 17, 32), (2, 2, 40, 32), (2, 2, 40, 32), {"is_causal": True}),
    "gqa": lambda: ((2, 6, 21, 16), (2, 2, 27, 16), (2, 2, 27, 16), {"enable_gqa": True, "is_causal": True}),
    "three_dims": lambda: ((4, 19, 16), (4, 23, 16), (4, 23, 16), {"scale": 0.3}),
    "interleaved": lambda: (_interleaved(2, 4, 13, 16), _interleaved(2, 4, 11, 16), _interleaved(2, 4, 11, 16), {}),
    "bf16": lambda: (torch.randn(2, 4, 33, 16, dtype=torch.bfloat16), torch.randn(2, 4, 40, 16, dtype=torch.bfloat16),
                     torch.randn(2, 4, 40, 16, dtype=torch.bfloat16), {}),
}


def _tensors(spec):
    q, k, v, kwargs = spec()
    q, k, v = (t if isinstance(t, torch.Tensor) else torch.randn(t) for t in (q, k, v))
    return [t.requires_grad_() for t in (q, k, v)], kwargs


@pytest.mark.parametrize("case", list(SDPA_FLASH_CASES))
def test_attention_is_sdpa_where_sdpa_runs_its_cpu_flash_kernel(op_route_calls, flash_calls, case):
    # The same kernel either way; through SDPA without seqops' Python around it. So: SDPA's exact numbers and
    # strides, forward and backward.
    (q, k, v), kwargs = _tensors(SDPA_FLASH_CASES[case])
    ours = seqops.attention(q, k, v, **kwargs)
    theirs = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert not op_route_calls and flash_calls == {"fwd": 0, "bwd": 0}


@pytest.mark.parametrize("shape", [(), (11,), (3, 9, 11), (1, 9, 11)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bool], ids=str)
def test_masks_of_fewer_dims_than_the_scores_take_sdpa_s_flash_kernel(op_route_calls, shape, dtype):
    # SDPA refuses a mask of fewer than 2 dims (IndexError) and takes its math backend for a 3-D mask on 4-D
    # scores; seqops hands SDPA the same mask with size-1 leading dims (a view), as broadcasting means it.
    from torch.profiler import profile

    (q, k, v), _ = _tensors(lambda: ((2, 3, 9, 16), (2, 3, 11, 16), (2, 3, 11, 16), {}))
    mask = torch.randn(shape) if dtype == torch.float32 else torch.rand(shape) > 0.2
    if dtype == torch.bool:  # every row keeps a key (a 0-D mask keeps all of them)
        mask = mask.clone().fill_(True) if mask.dim() == 0 else mask.index_fill(-1, torch.tensor([0]), True)
    with profile() as prof:
        ours = seqops.attention(q, k, v, attn_mask=mask)
    assert not op_route_calls
    assert any("flash_attention_for_cpu" in e.key for e in prof.key_averages())
    expanded = mask.expand(2, 3, 9, 11)
    torch.testing.assert_close(ours, through_the_ops(q, k, v, attn_mask=expanded))
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad),
                    torch.autograd.grad(through_the_ops(q, k, v, attn_mask=expanded), (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_flags_that_are_not_python_bools_are_refused_as_sdpa_refuses_them():
    # on every route alike: is_causal=None or 1 must not pass as a silent False or True
    (q, k, v), _ = _tensors(lambda: ((2, 4, 9, 16), (2, 2, 11, 16), (2, 2, 11, 16), {}))
    for flags in ({"is_causal": 1}, {"is_causal": np.bool_(True)}, {"is_causal": None}, {"enable_gqa": 1},
                  {"enable_gqa": None}):
        with pytest.raises(TypeError, match="must be bool"):
            seqops.attention(q, k, v, **flags)
        with pytest.raises(TypeError, match="must be bool"):
            F.scaled_dot_product_attention(q, k, v, **flags)


# The common CPU call, which SDPA's flash kernel takes as it is: seqops.attention hands it over before its own
# argument checks (_common_cpu_call), which cost more than SDPA's whole call at short lengths
COMMON_CPU_CALLS = {
    "plain": lambda: ((2, 4, 33, 16), (2, 4, 33, 16), (2, 4, 33, 16), {}),
    "causal": lambda: ((2, 4, 17, 32), (2, 4, 17, 32), (2, 4, 17, 32), {"is_causal": True}),
    "three_dims": lambda: ((4, 19, 16), (4, 19, 16), (4, 19, 16), {"is_causal": False, "dropout_p": 0}),
    "interleaved": lambda: (_interleaved(2, 4, 13, 16), _interleaved(2, 4, 13, 16), _interleaved(2, 4, 13, 16), {}),
    "bf16": lambda: tuple(torch.randn(2, 4, 33, 16, dtype=torch.bfloat16) for _ in range(3)) + ({},),
    "cross_attention": lambda: ((2, 4, 33, 16), (2, 4, 20, 16), (2, 4, 20, 16), {}),
    "decoding_step": lambda: ((2, 4, 1, 16), (2, 4, 37, 16), (2, 4, 37, 16), {}),
    "causal_shorter_query": lambda: ((2, 4, 5, 16), (2, 4, 23, 16), (2, 4, 23, 16), {"is_causal": True}),
    "causal_longer_query": lambda: ((3, 21, 16), (3, 6, 16), (3, 6, 16), {"is_causal": True}),
    "bool_mask": lambda: ((2, 4, 33, 16), (2, 4, 33, 16), (2, 4, 33, 16), {"attn_mask": torch.rand(33, 33) > 0.2}),
    # a batch of decoding steps with padded caches: [B, 1, 1, S], True = take part
    "padding_mask": lambda: ((3, 4, 1, 16), (3, 4, 29, 16), (3, 4, 29, 16),
                             {"attn_mask": torch.arange(29) < torch.tensor([29, 17, 5]).view(3, 1, 1, 1)}),
    "head_mask_3d": lambda: ((2, 4, 9, 16), (2, 4, 12, 16), (2, 4, 12, 16), {"attn_mask": torch.rand(4, 9, 12) > 0.3}),
}


@pytest.fixture
def prepared_calls(monkeypatch):
    """Counts seqops.attention's calls through its full argument checks (_prepared)."""
    return _count_calls(monkeypatch, "_prepared")


@pytest.mark.parametrize("case", list(COMMON_CPU_CALLS))
def test_common_cpu_calls_go_to_sdpa_before_seqops_checks(monkeypatch, prepared_calls, op_route_calls, case):
    (q, k, v), kwargs = _tensors(COMMON_CPU_CALLS[case])
    ours = seqops.attention(q, k, v, **kwargs)
    assert not prepared_calls and not op_route_calls
    mask, sdpa_kwargs = kwargs.get("attn_mask"), kwargs
    if mask is not None and mask.dim() < q.dim():  # SDPA's flash kernel wants it at the query's rank
        sdpa_kwargs = {**kwargs, "attn_mask": mask.reshape((1,) * (q.dim() - mask.dim()) + tuple(mask.shape))}
    theirs = F.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)
    monkeypatch.setattr(attention_module, "_common_cpu_call", lambda *args: False)
    full_route = seqops.attention(q, k, v, **kwargs)
    assert prepared_calls
    grad = torch.randn_like(ours)
    for other in (theirs, full_route):
        assert torch.equal(ours, other) and ours.stride() == other.stride()
        for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad, retain_graph=True),
                        torch.autograd.grad(other, (q, k, v), grad, retain_graph=True)):
            assert torch.equal(a, b)


def _under(mode_factory, call):
    with mode_factory():
        return call()


# Calls one step from the common one: each must take the full route, with its checks (and errors)
NOT_COMMON_CPU_CALLS = {
    "float_mask": lambda q, k, v: seqops.attention(q, k, v, attn_mask=torch.randn(33, 33)),
    "one_dim_mask": lambda q, k, v: seqops.attention(q, k, v, attn_mask=torch.rand(33) > 0.2),
    "mask_and_causal": lambda q, k, v: seqops.attention(q, k, v, attn_mask=torch.rand(33, 33) > 0.2, is_causal=True),
    "mask_of_other_shape": lambda q, k, v: seqops.attention(q, k, v, attn_mask=torch.rand(33, 20) > 0.2),
    "scale": lambda q, k, v: seqops.attention(q, k, v, scale=0.5),
    "gqa_flag": lambda q, k, v: seqops.attention(q, k, v, enable_gqa=True),
    "dropout": lambda q, k, v: seqops.attention(q, k, v, dropout_p=0.1),
    "numpy_dropout_zero": lambda q, k, v: seqops.attention(q, k, v, dropout_p=np.float64(0.0)),
    "value_head_dim": lambda q, k, v: seqops.attention(q, k, v[..., :8]),
    "key_head_dim": lambda q, k, v: seqops.attention(q[..., :8], k, v),
    "key_value_lengths_differ": lambda q, k, v: seqops.attention(q, k[..., :20, :], v[..., :21, :]),
    "broadcast_batch": lambda q, k, v: seqops.attention(q, k[:1], v[:1]),
    "empty_keys": lambda q, k, v: seqops.attention(q, k[..., :0, :], v[..., :0, :]),
    "float64": lambda q, k, v: seqops.attention(q.double(), k.double(), v.double()),
    "mixed_dtypes": lambda q, k, v: seqops.attention(q, k.double(), v),
    "strided_head_dim": lambda q, k, v: seqops.attention(q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v),
    "empty": lambda q, k, v: seqops.attention(q[..., :0, :], k[..., :0, :], v[..., :0, :]),
    "autocast": lambda q, k, v: _under(lambda: torch.autocast("cpu", dtype=torch.bfloat16),
                                       lambda: seqops.attention(q, k, v)),
    "flop_counter": lambda q, k, v: _under(lambda: FlopCounterMode(display=False),
                                           lambda: seqops.attention(q, k, v)),
}


@pytest.mark.parametrize("case", list(NOT_COMMON_CPU_CALLS))
def test_other_cpu_calls_take_the_full_checks(prepared_calls, case):
    q, k, v = (torch.randn(2, 4, 33, 16) for _ in range(3))
    if case == "mixed_dtypes":
        with pytest.raises(InvalidDtypeError, match="one dtype"):  # refused by the checks, as before
            NOT_COMMON_CPU_CALLS[case](q, k, v)
    elif case in ("key_head_dim", "key_value_lengths_differ", "mask_and_causal", "mask_of_other_shape"):
        with pytest.raises(RuntimeError):  # the full checks' errors (SDPA's kind, a RuntimeError)
            NOT_COMMON_CPU_CALLS[case](q, k, v)
    else:
        NOT_COMMON_CPU_CALLS[case](q, k, v)
    assert len(prepared_calls) == 1


@pytest.mark.parametrize("masked", [False, True])
def test_the_common_call_test_adds_no_recompile_under_dynamic_shapes(monkeypatch, masked):
    # Under torch.compile the test must stop at its mode checks: a size comparison traced there becomes a guard
    # (query length == key length), and each new outcome a recompile that the full route does not have
    from torch._dynamo.testing import CompileCounter

    def frames(fast_path):
        if not fast_path:
            monkeypatch.setattr(attention_module, "_common_cpu_call", lambda *args: False)
        torch._dynamo.reset()
        counter = CompileCounter()
        compiled = torch.compile(lambda q, k, v, m: seqops.attention(q, k, v, attn_mask=m), dynamic=True,
                                 backend=counter)
        for L, S in [(8, 8), (5, 7), (9, 9), (12, 3), (6, 6)]:
            q, k, v = torch.randn(2, 3, L, 8), torch.randn(2, 3, S, 8), torch.randn(2, 3, S, 8)
            m = (torch.arange(S) < torch.tensor([S, 1]).view(2, 1, 1, 1)) if masked else None  # padded keys
            torch.testing.assert_close(compiled(q, k, v, m), F.scaled_dot_product_attention(q, k, v, attn_mask=m))
        return counter.frame_count

    assert frames(fast_path=True) == frames(fast_path=False)


def test_flags_of_the_wrong_type_are_refused_on_the_common_call(prepared_calls):
    # is_causal=1 or None, a mask of the wrong kind: the common call's test leaves them to the full checks
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    for kwargs in ({"is_causal": 1}, {"is_causal": None}, {"enable_gqa": 0}, {"dropout_p": "0"}):
        with pytest.raises(TypeError, match="must be"):
            seqops.attention(q, k, v, **kwargs)
    assert len(prepared_calls) == 4


# what SDPA would run on its math backend, or what seqops computes its own way: seqops' ops take these
OP_ROUTE_CASES = {
    "broadcast_batch": lambda: ((2, 4, 13, 16), (1, 4, 11, 16), (1, 4, 11, 16), {}),
    "strided_head_dim": lambda: (torch.randn(2, 3, 16, 13).transpose(-1, -2), (2, 3, 11, 16), (2, 3, 11, 16), {}),
    "value_head_dim": lambda: ((2, 3, 13, 16), (2, 3, 11, 16), (2, 3, 11, 8), {}),
    "mask_with_grad": lambda: ((2, 3, 13, 16), (2, 3, 11, 16), (2, 3, 11, 16),
                               {"attn_mask": torch.randn(13, 11, requires_grad=True)}),
    "five_dims": lambda: ((2, 2, 3, 13, 16), (2, 2, 3, 11, 16), (2, 2, 3, 11, 16), {}),
    "float64": lambda: (torch.randn(2, 3, 13, 16, dtype=torch.float64), torch.randn(2, 3, 11, 16, dtype=torch.float64),
                        torch.randn(2, 3, 11, 16, dtype=torch.float64), {}),
    "head_dim_zero": lambda: ((2, 3, 13, 0), (2, 3, 11, 0), (2, 3, 11, 4), {}),
}


@pytest.mark.parametrize("case", list(OP_ROUTE_CASES))
def test_attention_keeps_its_ops_where_sdpa_would_not_run_flash(op_route_calls, case):
    (q, k, v), kwargs = _tensors(OP_ROUTE_CASES[case])
    ours = seqops.attention(q, k, v, **kwargs)
    assert len(op_route_calls) == 1
    theirs = F.scaled_dot_product_attention(q, k, v, **kwargs)
    torch.testing.assert_close(ours, theirs)
    wrt = (q, k, v) + ((kwargs["attn_mask"],) if case == "mask_with_grad" else ())
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, wrt, grad), torch.autograd.grad(theirs, wrt, grad)):
        torch.testing.assert_close(a, b)


def test_dropout_keeps_its_ops(op_route_calls):
    q, k, v = make_qkv((2, 2, 16, 8), (2, 2, 16, 8), (2, 2, 16, 8), requires_grad=False)
    seqops.attention(q, k, v, dropout_p=0.3)
    assert len(op_route_calls) == 1


def _check_against_oracle(q, k, v, **kwargs):
    out = check_fp32(q, k, v, attend=through_the_ops, **kwargs)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **kwargs))
    return out


MASKS = {
    "none": lambda B, H, L, S: None,
    "key_padding_bool": lambda B, H, L, S: torch.rand(B, 1, 1, S) > 0.3,
    "full_bool": lambda B, H, L, S: torch.rand(B, H, L, S) > 0.4,
    "shared_float": lambda B, H, L, S: torch.randn(L, S),
    "batch_float": lambda B, H, L, S: torch.randn(B, 1, L, S),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("L,S", [(1, 1), (17, 17), (97, 130), (130, 33)])
def test_masks_and_lengths_take_the_cpu_kernel(flash_calls, mask, L, S):
    B, H, E = 2, 3, 16
    q, k, v = make_qkv((B, H, L, E), (B, H, S, E), (B, H, S, E))
    m = MASKS[mask](B, H, L, S)
    if m is not None and m.dtype == torch.bool:
        m[..., 0] = True  # every row keeps a key: SDPA's fully-masked rows are tested on their own below
    _check_against_oracle(q, k, v, attn_mask=m)
    assert flash_calls == {"fwd": 1, "bwd": 1}


@pytest.mark.parametrize("L,S", [(33, 33), (17, 40), (40, 17)])
def test_causal_is_upper_left_aligned(flash_calls, L, S):
    q, k, v = make_qkv((2, 2, L, 32), (2, 2, S, 32), (2, 2, S, 32))
    _check_against_oracle(q, k, v, is_causal=True)
    assert flash_calls == {"fwd": 1, "bwd": 1}


@pytest.mark.parametrize("E", [1, 16, 40, 80, 128, 256, 300])
def test_head_dims(flash_calls, E):
    q, k, v = make_qkv((1, 2, 19, E), (1, 2, 23, E), (1, 2, 23, E))
    _check_against_oracle(q, k, v, scale=0.7 / math.sqrt(E))
    assert flash_calls == {"fwd": 1, "bwd": 1}


def test_grouped_query_attention(flash_calls):
    q, k, v = make_qkv((2, 6, 21, 16), (2, 2, 27, 16), (2, 2, 27, 16))
    _check_against_oracle(q, k, v, enable_gqa=True, is_causal=True)
    assert flash_calls == {"fwd": 1, "bwd": 1}


def test_non_contiguous_and_broadcast_inputs(flash_calls):
    # [B, L, H, E] memory viewed as [B, H, L, E] (the usual projection layout), keys shared across the batch
    q = torch.randn(2, 13, 4, 16).transpose(1, 2).requires_grad_()
    k = torch.randn(1, 4, 11, 16).requires_grad_()
    v = torch.randn(1, 4, 11, 16).requires_grad_()
    out = _check_against_oracle(q, k, v)
    assert out.shape == (2, 4, 13, 16)
    assert flash_calls == {"fwd": 1, "bwd": 1}


def test_fully_masked_rows_behave_as_sdpa_and_report_lse_minus_inf(flash_calls):
    q, k, v = make_qkv((1, 2, 5, 8), (1, 2, 6, 8), (1, 2, 6, 8))
    mask = torch.rand(1, 1, 5, 6) > 0.3
    mask[..., 0] = True
    mask[..., 2, :] = False  # row 2 sees no key
    out, lse = seqops.attention_with_lse(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(out[..., 2, :], torch.zeros_like(out[..., 2, :]))
    assert torch.isneginf(lse[..., 2]).all() and torch.isfinite(lse[..., [0, 1, 3, 4]]).all()
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(grads[0][..., 2, :], torch.zeros_like(grads[0][..., 2, :]))
    # a float mask of -inf over a whole row is the same case
    fmask = torch.zeros(5, 6).masked_fill(~mask[0, 0], float("-inf"))
    fout, flse = seqops.attention_with_lse(q, k, v, attn_mask=fmask)
    torch.testing.assert_close(fout, out)
    assert torch.equal(torch.isneginf(flse), torch.isneginf(lse))
    assert flash_calls == {"fwd": 2, "bwd": 1}


def test_lse_matches_the_reference():
    q, k, v = make_qkv((2, 3, 9, 16), (2, 3, 12, 16), (2, 3, 12, 16), requires_grad=False)
    mask = torch.randn(2, 1, 9, 12)
    _, lse = seqops.attention_with_lse(q, k, v, attn_mask=mask, scale=0.4)
    _, ref = seqops.reference.attention_with_lse(q.double(), k.double(), v.double(), mask.double(), 0.0, False,
                                                 0.4)
    torch.testing.assert_close(lse, ref.float())


def test_what_the_cpu_kernel_cannot_take_runs_the_reference(flash_calls):
    # a gradient through the lse, a float mask that needs a gradient, a value head dim other than E, a float32
    # mask for a bf16 query: the forward may take the kernel, the backward goes to the reference formulas
    q, k, v = make_qkv((1, 2, 7, 8), (1, 2, 9, 8), (1, 2, 9, 8))
    out, lse = seqops.attention_with_lse(q, k, v)
    (out.sum() + lse.sum()).backward()
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = seqops.reference.attention_with_lse(*ref_leaves, None, 0.0, False, None)
    (ref_out.sum() + ref_lse.sum()).backward()
    for a, b in zip((q, k, v), ref_leaves):
        assert_close_fp32_grad(a.grad, b.grad)
    assert flash_calls == {"fwd": 1, "bwd": 0}

    mask = torch.randn(7, 9, requires_grad=True)
    q.grad = None
    _check_against_oracle(q, k, v, attn_mask=mask)
    assert flash_calls == {"fwd": 2, "bwd": 0}

    q2, k2, v2 = make_qkv((1, 2, 7, 8), (1, 2, 9, 8), (1, 2, 9, 5))
    _check_against_oracle(q2, k2, v2)
    assert flash_calls == {"fwd": 2, "bwd": 0}

    qb, kb, vb = (t.detach().bfloat16() for t in (q, k, v))
    out = seqops.attention(qb, kb, vb, attn_mask=torch.randn(7, 9))
    assert out.dtype == torch.bfloat16 and flash_calls["fwd"] == 2


def test_dropout_stays_reproducible(flash_calls):
    q, k, v = make_qkv((2, 2, 16, 8), (2, 2, 16, 8), (2, 2, 16, 8), requires_grad=False)
    torch.manual_seed(5)
    first = seqops.attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(5)
    assert torch.equal(first, seqops.attention(q, k, v, dropout_p=0.3))
    assert flash_calls["fwd"] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_error_rule(flash_calls, dtype):
    # The CPU kernel is SDPA's own, so our error vs the fp64 oracle is SDPA's: the rule holds with room to spare.
    q, k, v = make_qkv((2, 4, 64, 32), (2, 4, 80, 32), (2, 4, 80, 32), dtype=dtype)
    mask = torch.rand(2, 1, 1, 80) > 0.2
    mask[..., 0] = True
    out = through_the_ops(q, k, v, attn_mask=mask)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    their_grads = torch.autograd.grad(theirs, (q, k, v), grad)
    ref_out, ref_grads = float64_oracle(q, k, v, grad, attn_mask=mask)
    for ours, pt, exact, name in zip((out, *grads), (theirs, *their_grads), (ref_out, *ref_grads),
                                     ("out", "dq", "dk", "dv")):
        assert max_err(ours, exact) <= 2 * max_err(pt, exact) + torch.finfo(dtype).eps * exact.abs().max(), name
    assert flash_calls == {"fwd": 1, "bwd": 1}


def test_nan_propagates_like_sdpa():
    q, k, v = make_qkv((1, 1, 4, 8), (1, 1, 5, 8), (1, 1, 5, 8), requires_grad=False)
    q[0, 0, 1, 3] = float("nan")
    k2 = k.clone()
    k2[0, 0, 2, 0] = float("inf")
    for args in ((q, k, v), (q.nan_to_num(), k2, v)):
        ours, theirs = through_the_ops(*args), F.scaled_dot_product_attention(*args)
        assert torch.equal(torch.isnan(ours), torch.isnan(theirs))
        torch.testing.assert_close(ours.nan_to_num(), theirs.nan_to_num())


def test_opcheck_and_compile_on_the_cpu_kernel():
    q, k, v = make_qkv((1, 2, 9, 16), (1, 2, 11, 16), (1, 2, 11, 16))
    mask = (torch.rand(1, 1, 9, 11) > 0.3).expand(1, 2, 9, 11)
    torch.library.opcheck(torch.ops.seqops.attention_fwd, (q, k, v, mask, None, 0.25, False, 0.0))
    their_out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    their_grads = torch.autograd.grad(their_out.sum(), (q, k, v))
    for attend in (seqops.attention, through_the_ops):  # SDPA's route, the ops' route
        torch._dynamo.reset()
        compiled = torch.compile(lambda q, k, v, attend=attend: attend(q, k, v, is_causal=True), fullgraph=True)
        out = compiled(q, k, v)
        torch.testing.assert_close(out, their_out)
        for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), their_grads):
            torch.testing.assert_close(a, b)


def test_gradcheck_keeps_the_exact_float64_reference(flash_calls):
    q, k, v = make_qkv((1, 2, 4, 3), (1, 2, 5, 3), (1, 2, 5, 3), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: seqops.attention(q, k, v, is_causal=True), (q, k, v))
    assert flash_calls == {"fwd": 0, "bwd": 0}


def test_strided_head_dims_are_made_contiguous_for_the_kernel(flash_calls):
    # The CPU kernel reads rows as vectors: a query whose last dim is strided (a transposed or channels-last
    # view), or such an upstream gradient, gave NaN / garbage before the launcher made them contiguous.
    B, H, L, S, E = 2, 3, 70, 90, 64
    queries = {"transposed": torch.randn(B, H, E, L).transpose(-1, -2),
               "channels_last": torch.randn(B, H, L, E).contiguous(memory_format=torch.channels_last)}
    for q in queries.values():
        k = torch.randn(B, H, E, S).transpose(-1, -2).requires_grad_()
        v = torch.randn(B, H, S, E).requires_grad_()
        q = q.requires_grad_()
        out = seqops.attention(q, k, v)
        dout = torch.randn(B, H, E, L).transpose(-1, -2)  # strided upstream gradient too
        grads = torch.autograd.grad(out, (q, k, v), dout)
        ref_out, ref_grads = float64_oracle(q, k, v, dout)
        torch.testing.assert_close(out, ref_out.float())
        for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads):
            assert_close_fp32_grad(a, b, name)
    assert flash_calls == {"fwd": 2, "bwd": 2}


def test_head_dim_zero_like_sdpa():
    q, k = torch.randn(2, 3, 4, 0), torch.randn(2, 3, 5, 0)
    v = torch.randn(2, 3, 5, 6, requires_grad=True)
    ours, theirs = seqops.attention(q, k, v), F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, v, grad)[0], torch.autograd.grad(theirs, v, grad)[0])


def test_a_torch_without_the_cpu_kernel_takes_the_reference(monkeypatch):
    monkeypatch.setattr(attention_cpu, "_flash", None)
    q, k, v = make_qkv((1, 2, 7, 8), (1, 2, 9, 8), (1, 2, 9, 8))
    _check_against_oracle(q, k, v, is_causal=True)


@pytest.mark.parametrize("masked", [False, True])
def test_opcheck_of_the_backward_op_on_the_cpu_kernel(flash_calls, masked):
    q, k, v = make_qkv((1, 4, 9, 16), (1, 2, 11, 16), (1, 2, 11, 16), requires_grad=False)  # GQA too
    mask = (torch.rand(1, 1, 9, 11) > 0.3).expand(1, 4, 9, 11) if masked else None
    out, lse = torch.ops.seqops.attention_fwd(q, k, v, mask, None, 0.25, not masked, 0.0)
    dout = torch.randn_like(out)
    args = (dout, None, q, k, v, mask, None, out, lse, 0.25, not masked, 0.0, False)
    torch.library.opcheck(torch.ops.seqops.attention_bwd, args)
    assert flash_calls["bwd"] >= 1
