"""seqops.MultiheadAttention vs torch.nn.MultiheadAttention with the same weights: outputs, every gradient."""

import pytest
import torch
from torch import nn

from seqops.nn.multihead_attention import MultiheadAttention

E, H, N, L, S = 32, 4, 2, 9, 13


def _pair(**kwargs):
    ours = MultiheadAttention(E, H, **kwargs)
    theirs = nn.MultiheadAttention(E, H, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    if kwargs.get("add_bias_kv"):  # torch initialises bias_k / bias_v with xavier_normal_: nonzero already
        assert ours.bias_k.abs().sum() > 0
    return ours, theirs


def _inputs(batch_first, kdim=E, vdim=E, unbatched=False):
    def shaped(length, dim):
        if unbatched:
            return torch.randn(length, dim, requires_grad=True)
        shape = (N, length, dim) if batch_first else (length, N, dim)
        return torch.randn(shape, requires_grad=True)

    return shaped(L, E), shaped(S, kdim), shaped(S, vdim)


def _compare(ours, theirs, inputs, **call):
    out, weights = ours(*inputs, need_weights=False, **call)
    ref, _ = theirs(*inputs, need_weights=False, **call)
    assert weights is None
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    params = [p for p in ours.parameters()]
    ref_params = [dict(theirs.named_parameters())[n] for n, _ in ours.named_parameters()]
    wanted = [x for x in inputs if x.requires_grad]
    got = torch.autograd.grad(out, wanted + params, grad, allow_unused=True)
    want = torch.autograd.grad(ref, wanted + ref_params, grad, allow_unused=True)
    names = [f"input{i}" for i in range(len(wanted))] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, got, want):
        if b is None:
            assert a is None or (a == 0).all(), name
            continue
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch_first", [False, True])
def test_self_attention_packed_projection(batch_first):
    ours, theirs = _pair(batch_first=batch_first)
    x, _, _ = _inputs(batch_first)
    _compare(ours, theirs, (x, x, x))


@pytest.mark.parametrize("batch_first", [False, True])
def test_cross_attention_with_kdim_vdim(batch_first):
    ours, theirs = _pair(batch_first=batch_first, kdim=24, vdim=40)
    assert "q_proj_weight" in dict(ours.named_parameters())
    _compare(ours, theirs, _inputs(batch_first, kdim=24, vdim=40))


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_key_padding_and_attention_masks(kind):
    ours, theirs = _pair(batch_first=True)
    q, k, v = _inputs(True)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -4:] = True
    causal_like = torch.rand(L, S) > 0.7
    if kind == "float":
        pad = torch.zeros(N, S).masked_fill(pad, float("-inf"))
        causal_like = torch.randn(L, S)
    _compare(ours, theirs, (q, k, v), key_padding_mask=pad)
    _compare(ours, theirs, (q, k, v), attn_mask=causal_like)
    _compare(ours, theirs, (q, k, v), key_padding_mask=pad, attn_mask=causal_like)
    per_head = torch.rand(N * H, L, S) > 0.7 if kind == "bool" else torch.randn(N * H, L, S)
    _compare(ours, theirs, (q, k, v), attn_mask=per_head)


def test_is_causal_hint_with_and_without_padding():
    ours, theirs = _pair(batch_first=True)
    x, _, _ = _inputs(True)
    k = x
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    _compare(ours, theirs, (x, k, x), attn_mask=causal, is_causal=True)
    pad = torch.zeros(N, L)
    pad[1, -2:] = float("-inf")  # float like the causal mask (torch warns on mixed mask types)
    _compare(ours, theirs, (x, k, x), attn_mask=causal, key_padding_mask=pad, is_causal=True)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(x, x, x, need_weights=False, is_causal=True)


@pytest.mark.parametrize("add_bias_kv,add_zero_attn", [(True, False), (False, True), (True, True)])
def test_bias_kv_and_zero_attn(add_bias_kv, add_zero_attn):
    ours, theirs = _pair(add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn)
    inputs = _inputs(False)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[1, :5] = True
    _compare(ours, theirs, inputs, key_padding_mask=pad, attn_mask=torch.rand(L, S) > 0.8)


def test_unbatched_and_no_bias():
    ours, theirs = _pair(bias=False)
    _compare(ours, theirs, _inputs(False, unbatched=True), key_padding_mask=torch.rand(S) > 0.8)


def test_need_weights_falls_back_to_torch_and_returns_weights():
    ours, theirs = _pair(batch_first=True)
    q, k, v = _inputs(True)
    for average in (True, False):
        out, weights = ours(q, k, v, average_attn_weights=average)
        ref, ref_weights = theirs(q, k, v, average_attn_weights=average)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(weights, ref_weights)


def test_state_dict_and_parameters_identical_to_torch():
    ours, theirs = _pair(add_bias_kv=True, kdim=24, vdim=40)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert isinstance(ours, nn.MultiheadAttention)
    fresh = MultiheadAttention(E, H, add_bias_kv=True, kdim=24, vdim=40)
    fresh.load_state_dict(theirs.state_dict())  # strict: same names and shapes


def test_dropout_in_training_only():
    ours = MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    x = torch.randn(N, L, E)
    ours.eval()
    torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], ours(x, x, x, need_weights=False)[0])
    ours.train()
    torch.manual_seed(1)
    first = ours(x, x, x, need_weights=False)[0]
    torch.manual_seed(1)
    assert torch.equal(first, ours(x, x, x, need_weights=False)[0])
    assert not torch.equal(first, ours(x, x, x, need_weights=False)[0])


