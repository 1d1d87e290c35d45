"""The attention custom ops: opcheck, torch.compile, float64 gradcheck, double backward, routing, errors."""

import pytest
import torch
import torch.nn.functional as F
from attention_checks import make_qkv

from seqops.ops import attention as attention_module
from seqops.ops.attention import attention, attention_with_lse


def _fwd_args(mask=None, causal=False, dropout=0.0, dtype=torch.float32):
    q, k, v = make_qkv((1, 2, 9, 16), (1, 2, 11, 16), (1, 2, 11, 8), dtype=dtype)
    seed = torch.tensor([5], dtype=torch.int64) if dropout else None
    return (q, k, v, mask, seed, 0.3, causal, dropout)


@pytest.mark.parametrize("variant", ["plain", "causal", "float_mask", "bool_mask", "dropout"])
def test_opcheck_forward(variant):
    mask = None
    if variant == "float_mask":
        mask = torch.randn(1, 1, 9, 11, requires_grad=True).expand(1, 2, 9, 11)
    elif variant == "bool_mask":
        mask = (torch.rand(1, 1, 1, 11) > 0.3).expand(1, 2, 9, 11)
    args = _fwd_args(mask=mask, causal=variant == "causal", dropout=0.2 if variant == "dropout" else 0.0)
    torch.library.opcheck(torch.ops.seqops.attention_fwd.default, args)


def test_opcheck_backward():
    q, k, v, _, _, scale, causal, p = _fwd_args()
    out, lse = torch.ops.seqops.attention_fwd(q, k, v, None, None, scale, causal, p)
    mask = torch.randn(1, 2, 9, 11)
    args = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), mask, None,
            out.detach(), lse.detach(), scale, causal, p, True)
    # No autograd of its own (the backward op is not differentiated): schema and fake-tensor checks.
    torch.library.opcheck(torch.ops.seqops.attention_bwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.compile
def test_compile_fullgraph_forward_and_backward():
    q, k, v = make_qkv((2, 4, 9, 16), (2, 2, 13, 16), (2, 2, 13, 16))
    mask = torch.rand(2, 1, 1, 13) > 0.2
    compiled = torch.compile(attention, fullgraph=True, dynamic=False)
    out = compiled(q, k, v, attn_mask=mask, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(out, theirs)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64_including_mask_and_lse():
    # float64 runs the ops' reference route: this checks the op registration and its explicit backward
    # formulas (dq, dk, dv, the float mask's gradient and the lse's) against finite differences.
    q, k, v = make_qkv((1, 2, 4, 3), (1, 1, 5, 3), (1, 1, 5, 2), dtype=torch.float64)
    mask = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, mask):
        out, lse = attention_with_lse(q, k, v, attn_mask=mask, enable_gqa=True)
        return out, lse

    assert torch.autograd.gradcheck(f, (q, k, v, mask))


def test_double_backward_through_the_reference():
    q, k, v = make_qkv((1, 2, 4, 3), (1, 2, 5, 3), (1, 2, 5, 3), dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda q, k, v: attention(q, k, v, is_causal=True), (q, k, v))


def test_cpu_reference_route_without_interpreter(monkeypatch):
    # Without TRITON_INTERPRET, CPU tensors run the reference inside the same custom ops.
    monkeypatch.setattr(attention_module, "_INTERPRET", False)
    q, k, v = make_qkv((2, 4, 7, 16), (2, 2, 9, 16), (2, 2, 9, 16))
    mask = torch.randn(7, 9, requires_grad=True)
    out = attention(q, k, v, attn_mask=mask, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(out, theirs)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v, mask), grad),
                    torch.autograd.grad(theirs, (q, k, v, mask), grad)):
        torch.testing.assert_close(a, b)
    torch.manual_seed(3)
    first = attention(q, k, v, dropout_p=0.5, enable_gqa=True)
    torch.manual_seed(3)
    assert torch.equal(first, attention(q, k, v, dropout_p=0.5, enable_gqa=True))


