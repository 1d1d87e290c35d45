"""Attention over packed sequences (seqops.attention_varlen) and over jagged nested tensors (seqops.attention):
forward and every gradient vs the float64 reference run one sequence at a time and vs F.scaled_dot_product_attention
on nested tensors; dropout; opcheck, gradcheck, torch.compile; bad inputs.

Without a GPU the Triton kernels run in the interpreter (tests/conftest.py); make test runs this module again on
the CPU route (the reference), and a GPU machine again on CUDA tensors (the `each_device` fixture).
"""

import pytest
import torch
import torch.nn.functional as F
from attention_checks import assert_close_fp32_grad, assert_flash_rule, cumulative_lengths, packed, per_sequence_oracle

import seqops
from seqops.ops import attention as attention_module
from seqops.ops.attention import _draw_seed, attention_dropout_mask
from seqops.ops.attention_varlen_checks import sequence_bounds
from seqops.ops.attention_varlen_cpu import sequence_dropout_keep
from seqops.ops.errors import InvalidArgumentError, InvalidDtypeError

pytestmark = pytest.mark.usefixtures("each_device")


def _check_fp32(lengths_q, lengths_k, heads=(2, 2), dims=(16, 16), **kwargs):
    (hq, hkv), (E, Ev) = heads, dims
    q, k, v = packed(lengths_q, hq, E), packed(lengths_k, hkv, E), packed(lengths_k, hkv, Ev)
    cu_q, cu_k = cumulative_lengths(lengths_q), cumulative_lengths(lengths_k)
    out = seqops.attention_varlen(q, k, v, cu_q, cu_k, enable_gqa=hq != hkv, **kwargs)
    assert out.shape == (sum(lengths_q), hq, Ev) and out.dtype == q.dtype
    grad_out = torch.randn_like(out)
    exact, exact_grads = per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, enable_gqa=hq != hkv, **kwargs)
    torch.testing.assert_close(out, exact.float())
    for name, got, want in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad_out), exact_grads):
        assert_close_fp32_grad(got, want, name)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("lengths_q,lengths_k", [
    ([17], [17]),                    # one sequence
    ([5, 37, 1, 17], [5, 37, 1, 17]),  # self-attention, odd lengths, several query tiles
    ([9, 3, 40], [20, 33, 2]),       # cross-attention, L != S per sequence
    ([0, 7, 0, 12], [4, 7, 3, 0]),   # empty queries; a sequence with queries and no keys (zeros)
])
def test_matches_the_per_sequence_reference_fp32(lengths_q, lengths_k, is_causal):
    _check_fp32(lengths_q, lengths_k, is_causal=is_causal)


@pytest.mark.parametrize("E,Ev", [(40, 40), (64, 24), (80, 80), (128, 128)])
def test_head_dims_fp32(E, Ev):
    _check_fp32([11, 26], [19, 8], dims=(E, Ev))


@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 1)])
def test_grouped_query_heads(hq, hkv):
    _check_fp32([13, 30], [21, 9], heads=(hq, hkv), is_causal=True)


def test_scale():
    _check_fp32([12, 19], [15, 7], scale=0.21)


def test_lse_and_its_gradient():
    lengths_q, lengths_k = [6, 21, 4], [14, 0, 9]
    q, k, v = packed(lengths_q, 2, 16), packed(lengths_k, 2, 16), packed(lengths_k, 2, 16)
    cu_q, cu_k = cumulative_lengths(lengths_q), cumulative_lengths(lengths_k)
    out, lse = seqops.attention_varlen_with_lse(q, k, v, cu_q, cu_k)
    assert lse.shape == (2, 31) and lse.dtype == torch.float32
    rows = 0
    for lq, lk, (q0, k0) in zip(lengths_q, lengths_k, zip(cu_q.tolist(), cu_k.tolist())):
        scores = q[q0:q0 + lq].detach().transpose(0, 1) @ k[k0:k0 + lk].detach().transpose(0, 1).transpose(1, 2)
        torch.testing.assert_close(lse[:, rows:rows + lq], torch.logsumexp(scores * 16 ** -0.5, -1))
        rows += lq
    assert torch.isneginf(lse[:, 6:27]).all()  # the sequence without keys
    # d lse / d q through the kernels' backward: lse's gradient folded into delta (finite rows only)
    g = torch.where(torch.isfinite(lse), torch.randn_like(lse), 0.0)
    got = torch.autograd.grad((lse * g).sum(), (q, k, v), allow_unused=True, materialize_grads=True)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref_lse = []
    for lq, lk, (q0, k0) in zip(lengths_q, lengths_k, zip(cu_q.tolist(), cu_k.tolist())):
        s = qd[q0:q0 + lq].transpose(0, 1) @ kd[k0:k0 + lk].transpose(0, 1).transpose(1, 2) * 16 ** -0.5
        ref_lse.append(torch.logsumexp(s, -1) if lk else torch.zeros(2, lq, dtype=torch.float64))
    want = torch.autograd.grad((torch.cat(ref_lse, 1) * g.double()).sum(), (qd, kd, vd), allow_unused=True,
                               materialize_grads=True)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert_close_fp32_grad(a, b, name)


