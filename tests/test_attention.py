"""seqops.attention: forward and every gradient vs the float64 reference and F.scaled_dot_product_attention.

On a machine without CUDA, tests/conftest.py sets TRITON_INTERPRET=1, so these run the Triton kernels in the
interpreter on CPU tensors (the whole public path, backward included). On a GPU machine every test runs again
on CUDA tensors (the `device` fixture), against the compiled kernels. Shapes are small: the interpreter runs
programs one by one.
"""

import pytest
import torch
import torch.nn.functional as F
from attention_checks import assert_flash_rule, check_fp32, float64_oracle, make_qkv

import seqops
from seqops import reference
from seqops.ops.attention import attention, attention_with_lse

# Each test on CPU tensors and, on a GPU machine, again on CUDA tensors (conftest.each_device).
pytestmark = pytest.mark.usefixtures("each_device")


def _check_low_precision(q, k, v, **kwargs):
    """fp16/bf16: FlashAttention rule vs the float64 result, PyTorch's own computation in that dtype as the baseline."""
    out = attention(q, k, v, **kwargs)
    grad_out = torch.randn_like(out)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, **kwargs)
    low = reference.attention(q, k, v, **kwargs)
    low_grads = torch.autograd.grad(low, (q, k, v), grad_out)
    assert_flash_rule(out, low, exact, "out")
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, got, base, want in zip(("dq", "dk", "dv"), grads, low_grads, exact_grads):
        assert_flash_rule(got, base, want, name)