BAD_INPUTS = [
    ("head dims", lambda attention, q, k, v: attention(q, k[..., :8], v), ValueError, "head dims differ"),
    ("kv lengths", lambda attention, q, k, v: attention(q, k, v[..., :5, :]), ValueError, "lengths differ"),
    ("dtypes", lambda attention, q, k, v: attention(q, k.double(), v), TypeError, "one dtype"),
    ("integer", lambda attention, q, k, v: attention(q.int(), k.int(), v.int()), TypeError, "floating-point"),
    ("1-d", lambda attention, q, k, v: attention(q[0, 0, 0], k, v), ValueError, "at least 2 dims"),
    ("mask shape", lambda attention, q, k, v: attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.bool)),
     ValueError, "does not broadcast"),
    ("mask adds dims", lambda attention, q, k, v: attention(q, k, v, attn_mask=torch.ones(1, 1, 1, 9, 11)),
     ValueError, "not add dims"),
    ("mask dtype", lambda attention, q, k, v: attention(q, k, v, attn_mask=torch.ones(9, 11, dtype=torch.int32)),
     TypeError, "attn_mask must be bool"),
    ("mask float64", lambda attention, q, k, v: attention(q, k, v, attn_mask=torch.zeros(9, 11, dtype=torch.float64)),
     TypeError, "attn_mask must be bool"),
    ("mask and causal", lambda attention, q, k, v: attention(q, k, v, attn_mask=torch.ones(9, 11, dtype=torch.bool),
                                                  is_causal=True), ValueError, "not both"),
    ("gqa multiple", lambda attention, q, k, v: attention(q[:, :3], k[:, :2], v[:, :2], enable_gqa=True), ValueError,
     "must each divide the query heads"),
    ("gqa kv heads", lambda attention, q, k, v: attention(q, k[:, :3], v, enable_gqa=True), ValueError,
     "must each divide the query heads"),
    ("heads without gqa", lambda attention, q, k, v: attention(q[:, :3], k[:, :2], v[:, :2]), ValueError, "enable_gqa"),
    ("batch", lambda attention, q, k, v: attention(q, torch.cat([k, k, k]), torch.cat([v, v, v])), ValueError,
     "do not broadcast"),
    ("dropout", lambda attention, q, k, v: attention(q, k, v, dropout_p=1.5), ValueError, "dropout_p"),
    ("not a tensor", lambda attention, q, k, v: attention(q.tolist(), k, v), TypeError, "must be a Tensor"),
    ("is_causal None", lambda attention, q, k, v: attention(q, k, v, is_causal=None), TypeError, "must be bool"),
    ("is_causal int", lambda attention, q, k, v: attention(q, k, v, None, 0.0, 1), TypeError, "must be bool"),
    ("enable_gqa int", lambda attention, q, k, v: attention(q, k, v, enable_gqa=1), TypeError, "must be bool"),
    ("dropout None", lambda attention, q, k, v: attention(q, k, v, dropout_p=None), TypeError, "must be float"),
]


def test_dropout_p_takes_what_sdpa_takes():
    # a bool (`dropout_p=self.training and p` in eval mode) and numpy numbers, as SDPA's binding takes them
    import numpy as np

    q, k, v = make_qkv((2, 4, 9, 16), (2, 4, 11, 16), (2, 4, 11, 16), requires_grad=False)
    want = attention(q, k, v)
    for dropout_p in (False, 0, np.float32(0.0), np.float64(0.0)):
        torch.testing.assert_close(attention(q, k, v, dropout_p=dropout_p), want)
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), want)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_clear_errors(case):
    _, call, error, message = case
    q, k, v = make_qkv((2, 4, 9, 16), (2, 4, 11, 16), (2, 4, 11, 16), requires_grad=False)
    with pytest.raises(error, match=message):
        call(attention, q, k, v)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_what_sdpa_raises(case):
    # Code written against SDPA catches RuntimeError (TypeError for a non-tensor argument): ours is one too.
    _, call, _, _ = case
    q, k, v = make_qkv((2, 4, 9, 16), (2, 4, 11, 16), (2, 4, 11, 16), requires_grad=False)
    with pytest.raises(Exception) as ours:
        call(attention, q, k, v)
    try:
        call(F.scaled_dot_product_attention, q, k, v)
    except Exception as theirs:  # noqa: BLE001 - its type is the point
        assert isinstance(ours.value, type(theirs)), (type(ours.value), type(theirs))
    else:  # SDPA's CPU kernel takes a value shorter than the key without a word
        assert isinstance(ours.value, RuntimeError)


