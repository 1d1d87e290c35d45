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


def test_bad_inputs_raise_like_torch():
    ours, _ = _pair()
    x = torch.randn(L, N, E)
    with pytest.raises(AssertionError, match="embedding dimension"):
        ours(torch.randn(L, N, E + 1), x, x, need_weights=False)
    with pytest.raises(RuntimeError, match="attn_mask"):
        ours(x, x, x, attn_mask=torch.zeros(L + 1, L), need_weights=False)
    with pytest.raises(AssertionError, match="key_padding_mask"):
        ours(x, x, x, key_padding_mask=torch.zeros(N, L + 2, dtype=torch.bool), need_weights=False)
    with pytest.raises(AssertionError, match="only bool and floating"):
        ours(x, x, x, attn_mask=torch.zeros(L, L, dtype=torch.int64), need_weights=False)
    with pytest.raises(AssertionError, match="3-D"):
        ours(x, x[0], x, need_weights=False)


@pytest.mark.compile
def test_compile_fullgraph():
    ours, theirs = _pair(batch_first=True)
    x = torch.randn(N, L, E)
    compiled = torch.compile(ours, fullgraph=True, dynamic=False)
    out = compiled(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(out, theirs(x, x, x, need_weights=False)[0])