# bf16 CPU tensors skip the interpreter, whose tl.dot gets bf16 wrong: their numbers must be right all the same.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_flash_rule(dtype):
    lengths_q, lengths_k = [23, 9, 40], [31, 17, 12]
    q, k, v = (packed(n, 2, 64, dtype) for n in (lengths_q, lengths_k, lengths_k))
    cu_q, cu_k = cumulative_lengths(lengths_q), cumulative_lengths(lengths_k)
    out = seqops.attention_varlen(q, k, v, cu_q, cu_k, is_causal=True)
    grad_out = torch.randn_like(out)
    exact, exact_grads = per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, is_causal=True)
    low, low_grads = per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, dtype=dtype, is_causal=True)
    assert_flash_rule(out, low, exact, "out")
    for name, got, base, want in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad_out), low_grads,
                                     exact_grads):
        assert_flash_rule(got, base, want, name)


def test_dropout_matches_the_reference_with_the_materialised_mask_and_is_reproducible():
    p, lengths_q, lengths_k = 0.3, [7, 20, 13], [18, 5, 26]
    q, k, v = packed(lengths_q, 2, 16), packed(lengths_k, 2, 16), packed(lengths_k, 2, 16)
    cu_q, cu_k = cumulative_lengths(lengths_q), cumulative_lengths(lengths_k)
    torch.manual_seed(3)
    out = seqops.attention_varlen(q, k, v, cu_q, cu_k, dropout_p=p, is_causal=True)
    torch.manual_seed(3)
    again = seqops.attention_varlen(q, k, v, cu_q, cu_k, dropout_p=p, is_causal=True)
    assert torch.equal(out, again)
    assert not torch.equal(out, seqops.attention_varlen(q, k, v, cu_q, cu_k, dropout_p=p, is_causal=True))
    torch.manual_seed(3)
    seed = _draw_seed(q.device)  # the op's one RNG draw, replayed
    bounds, _, _ = sequence_bounds("test", cu_q, cu_k, q.shape[0], k.shape[0])
    keep = [sequence_dropout_keep(seed, bounds, 2, b, p) for b in range(3)]
    grad_out = torch.randn_like(out)
    exact, exact_grads = per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, keep=keep, dropout_p=p, is_causal=True)
    torch.testing.assert_close(out, exact.float())
    for name, got, want in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), grad_out), exact_grads):
        assert_close_fp32_grad(got, want, name)


def test_sequence_dropout_masks_are_the_kernels_draw_or_the_cpu_generator_s():
    p, lengths_q, lengths_k, H = 0.4, [5, 0, 19], [11, 6, 3], 2
    seed = torch.tensor([77], dtype=torch.int64)
    bounds, max_q, max_k = sequence_bounds("test", cumulative_lengths(lengths_q), cumulative_lengths(lengths_k), 24,
                                           20)
    whole = attention_dropout_mask(seed, 3, H, max_q, max_k, p)  # the kernels' [B, H, max_q, max_k] grid
    kernels_draw = seed.device.type == "cuda" or attention_module._INTERPRET
    for b, (lq, lk) in enumerate(zip(lengths_q, lengths_k)):
        keep = sequence_dropout_keep(seed, bounds, H, b, p)
        assert keep.shape == (H, lq, lk) and keep.dtype == torch.bool
        if kernels_draw:  # the corner of the kernels' grid, drawn alone
            assert torch.equal(keep, whole[b, :, :lq, :lk])
        else:  # the CPU route: a generator per sequence
            gen = torch.Generator().manual_seed(77 + b)
            assert torch.equal(keep, torch.rand((H, lq, lk), generator=gen) >= p)