@pytest.mark.parametrize("L,S", [(1, 1), (17, 17), (97, 130), (130, 97), (1, 33), (33, 1)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_odd_lengths_fp32(L, S, is_causal):
    q, k, v = make_qkv((1, 2, L, 32), (1, 2, S, 32), (1, 2, S, 32))
    check_fp32(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("E", [1, 16, 40, 64, 80, 128, 256])
def test_head_dims_fp32(E):
    q, k, v = make_qkv((1, 2, 19, E), (1, 2, 23, E), (1, 2, 23, E))
    check_fp32(q, k, v)


@pytest.mark.parametrize("E,Ev", [(16, 40), (40, 16), (3, 100)])
def test_value_head_dim_differs(E, Ev):
    q, k, v = make_qkv((1, 2, 21, E), (1, 2, 18, E), (1, 2, 18, Ev))
    check_fp32(q, k, v, is_causal=True)


@pytest.mark.parametrize("E", [16, 64, 80, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fp16_flash_rule(E, is_causal):
    q, k, v = make_qkv((1, 2, 37, E), (1, 2, 45, E), (1, 2, 45, E), dtype=torch.float16)
    _check_low_precision(q, k, v, is_causal=is_causal)


# On CPU tensors bf16 skips the interpreter, whose tl.dot gets bf16 wrong: its numbers must be right all the same.
@pytest.mark.parametrize("is_causal", [False, True])
def test_bf16_flash_rule(is_causal):
    q, k, v = make_qkv((2, 2, 37, 64), (2, 2, 45, 64), (2, 2, 45, 64), dtype=torch.bfloat16)
    mask = torch.rand(2, 1, 1, 45, device=q.device) > 0.2
    _check_low_precision(q, k, v, is_causal=is_causal)
    _check_low_precision(q, k, v, attn_mask=mask)


def test_fp16_flash_rule_with_mask_and_gqa():
    q, k, v = make_qkv((2, 4, 29, 64), (2, 2, 31, 64), (2, 2, 31, 64), dtype=torch.float16)
    mask = torch.rand(2, 1, 1, 31) > 0.3
    _check_low_precision(q, k, v, attn_mask=mask, enable_gqa=True)


def test_scale():
    q, k, v = make_qkv((1, 2, 20, 24), (1, 2, 26, 24), (1, 2, 26, 24))
    check_fp32(q, k, v, scale=0.37)
    check_fp32(q, k, v, scale=2.0, is_causal=True)


@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (6, 1), (3, 3)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gqa(Hq, Hkv, is_causal):
    q, k, v = make_qkv((2, Hq, 19, 16), (2, Hkv, 27, 16), (2, Hkv, 27, 16))
    check_fp32(q, k, v, is_causal=is_causal, enable_gqa=True)
    # and against PyTorch itself
    torch.testing.assert_close(attention(q, k, v, is_causal=is_causal, enable_gqa=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True))


MASK_SHAPES = {
    "key_padding": lambda B, H, L, S: (B, 1, 1, S),
    "shared_2d": lambda B, H, L, S: (L, S),
    "per_head": lambda B, H, L, S: (B, H, L, S),
    "per_batch_rows": lambda B, H, L, S: (B, 1, L, S),
}


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_bool_mask(shape):
    B, H, L, S = 2, 2, 23, 37
    q, k, v = make_qkv((B, H, L, 16), (B, H, S, 16), (B, H, S, 16))
    mask = torch.rand(MASK_SHAPES[shape](B, H, L, S)) > 0.3
    check_fp32(q, k, v, attn_mask=mask)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attention(q, k, v, attn_mask=mask), theirs)


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_float_mask_with_gradient(shape):
    B, H, L, S = 2, 2, 23, 37
    q, k, v = make_qkv((B, H, L, 16), (B, H, S, 16), (B, H, S, 16))
    mask = torch.randn(MASK_SHAPES[shape](B, H, L, S), requires_grad=True)
    check_fp32(q, k, v, attn_mask=mask)


def test_float_mask_without_gradient_and_fp16_query_with_fp32_mask():
    q, k, v = make_qkv((1, 2, 17, 16), (1, 2, 21, 16), (1, 2, 21, 16))
    check_fp32(q, k, v, attn_mask=torch.randn(17, 21))
    qh, kh, vh = make_qkv((1, 2, 17, 16), (1, 2, 21, 16), (1, 2, 21, 16), dtype=torch.float16)
    _check_low_precision(qh, kh, vh, attn_mask=torch.randn(17, 21))


def test_mask_is_not_materialised_per_head():
    # The public path passes a stride-0 view; the op sees [B, H, L, S] strides with zeros where it broadcasts.
    seen = {}
    original = torch.ops.seqops.attention_fwd

    q, k, v = make_qkv((2, 4, 9, 16), (2, 4, 11, 16), (2, 4, 11, 16), requires_grad=False)
    mask = torch.rand(2, 1, 1, 11) > 0.5
    from seqops.ops import attention as attention_module

    class Spy:
        def __getattr__(self, name):
            return getattr(torch.ops.seqops, name)

        def attention_fwd(self, *args):
            seen["mask"] = args[3]
            return original(*args)

    real_ops = attention_module._ops
    attention_module._ops = Spy()
    try:
        attention_with_lse(q, k, v, attn_mask=mask)  # through the ops on every route (see attention_cpu's tests)
    finally:
        attention_module._ops = real_ops
    assert seen["mask"].shape == (2, 4, 9, 11)
    assert seen["mask"].stride() == (11, 0, 0, 1)
    assert seen["mask"].data_ptr() == mask.data_ptr()


@pytest.mark.parametrize("L,S", [(20, 29), (29, 20)])
def test_causal_with_mask_like_sdpa_upper_left(L, S):
    # is_causal is upper-left aligned: row i sees keys j <= i, also when L != S.
    q, k, v = make_qkv((1, 2, L, 16), (1, 2, S, 16), (1, 2, S, 16))
    explicit = torch.ones(L, S, dtype=torch.bool).tril()
    torch.testing.assert_close(attention(q, k, v, is_causal=True), attention(q, k, v, attn_mask=explicit))
    torch.testing.assert_close(attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_behave_as_sdpa(kind):
    q, k, v = make_qkv((2, 2, 13, 16), (2, 2, 19, 16), (2, 2, 19, 16))
    keep = torch.rand(2, 2, 13, 19) > 0.3
    keep[0, 1, 4] = False
    keep[1, :, 0] = False
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    out = check_fp32(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert (out[0, 1, 4] == 0).all() and (out[1, :, 0] == 0).all()
    _, lse = attention_with_lse(q, k, v, attn_mask=mask)
    assert torch.isneginf(lse[0, 1, 4]) and torch.isneginf(lse[1, :, 0]).all()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, in the interpreter
@pytest.mark.parametrize("floor", [torch.finfo(torch.float32).min, -2.4e38, -1e30], ids=str)
def test_masks_of_huge_finite_values_average_rows_like_sdpa(floor):
    # Hugging Face's additive padding masks hold finfo(dtype).min: a row masked wholly by it is SDPA's uniform
    # average, not a fully masked row. In the kernels' log2 units such a value overflowed to -inf (below
    # -FLT_MAX / log2 e); -1e30 never did.
    q, k, v = make_qkv((2, 2, 13, 16), (2, 2, 19, 16), (2, 2, 19, 16))
    mask = torch.randn(2, 1, 13, 19, device=q.device)
    mask[..., 15:] = floor  # padded keys
    mask[0, :, 4] = floor  # a padded query row: every key masked by a finite value
    mask[1, :, 7, :9] = float("-inf")  # a row mixing -inf and the floor
    mask[1, :, 7, 9:] = floor
    out, lse = attention_with_lse(q, k, v, attn_mask=mask)
    theirs = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    torch.testing.assert_close(out, theirs.float())
    assert torch.isfinite(lse).all()
    # fp32 cannot hold such a row's log-sum (its log l is lost below ulp(floor)), so the backward cannot rebuild
    # its probabilities: gradients through it are finite, and exact for every other row.
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    assert all(torch.isfinite(g).all() for g in grads)
    if floor < -1e38:
        grad_out[0, :, 4] = 0
        grad_out[1, :, 7] = 0
    grads = torch.autograd.grad(attention(q, k, v, attn_mask=mask), (q, k, v), grad_out)
    exact = torch.autograd.grad(theirs, (q, k, v), grad_out.double())
    for name, got, want in zip(("dq", "dk", "dv"), grads, exact):
        torch.testing.assert_close(got, want.float(), msg=name)


@pytest.mark.parametrize(
    "shape_q,shape_k",
    [((9, 16), (11, 16)), ((3, 9, 16), (3, 11, 16)), ((2, 3, 2, 9, 16), (2, 3, 2, 11, 16)),
     ((2, 3, 9, 16), (3, 11, 16)), ((1, 3, 9, 16), (2, 3, 11, 16))],
    ids=["2d", "3d", "5d", "broadcast_k", "broadcast_q"],
)
def test_leading_dims(shape_q, shape_k):
    q, k, v = make_qkv(shape_q, shape_k, shape_k)
    out = attention(q, k, v)
    theirs = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == theirs.shape
    torch.testing.assert_close(out, theirs)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_non_contiguous_inputs():
    base_q, base_k, base_v = make_qkv((2, 21, 3, 16), (2, 25, 3, 16), (2, 25, 3, 32))
    q, k, v = (t.transpose(1, 2) for t in (base_q, base_k, base_v))  # [B, H, L, E] views of [B, L, H, E]
    v = v[..., ::2]  # a strided last dim too
    assert not q.is_contiguous() and v.stride(-1) == 2
    check_fp32(q, k, v, is_causal=True)


def test_lse_matches_reference_and_is_differentiable():
    q, k, v = make_qkv((1, 2, 18, 16), (1, 2, 27, 16), (1, 2, 27, 16))
    mask = torch.randn(18, 27)
    out, lse = attention_with_lse(q, k, v, attn_mask=mask)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    out_ref, lse_ref = reference.attention_with_lse(qd, kd, vd, attn_mask=mask.double())
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 18)
    torch.testing.assert_close(lse, lse_ref.float())
    g_out, g_lse = torch.randn_like(out), torch.randn_like(lse)
    got = torch.autograd.grad((out, lse), (q, k, v), (g_out, g_lse))
    want = torch.autograd.grad((out_ref, lse_ref), (qd, kd, vd), (g_out.double(), g_lse.double()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float())
    # lse alone (the output unused): autograd passes no output gradient
    got = torch.autograd.grad(attention_with_lse(q, k, v)[1].sum(), (q, k))
    want = torch.autograd.grad(reference.attention_with_lse(qd, kd, vd)[1].sum(), (qd, kd))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float())


def test_empty_inputs_follow_sdpa():
    q, k, v = make_qkv((2, 2, 0, 16), (2, 2, 5, 16), (2, 2, 5, 8))
    assert attention(q, k, v).shape == (2, 2, 0, 8)
    q, k, v = make_qkv((2, 2, 4, 16), (2, 2, 0, 16), (2, 2, 0, 8))
    out = attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    q, k, v = make_qkv((0, 2, 4, 16), (0, 2, 5, 16), (0, 2, 5, 8))
    assert attention(q, k, v).shape == (0, 2, 4, 8)


def test_nan_propagates_as_in_pytorch(each_device):
    # The kernels compare with SDPA's math backend: PyTorch's CPU flash kernel zeroes a row whose query has a
    # NaN, the math backend (the definition) propagates it, and so do the kernels. CPU tensors on a machine
    # whose kernels are compiled (a GPU machine: no interpreter) run that CPU flash kernel, as SDPA's default
    # does (README: Attention NaN), so they compare with SDPA's default.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from seqops.ops import attention as attention_module

    cpu_route = each_device == "cpu" and not attention_module._INTERPRET
    backend = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH] if cpu_route else [SDPBackend.MATH]
    q, k, v = make_qkv((1, 1, 6, 16), (1, 1, 7, 16), (1, 1, 7, 16), requires_grad=False)
    v[0, 0, 3, 5] = float("nan")  # every row reads value row 3: column 5 of the output is NaN
    q_nan = q.clone()
    q_nan[0, 0, 2, 0] = float("nan")  # row 2's scores are all NaN
    for args in ((q, k, v), (q_nan, k, v.nan_to_num(1.0))):
        with sdpa_kernel(backend):
            theirs = F.scaled_dot_product_attention(*args)
        out = attention(*args)
        assert out.isnan().any() == theirs.isnan().any() and torch.equal(out.isnan(), theirs.isnan())
    assert cpu_route or out.isnan().any()


def test_a_plus_inf_score_makes_its_row_and_its_gradients_nan_as_sdpa_math():
    # float64 runs the reference everywhere: a +inf score (here from the mask) is a NaN softmax row, which reaches
    # every key's dk and dv, as in SDPA's math backend (exp(s - inf) alone would leave the other keys finite).
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = make_qkv((1, 1, 3, 4), (1, 1, 5, 4), (1, 1, 5, 4), dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.float64, device=q.device)
    mask[1, 2] = float("inf")
    grad = torch.randn(1, 1, 3, 4, dtype=torch.float64, device=q.device)
    ours = attention(q, k, v, attn_mask=mask)
    with sdpa_kernel(SDPBackend.MATH):
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(ours.isnan(), theirs.isnan())
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_causal_with_a_scale_of_zero_or_below_is_finite_as_sdpa_math(scale):
    # PyTorch's CPU flash kernel scales its causal -inf by the scale (NaN at 0, +inf below): no route may use it.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = make_qkv((2, 2, 9, 16), (2, 2, 12, 16), (2, 2, 12, 16))
    out = attention(q, k, v, is_causal=True, scale=scale)
    with sdpa_kernel(SDPBackend.MATH):
        theirs = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True, scale=scale)
    torch.testing.assert_close(out, theirs.float())
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad.double())):
        torch.testing.assert_close(a, b.float())
    _, lse = attention_with_lse(q, k, v, is_causal=True, scale=scale)
    assert torch.isfinite(lse).all()


def test_backward_is_deterministic():
    q, k, v = make_qkv((1, 4, 45, 32), (1, 2, 50, 32), (1, 2, 50, 32))
    grad = torch.randn(1, 4, 45, 32)
    first = torch.autograd.grad(attention(q, k, v, enable_gqa=True), (q, k, v), grad)
    second = torch.autograd.grad(attention(q, k, v, enable_gqa=True), (q, k, v), grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_public_names():
    assert seqops.attention is attention
    assert seqops.attention_with_lse is attention_with_lse


@pytest.mark.parametrize("is_causal", [False, True])
def test_tma_path_in_the_interpreter(monkeypatch, is_causal):
    # The Hopper path (streamed tiles through tensor descriptors, forward and both backward kernels) runs in
    # the interpreter when asked for: the same results.
    from seqops.kernels import attention_common

    monkeypatch.setattr(attention_common, "TMA_IN_INTERPRETER", True)
    q, k, v = make_qkv((2, 4, 37, 40), (2, 2, 45, 40), (2, 2, 45, 24))
    assert attention_common.tma_eligible(q, k, v)
    check_fp32(q, k, v, is_causal=is_causal, enable_gqa=True)
    # A 3-wide head in a 40-wide row is still TMA-aligned (the descriptor zero-fills columns past E).
    check_fp32(q[..., :3], k[..., :3], v, is_causal=is_causal, enable_gqa=True)
    # Contiguous 12-byte rows are not: the pointer path takes them.
    q3, k3, v3 = make_qkv((1, 2, 9, 3), (1, 2, 11, 3), (1, 2, 11, 3))
    assert not attention_common.tma_eligible(k3, v3)
    check_fp32(q3, k3, v3, is_causal=is_causal)


def test_autocast_runs_in_the_autocast_dtype_like_sdpa(each_device):
    q, k, v = make_qkv((1, 2, 17, 16), (1, 2, 21, 16), (1, 2, 21, 16), requires_grad=False)
    mask = torch.randn(17, 21)
    # CPU autocast's dtype is bf16, which skips the interpreter (its tl.dot gets bf16 wrong): fp16 keeps the kernels.
    with torch.autocast(each_device, dtype=torch.float16):
        out = attention(q, k, v, attn_mask=mask)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.dtype == theirs.dtype == torch.float16
    qh, kh, vh, mh = q.half(), k.half(), v.half(), mask.half()
    exact = reference.attention(qh.double(), kh.double(), vh.double(), attn_mask=mh.double())
    low = reference.attention(qh, kh, vh, attn_mask=mh)
    assert_flash_rule(out, low, exact, "out under autocast")


def _head_dims_differ(q, k, v, _):
    return attention(q, k, v[..., :24], is_causal=True)


def _dropout(q, k, v, _):
    torch.manual_seed(7)
    return attention(q, k, v, dropout_p=0.25)


def _mask_gradient(q, k, v, mask):
    return attention(q, k, v, attn_mask=mask)


def _lse_gradient(q, k, v, _):
    out, lse = attention_with_lse(q, k, v)
    return out + lse[..., None]


def _varlen_dropout(q, k, v, _):
    torch.manual_seed(7)
    cu = torch.tensor([0, 5, 17], dtype=torch.int32)
    return seqops.attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                                   dropout_p=0.25, is_causal=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backward_in_autocast", [False, True])
@pytest.mark.parametrize("call", [_head_dims_differ, _dropout, _mask_gradient, _lse_gradient, _varlen_dropout])
def test_autocast_computes_what_the_cast_inputs_compute(each_device, call, backward_in_autocast, dtype):
    # The ops choose their own precision (the reference route's products in float32): an autocast region around
    # the call, or around its backward, must not cast those back down. So autocast from float32 inputs is
    # bit for bit the call on inputs cast to the autocast dtype, with gradients cast back.
    q, k, v = make_qkv((1, 2, 17, 16), (1, 2, 17, 16), (1, 2, 17, 32))
    mask = torch.randn(17, 17, requires_grad=True)
    leaves = (q, k, v, mask)
    with torch.autocast(each_device, dtype=dtype):
        out = call(*leaves)
        grad_out = torch.randn_like(out)
        if backward_in_autocast:
            grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    if not backward_in_autocast:
        grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True)
    cast = [x.detach().to(dtype).requires_grad_() for x in leaves]
    expected = call(*cast)
    expected_grads = torch.autograd.grad(expected, cast, grad_out, allow_unused=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # dtypes included
    for name, got, want in zip(("dq", "dk", "dv", "dmask"), grads, expected_grads):
        assert (got is None) == (want is None), name
        if got is not None:
            torch.testing.assert_close(got, want.float(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("autotune", [True, False])
def test_config_pruning_keeps_what_fits_and_only_the_first_without_autotuning(monkeypatch, autotune):
    from seqops.kernels import attention_common as ac

    monkeypatch.setattr(ac, "AUTOTUNE", autotune)
    prune = ac.prune_by_shared_memory(ac.SMEM_SM90)
    q = torch.empty(1, dtype=torch.bfloat16)
    fits_64 = prune(ac.FWD_CONFIGS_SM90, {"Q": q}, BLOCK_D=64, BLOCK_DV=64)
    fits_256 = prune(ac.FWD_CONFIGS_SM90, {"Q": q}, BLOCK_D=256, BLOCK_DV=256)
    for kept, d in ((fits_64, 64), (fits_256, 256)):
        assert kept and all(ac._smem_bytes(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], d, d, c.num_stages, 2)
                            <= ac.SMEM_SM90 for c in kept)
    if autotune:
        assert len(fits_64) > len(fits_256) >= 1
    else:  # the first configuration of the list that fits: the largest tile
        assert len(fits_64) == len(fits_256) == 1
        assert fits_64[0] is ac.FWD_CONFIGS_SM90[0]


def test_config_pruning_counts_the_mask_tile_and_keeps_fp32_tiles_small(monkeypatch):
    from seqops.kernels import attention_common as ac

    monkeypatch.setattr(ac, "AUTOTUNE", True)
    prune = ac.prune_by_shared_memory(ac.SMEM_SM90)
    bf16, fp32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.float32)
    big = next(c for c in ac.FWD_CONFIGS_SM90
               if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages) == (128, 64, 3))
    plain = prune(ac.FWD_CONFIGS_SM90, {"Q": bf16, "Mask": bf16}, BLOCK_D=128, BLOCK_DV=128, MASK_KIND=ac.MASK_NONE)
    masked = prune(ac.FWD_CONFIGS_SM90, {"Q": bf16, "Mask": fp32}, BLOCK_D=128, BLOCK_DV=128, MASK_KIND=ac.MASK_FLOAT)
    assert big in plain and big not in masked  # 160 KB of tiles + 96 KB of fp32 mask tiles > 227 KB
    for configs, resident, streamed in ((ac.FWD_CONFIGS_SM90, "BLOCK_M", "BLOCK_N"),
                                        (ac.DKDV_CONFIGS_SM90, "BLOCK_N", "BLOCK_M")):
        kept = ac.prune_by_shared_memory(ac.SMEM_SM90, resident, streamed)(
            configs, {"Q": fp32, "Mask": fp32}, BLOCK_D=256, BLOCK_DV=256, MASK_KIND=ac.MASK_FLOAT)
        assert kept and all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= ac.FP32_MAX_TILE for c in kept)
        assert all(ac._smem_bytes(c.kwargs[resident], c.kwargs[streamed], 256, 256, c.num_stages, 4, 4)
                   <= ac.SMEM_SM90 for c in kept)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_wide_mask_offsets_in_the_interpreter(monkeypatch, mask_dtype):
    # A mask spanning >= 2^31 elements per head runs kernels with 64-bit mask offsets (and DMask stores). The
    # threshold is lowered so a small case takes that path: the same results, forward and every gradient.
    from seqops.kernels import attention_common as ac

    monkeypatch.setattr(ac, "INT32_SPAN", 280)  # a [17, 17] mask spans 288; the [17, 16] heads 271
    q, k, v = make_qkv((1, 2, 17, 16), (1, 2, 17, 16), (1, 2, 17, 16))
    if mask_dtype == torch.bool:
        mask = torch.rand(17, 17) > 0.3
        mask[:, 0] = True  # no fully masked row
    else:
        mask = torch.randn(17, 17, requires_grad=True)
    assert ac.mask_kind(mask.expand(1, 2, 17, 17), 17, 17) > ac.MASK_WIDE
    check_fp32(q, k, v, attn_mask=mask)