@pytest.mark.parametrize("mask_shape", [(1, 1, 9, 11), (1, 4, 9, 11), (3, 1, 9, 11), (1, 9, 11)], ids=str)
def test_masks_of_3d_inputs_may_have_a_fourth_dim_of_one_as_in_sdpa(mask_shape):
    # SDPA adds the mask to 3-D inputs' scores as [1, H, L, S]: one more leading dim of size 1 is allowed; a
    # 2-D input's scores take none.
    q, k, v = make_qkv((4, 9, 16), (4, 11, 16), (4, 11, 16), dtype=torch.float64)
    mask = torch.randn(mask_shape, dtype=torch.float64, requires_grad=True)
    if mask_shape[0] == 3:
        with pytest.raises(ValueError, match="not add dims"):
            attention(q, k, v, attn_mask=mask)
        with pytest.raises(RuntimeError):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return
    out = attention(q, k, v, attn_mask=mask)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == theirs.shape == q.shape
    torch.testing.assert_close(out, theirs)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v, mask), grad),
                    torch.autograd.grad(theirs, (q, k, v, mask), grad)):
        torch.testing.assert_close(a, b)
    q2, k2, v2, mask3 = q[0], k[0], v[0], torch.randn(1, 9, 11, dtype=torch.float64)
    with pytest.raises(ValueError, match="not add dims"):
        attention(q2, k2, v2, attn_mask=mask3)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask3)


@pytest.mark.parametrize("dims", [(q, k, v) for q in (2, 3, 4) for k in (2, 3, 4) for v in (2, 3, 4)], ids=str)
def test_mask_ranks_are_accepted_and_refused_as_sdpa_does(dims):
    # SDPA takes a mask one dim above the output only when query, key and value are all 3-D.
    shapes = [(*(2,) * (n - 2), length, 8) for n, length in zip(dims, (4, 6, 6))]
    q, k, v = make_qkv(*shapes, requires_grad=False)
    for mask_dims in range(2, 6):
        mask = torch.randn(*(1,) * (mask_dims - 2), 4, 6)
        try:
            theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                attention(q, k, v, attn_mask=mask)
        else:
            torch.testing.assert_close(attention(q, k, v, attn_mask=mask), theirs)


def test_gqa_with_different_key_and_value_heads_matches_sdpa():
    # SDPA repeats key and value each by its own factor: 2 key heads, 4 value heads for 4 query heads.
    q, k, v = make_qkv((2, 4, 5, 8), (2, 2, 6, 8), (2, 4, 6, 8), dtype=torch.float64)
    out = attention(q, k, v, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, theirs)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(theirs, (q, k, v), grad)):
        torch.testing.assert_close(a, b)
    small = make_qkv((1, 4, 3, 4), (1, 2, 4, 4), (1, 4, 4, 4), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, enable_gqa=True), small)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, enable_gqa=True), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), theirs)


def test_scale_and_enable_gqa_are_keyword_only_and_scale_takes_what_sdpa_takes():
    import inspect

    import numpy as np

    for fn in (attention, attention_with_lse):
        params = inspect.signature(fn).parameters
        assert params["scale"].kind is inspect.Parameter.KEYWORD_ONLY
        assert params["enable_gqa"].kind is inspect.Parameter.KEYWORD_ONLY
    q, k, v = make_qkv((1, 2, 5, 8), (1, 2, 6, 8), (1, 2, 6, 8), requires_grad=False)
    for fn in (attention, F.scaled_dot_product_attention):
        with pytest.raises(TypeError):
            fn(q, k, v, None, 0.0, False, 0.5)
    expected = F.scaled_dot_product_attention(q, k, v, scale=0.5)
    for scale in (0.5, np.float32(0.5), torch.tensor(0.5)):
        torch.testing.assert_close(attention(q, k, v, scale=scale), expected)