@pytest.mark.parametrize("cu", [[0], [0, 0, 0]], ids=["no_sequence", "empty_sequences"])
def test_empty_inputs(cu):
    q, k, v = packed([0], 2, 8), packed([0], 2, 8), packed([0], 2, 4)
    out, lse = seqops.attention_varlen_with_lse(q, k, v, cu, cu)
    assert out.shape == (0, 2, 4) and lse.shape == (2, 0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def test_queries_without_any_key_give_zeros_and_zero_gradients():
    q, k, v = packed([5], 2, 8), packed([0], 2, 8), packed([0], 2, 8)
    out, lse = seqops.attention_varlen_with_lse(q, k, v, [0, 5], [0, 0])
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
    assert torch.equal(torch.autograd.grad(out, q, torch.randn_like(out))[0], torch.zeros_like(q))


def test_non_contiguous_inputs_and_lengths():
    lengths = [9, 14]
    qkv = torch.randn(23, 3, 2, 16, requires_grad=True)  # a fused projection's [rows, (q, k, v), heads, dim]
    q, k, v = qkv.unbind(1)
    cu = torch.tensor([0, -1, 9, -1, 23], dtype=torch.int32)[::2]  # strided lengths: values 0, 9, 23
    out = seqops.attention_varlen(q, k, v, cu, cu, is_causal=True)
    leaves = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    dense = seqops.attention_varlen(*leaves, cumulative_lengths(lengths), cumulative_lengths(lengths), is_causal=True)
    torch.testing.assert_close(out, dense)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, qkv, grad)[0]
    want = torch.stack(torch.autograd.grad(dense, leaves, grad), 1)
    torch.testing.assert_close(got, want)


def test_cumulative_lengths_on_the_host_and_as_lists_work():
    lengths = [6, 11]
    q, k, v = packed(lengths, 2, 16), packed(lengths, 2, 16), packed(lengths, 2, 16)
    cu = cumulative_lengths(lengths)
    ours = seqops.attention_varlen(q, k, v, [0, 6, 17], cu.cpu().long())
    torch.testing.assert_close(ours, seqops.attention_varlen(q, k, v, cu, cu))


# ---------------------------------------------------------------------------------------------------------------
# Jagged nested tensors through seqops.attention, as SDPA takes them.


def _jagged(lengths, heads, dim, offsets=None):
    if offsets is not None:
        values = torch.randn(int(offsets[-1]), heads, dim)
        return torch.nested.nested_tensor_from_jagged(values, offsets).requires_grad_()
    return torch.nested.nested_tensor([torch.randn(n, heads, dim) for n in lengths], layout=torch.jagged,
                                      requires_grad=True)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")  # SDPA's math path
def test_jagged_nested_tensors_match_sdpa_forward_and_grads():
    # [B, j, H, E] nested tensors transposed to [B, H, j, E], SDPA's layout for them.
    qn = _jagged([5, 19, 3], 2, 16)
    kn = _jagged([7, 4, 26], 2, 16)
    vn = _jagged(None, 2, 24, offsets=kn.offsets())
    q, k, v = (t.transpose(1, 2) for t in (qn, kn, vn))
    ours = seqops.attention(q, k, v, scale=0.3)
    theirs = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    assert ours.is_nested and ours.shape[:2] == (3, 2) and ours.shape[3] == 24 and ours._ragged_idx == 2
    assert ours.shape[2] == q.shape[2]  # the query's ragged structure: adds to a tensor shaped like the query's
    torch.testing.assert_close(ours.values(), theirs.values())
    grad = torch.randn_like(ours.values())
    for a, b in zip(torch.autograd.grad(ours.values(), (qn, kn, vn), grad),
                    torch.autograd.grad(theirs.values(), (qn, kn, vn), grad)):
        torch.testing.assert_close(a.values(), b.values())