def _bad_calls():
    x, x2 = torch.randn(L, N, E), torch.randn(L, E)
    yield "embed dim", {}, (torch.randn(L, N, E + 1), x, x), {}, AssertionError, True
    yield "2-D mask shape", {}, (x, x, x), {"attn_mask": torch.zeros(L + 1, L)}, RuntimeError, True
    yield "3-D mask shape", {}, (x, x, x), {"attn_mask": torch.zeros(N, L, L)}, RuntimeError, True
    yield "unbatched 3-D mask", {}, (x2, x2, x2), {"attn_mask": torch.zeros(H - 1, L, L)}, AssertionError, True
    yield "padding batch", {}, (x, x, x), {"key_padding_mask": torch.zeros(N + 1, L, dtype=torch.bool)}, \
        AssertionError, True
    yield "padding length", {"add_bias_kv": True}, (x, x, x), \
        {"key_padding_mask": torch.zeros(N, L + 2, dtype=torch.bool)}, AssertionError, True
    yield "integer mask", {}, (x, x, x), {"attn_mask": torch.zeros(L, L, dtype=torch.int64)}, AssertionError, True
    yield "2-D key", {}, (x, x[0], x), {}, AssertionError, True
    yield "key vs value", {}, (x, torch.randn(S, N, E), torch.randn(S, 1, E)), {}, AssertionError, True
    yield "key vs value, kdim", {"kdim": 8, "vdim": 12}, (x, torch.randn(S, N, 8), torch.randn(S - 1, N, 12)), {}, \
        AssertionError, True
    yield "kdim", {"kdim": 8, "vdim": 12}, (x, torch.randn(S, N, 9), torch.randn(S, N, 12)), {}, AssertionError, \
        True
    yield "key batch", {}, (x, torch.randn(S, N + 1, E), torch.randn(S, N + 1, E)), {}, RuntimeError, False
    yield "float64 mask", {}, (x, x, x), {"attn_mask": torch.zeros(L, L, dtype=torch.float64)}, RuntimeError, False
    yield "causal without mask", {}, (x, x, x), {"is_causal": True}, RuntimeError, True


BAD_CALLS = list(_bad_calls())


@pytest.mark.parametrize("case", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_inputs_raise_like_torch(case):
    _, options, inputs, call, error, same_message = case
    ours, theirs = _pair(**options)
    with pytest.raises(error) as our_error:
        ours(*inputs, need_weights=False, **call)
    with pytest.raises(error) as their_error:
        theirs(*inputs, need_weights=False, **call)
    if same_message:
        assert str(our_error.value) == str(their_error.value)


def test_mismatched_mask_types_warn_as_torch():
    ours, theirs = _pair()
    x = torch.randn(L, N, E)
    masks = {"key_padding_mask": torch.rand(N, L) > 0.8, "attn_mask": torch.zeros(L, L)}
    for module in (theirs, ours):
        with pytest.warns(UserWarning, match="mismatched key_padding_mask and attn_mask is deprecated"):
            module(x, x, x, need_weights=False, **masks)


@pytest.mark.parametrize("batch_first", [False, True])
def test_output_views_like_torch(batch_first):
    # Sequence-first, torch's output is contiguous, and code views it (out.view(L * N, E)); batch-first, torch
    # returns a transposed view and ours is contiguous (README: "Where seqops and torch.nn differ").
    ours, theirs = _pair(batch_first=batch_first)
    x = _inputs(batch_first)[0].detach()
    out, ref = ours(x, x, x, need_weights=False)[0], theirs(x, x, x, need_weights=False)[0]
    assert out.is_contiguous()
    assert ref.is_contiguous() == (not batch_first)
    torch.testing.assert_close(out.view(-1, E), ref.reshape(-1, E))


def test_nested_tensor_input_takes_torch_fast_path():
    ours, theirs = _pair(batch_first=True)
    ours.eval(), theirs.eval()
    nested = torch.nested.nested_tensor([torch.randn(3, E), torch.randn(5, E)])
    with torch.no_grad():
        out = ours(nested, nested, nested, need_weights=False)[0]
        ref = theirs(nested, nested, nested, need_weights=False)[0]
    assert out.is_nested
    torch.testing.assert_close(out.to_padded_tensor(0.0), ref.to_padded_tensor(0.0))


@pytest.mark.compile
def test_compile_fullgraph():
    ours, theirs = _pair(batch_first=True)
    x = torch.randn(N, L, E)
    compiled = torch.compile(ours, fullgraph=True, dynamic=False)
    out = compiled(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(out, theirs(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("batch_first,unbatched", [(False, False), (True, False), (False, True)])
def test_self_attention_projects_query_key_and_value_in_one_gemm(batch_first, unbatched):
    # As torch's in_projection_packed does, in every layout: one in-projection and the output projection.
    ours, theirs = _pair(batch_first=batch_first)
    x = _inputs(batch_first, unbatched=unbatched)[0]

    class CountLinear(torch.overrides.TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            CountLinear.calls += func is torch.nn.functional.linear
            return func(*args, **(kwargs or {}))

    with CountLinear():
        out, _ = ours(x, x, x, need_weights=False)
    assert CountLinear.calls == 2
    torch.testing.assert_close(out, theirs(x, x, x, need_weights=False)[0])