def test_output_rows_past_2_31_elements(monkeypatch, each_device):
    # out keeps the caller's layout, whose rows can lie 2^31 elements apart where q's copy (within_int32_rows)
    # does not (one head of a [B, L, H, EV] buffer at L * H * EV >= 2^31): the forward stores rows in 64 bits.
    # Here a [130, 16] head's rows lie 2^24 apart, row 128 at 2^31: its 4 GiB of fp16 storage is reserved but
    # only the rows written are touched. With 32-bit rows the store wraps below the buffer (a crash).
    from seqops.kernels import attention_common, attention_fwd

    if each_device == "cpu" and not attention_common.INTERPRETING:
        pytest.skip("CPU tensors reach the kernels only in the interpreter; the cuda run covers this")
    L, E, row_stride = 130, 16, 2**24

    def rows_spread(q, shape):
        B, H, _, EV = shape
        head = (L - 1) * row_stride + EV
        return torch.empty(B * H * head, dtype=q.dtype).as_strided(shape, (H * head, head, row_stride, 1))

    q, k, v = (torch.randn(1, 1, L, E, dtype=torch.float16) for _ in range(3))
    contiguous, _ = attention_fwd.attention_forward(q, k, v, None, E**-0.5, False, 0.0, None)
    monkeypatch.setattr(attention_fwd, "empty_in_layout", rows_spread)
    spread, _ = attention_fwd.attention_forward(q, k, v, None, E**-0.5, False, 0.0, None)
    assert spread.stride(2) * (L - 1) >= 2**31
    assert torch.equal(spread, contiguous)  # the same kernel, the same numbers: only the addresses differ


def test_rows_past_int32_offsets_are_copied_contiguous_or_refused(monkeypatch):
    from seqops.kernels import attention_common as ac

    monkeypatch.setattr(ac, "INT32_SPAN", 280)
    wide_rows = torch.randn(17, 64)[:, :16].view(1, 1, 17, 16)  # rows 64 apart: spans 1039
    narrowed = ac.within_int32_rows(wide_rows)
    assert narrowed.is_contiguous() and torch.equal(narrowed, wide_rows)
    small = torch.randn(1, 1, 17, 16)
    assert ac.within_int32_rows(small) is small
    with pytest.raises(ValueError, match="2\\^31 elements"):
        ac.within_int32_rows(torch.randn(1, 1, 18, 16))  # 17 * 16 + 15 = 287 >= 280 even contiguous
    # And through the op: the strided keys give the same results as contiguous ones.
    q = torch.randn(1, 1, 9, 16, requires_grad=True)
    k = torch.randn(17, 64)[:, :16].view(1, 1, 17, 16).requires_grad_()
    v = torch.randn(17, 64)[:, :16].view(1, 1, 17, 16).requires_grad_()
    check_fp32(q, k, v)