def test_jagged_causal_is_per_sequence_upper_left():
    # SDPA's CPU path for nested tensors has no causal mode; each sequence against dense SDPA instead.
    lengths = [6, 21, 1]
    qn, kn, vn = (_jagged(lengths, 2, 16) for _ in range(3))
    vn = _jagged(None, 2, 16, offsets=kn.offsets())
    ours = seqops.attention(qn.transpose(1, 2), kn.transpose(1, 2), vn.transpose(1, 2), is_causal=True)
    for o, q, k, v in zip(ours.unbind(), qn.unbind(), kn.unbind(), vn.unbind()):
        want = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                              is_causal=True)
        torch.testing.assert_close(o, want)


def test_jagged_ragged_second_batch_dim_runs_dense_attention():
    # Ragged along dim 1 of [B, j, L, E]: SDPA treats j as a batch dim and so do we.
    values = [torch.randn(n, 5, 8) for n in (2, 3)]
    q, k, v = (torch.nested.nested_tensor(values, layout=torch.jagged) for _ in range(3))
    ours = seqops.attention(q, k, v, is_causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours.values(), theirs.values())


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
def test_jagged_bad_inputs_raise_clearly():
    qn, kn = _jagged([4, 6], 2, 8), _jagged([3, 5], 2, 8)
    q, k = qn.transpose(1, 2), kn.transpose(1, 2)
    with pytest.raises(InvalidArgumentError, match="attn_mask"):
        seqops.attention(q, k, k, attn_mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="all be nested tensors of the jagged layout"):
        seqops.attention(q, torch.randn(2, 2, 5, 8), k)
    strided = torch.nested.nested_tensor([torch.randn(2, 4, 8), torch.randn(2, 6, 8)])
    with pytest.raises(InvalidArgumentError, match="strided nested tensors are not supported"):
        seqops.attention(strided, strided, strided)
    with pytest.raises(InvalidArgumentError, match="ragged along one dim"):
        seqops.attention(q, k, kn)
    with pytest.raises(InvalidArgumentError, match="batch sizes differ"):
        three = _jagged([3, 5, 2], 2, 8).transpose(1, 2)
        seqops.attention(q, three, three)
    with pytest.raises(InvalidArgumentError, match="same lengths"):
        other = _jagged([5, 3], 2, 8).transpose(1, 2)
        seqops.attention(q, k, other)
    with pytest.raises(InvalidArgumentError, match="nested tensors are not supported"):
        seqops.attention_with_lse(q, k, k)
    with pytest.raises(TypeError, match="'is_causal' must be bool"):
        seqops.attention(q, k, k, is_causal=None)


# ---------------------------------------------------------------------------------------------------------------
# Registration: opcheck, gradcheck, compile.


def _op_args(dropout=0.0, dtype=torch.float32):
    lengths_q, lengths_k = [3, 0, 9], [5, 2, 4]
    q, k, v = packed(lengths_q, 2, 16, dtype), packed(lengths_k, 1, 16, dtype), packed(lengths_k, 1, 8, dtype)
    seed = torch.tensor([9], dtype=torch.int64) if dropout else None
    return (q, k, v, cumulative_lengths(lengths_q), cumulative_lengths(lengths_k).long(), seed, 0.4, True, dropout)


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_opcheck_forward(dropout):
    torch.library.opcheck(torch.ops.seqops.attention_varlen_fwd.default, _op_args(dropout))


@pytest.mark.parametrize("layout", ["contiguous", "heads_first"])
def test_opcheck_backward(layout):
    q, k, v, cu_q, cu_k, seed, scale, causal, p = _op_args()
    if layout == "heads_first":  # dense but permuted: the gradients still come back contiguous, as the fake says
        q, k, v = (t.detach().transpose(0, 1).contiguous().transpose(0, 1) for t in (q, k, v))
    out, lse = torch.ops.seqops.attention_varlen_fwd(q, k, v, cu_q, cu_k, seed, scale, causal, p)
    args = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), cu_q, cu_k, seed,
            out.detach(), lse.detach(), scale, causal, p)
    torch.library.opcheck(torch.ops.seqops.attention_varlen_bwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_gradcheck_float64_and_double_backward():
    q, k, v, cu_q, cu_k, _, scale, causal, _ = _op_args(dtype=torch.float64)
    lse_rows = torch.isfinite(seqops.attention_varlen_with_lse(q, k, v, cu_q, cu_k, enable_gqa=True)[1])

    def f(q, k, v):
        out, lse = seqops.attention_varlen_with_lse(q, k, v, cu_q, cu_k, is_causal=causal, scale=scale,
                                                    enable_gqa=True)
        return out, torch.where(lse_rows, lse, 0.0)

    torch.autograd.gradcheck(f, (q, k, v))
    torch.autograd.gradgradcheck(lambda *t: f(*t)[0], (q, k, v))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace` is deprecated")
def test_jit_trace_keeps_the_default_scale_in_double_precision():
    # Traced, the head dim is a tensor: a scale computed from it in float32 would be off by ~1e-8 (float64 sees).
    lengths = [5, 12]
    q, k, v = (packed(lengths, 2, 8, dtype=torch.float64) for _ in range(3))
    cu = cumulative_lengths(lengths)
    traced = torch.jit.trace(lambda q, k, v: seqops.attention_varlen(q, k, v, cu, cu), (q, k, v), check_trace=False)
    torch.testing.assert_close(traced(q, k, v), seqops.attention_varlen(q, k, v, cu, cu), rtol=1e-14, atol=1e-14)


@pytest.mark.compile
def test_compile_fullgraph_forward_and_backward():
    lengths = [5, 12]
    q, k, v = packed(lengths, 2, 16), packed(lengths, 2, 16), packed(lengths, 2, 16)
    cu = cumulative_lengths(lengths)
    compiled = torch.compile(seqops.attention_varlen, fullgraph=True, dynamic=False)
    out = compiled(q, k, v, cu, cu, is_causal=True)
    eager = seqops.attention_varlen(q, k, v, cu, cu, is_causal=True)
    torch.testing.assert_close(out, eager)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(eager, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


@pytest.mark.compile
def test_compile_fullgraph_on_jagged_nested_tensors():
    qn, kn = _jagged([5, 9, 3], 2, 16), _jagged([7, 4, 6], 2, 16)
    vn = _jagged(None, 2, 16, offsets=kn.offsets())

    def attend(qn, kn, vn):  # [B, j, H, E] in and out, as a transformer block holds them
        return seqops.attention(qn.transpose(1, 2), kn.transpose(1, 2), vn.transpose(1, 2), is_causal=True)

    out = torch.compile(attend, fullgraph=True)(qn, kn, vn)
    eager = attend(qn, kn, vn)
    torch.testing.assert_close(out.values(), eager.values())
    grad = torch.randn_like(out.values())
    for a, b in zip(torch.autograd.grad(out.values(), (qn, kn, vn), grad),
                    torch.autograd.grad(eager.values(), (qn, kn, vn), grad)):
        torch.testing.assert_close(a.values(), b.values())


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs of attention_varlen and of the ops called directly.


@pytest.mark.parametrize("cu_q,message", [
    ([1, 4, 9], "must start at 0"),
    ([0, 4, 8], "must end at the row count 9"),
    ([0, 6, 4, 9], "different batch sizes"),
    ([0, 10, 9], "must not decrease"),
])
def test_bad_cumulative_lengths_raise(cu_q, message):
    q, k = packed([4, 5], 2, 8), packed([3, 5], 2, 8)
    with pytest.raises(InvalidArgumentError, match=message):
        seqops.attention_varlen(q, k, k, torch.tensor(cu_q), cumulative_lengths([3, 5]))


def test_bad_shapes_and_dtypes_raise():
    q, k = packed([4, 5], 2, 8), packed([3, 5], 2, 8)
    cu_q, cu_k = cumulative_lengths([4, 5]), cumulative_lengths([3, 5])
    with pytest.raises(InvalidArgumentError, match="3-D"):
        seqops.attention_varlen(q[None], k, k, cu_q, cu_k)
    with pytest.raises(InvalidDtypeError, match="int32 or int64"):
        seqops.attention_varlen(q, k, k, cu_q.float(), cu_k)
    with pytest.raises(InvalidDtypeError, match="one floating dtype"):
        seqops.attention_varlen(q, k.double(), k, cu_q, cu_k)
    with pytest.raises(InvalidArgumentError, match="head dims differ"):
        seqops.attention_varlen(q, k[..., :4], k, cu_q, cu_k)
    with pytest.raises(InvalidArgumentError, match="enable_gqa"):
        seqops.attention_varlen(q, k[:, :1], k[:, :1], cu_q, cu_k)
    with pytest.raises(InvalidArgumentError, match="dividing"):
        seqops.attention_varlen(packed([4, 5], 3, 8), k, k, cu_q, cu_k, enable_gqa=True)
    with pytest.raises(InvalidArgumentError, match="row counts differ"):
        seqops.attention_varlen(q, k, k[:7], cu_q, cu_k)
    with pytest.raises(InvalidArgumentError, match="dropout_p"):
        seqops.attention_varlen(q, k, k, cu_q, cu_k, dropout_p=1.5)
    with pytest.raises(InvalidArgumentError, match="1-D"):
        seqops.attention_varlen(q, k, k, cu_q[None], cu_k)
    with pytest.raises(TypeError, match="'is_causal' must be bool"):
        seqops.attention_varlen(q, k, k, cu_q, cu_k, is_causal=1)
    with pytest.raises(TypeError, match="'dropout_p' must be float"):
        seqops.attention_varlen(q, k, k, cu_q, cu_k, dropout_p="0.1")


def test_nan_propagates_to_its_own_sequence_only():
    lengths = [6, 9]
    q, k, v = (packed(lengths, 2, 16).detach() for _ in range(3))
    k[2, 0, 3] = float("nan")  # a key of sequence 0, head 0
    out = seqops.attention_varlen(q, k, v, cumulative_lengths(lengths), cumulative_lengths(lengths))
    assert torch.isnan(out[:6, 0]).all()
    assert torch.isfinite(out[:6, 1]).all() and torch.isfinite(out[6:]).all()


# ---------------------------------------------------------------------------------------------------------------
# The route without the kernels (the CPU without the interpreter), called directly: whatever TRITON_INTERPRET says.


def test_cpu_route_takes_the_cpu_flash_kernel_where_it_applies_and_agrees_with_the_reference(monkeypatch):
    if torch.get_default_device().type != "cpu":
        pytest.skip("the route of CPU tensors")  # each_device's CUDA run: the kernels are tested above
    from seqops.ops import attention_cpu, attention_varlen_cpu
    from seqops.ops.attention_varlen_checks import sequence_bounds

    calls = []
    for name in ("forward", "backward"):
        real = getattr(attention_cpu, name)
        monkeypatch.setattr(attention_cpu, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    lengths_q, lengths_k = [7, 0, 30, 12], [9, 4, 21, 0]
    q, k, v = packed(lengths_q, 4, 16).detach(), packed(lengths_k, 2, 16).detach(), packed(lengths_k, 2, 16).detach()
    bounds, _, _ = sequence_bounds("test", cumulative_lengths(lengths_q), cumulative_lengths(lengths_k), 49, 34)
    out, lse = attention_varlen_cpu.forward(q, k, v, bounds, None, 0.25, True, 0.0)
    assert calls == ["forward", "forward"]  # the two sequences with queries and keys
    want, want_lse = attention_varlen_cpu.forward(q, k, v, bounds, None, 0.25, True, 0.0, differentiable=True)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(lse, want_lse)
    dout = torch.randn_like(out)
    grads = attention_varlen_cpu.backward(dout, None, q, k, v, bounds, None, out, lse, 0.25, True, 0.0)
    assert calls.count("backward") == 2
    reference = attention_varlen_cpu.backward(dout, torch.zeros_like(lse), q, k, v, bounds, None, out, lse, 0.25,
                                              True, 0.0)  # an lse gradient keeps the reference formulas
    assert calls.count("backward") == 2
    for got, wanted in zip(grads, reference):
        torch.testing.assert_close(got, wanted)
