"""torch.func transforms and forward-mode AD over seqops, against torch.nn / F in float64.

torch.library's generated autograd cannot serve torch.func.grad/vjp/jacrev/hessian (pytorch/pytorch#170834)
nor forward mode; there the ops run their pure-PyTorch twins (seqops.ops._autograd.call_op). vmap alone keeps
the op."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import func
from torch.nn.utils.rnn import pack_padded_sequence

import seqops

D = torch.float64

MODULES = [
    ("LSTMCell", {}),
    ("GRUCell", {}),
    ("RNNCell", {"nonlinearity": "relu"}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 2}),
    ("GRU", {"batch_first": True}),
    ("RNN", {"nonlinearity": "tanh", "num_layers": 2}),
]


def _twins(name, kwargs):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(3, 4, **kwargs).to(D)
    ours = getattr(seqops, name)(3, 4, **kwargs).to(D)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, dtype=D) if name.endswith("Cell") else torch.randn(5, 2, 3, dtype=D)
    return theirs, ours, x


def _loss_of(module):
    def loss(x):
        out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        return out.sin().sum()  # not linear in the output: the hessian has something to see

    return loss


TRANSFORMS = {
    "grad": lambda f, x: func.grad(f)(x),
    "vjp": lambda f, x: func.vjp(f, x)[1](torch.tensor(1.5, dtype=D)),
    "jacrev": lambda f, x: func.jacrev(f)(x),
    "jacfwd": lambda f, x: func.jacfwd(f)(x),
    "jvp": lambda f, x: func.jvp(f, (x,), (torch.ones_like(x),)),
    "hessian": lambda f, x: func.hessian(f)(x),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
@pytest.mark.parametrize("name, kwargs", MODULES, ids=[m[0] for m in MODULES])
def test_transform_of_a_module_matches_torch_nn(name, kwargs, transform):
    theirs, ours, x = _twins(name, kwargs)
    apply = TRANSFORMS[transform]
    torch.testing.assert_close(apply(_loss_of(ours), x), apply(_loss_of(theirs), x))


@pytest.mark.parametrize("name, kwargs", MODULES, ids=[m[0] for m in MODULES])
def test_grad_over_the_weights_through_functional_call(name, kwargs):
    theirs, ours, x = _twins(name, kwargs)
    params = {k: v.detach() for k, v in theirs.named_parameters()}

    def grads(module):
        return func.grad(lambda p: _loss_of(lambda x: func.functional_call(module, p, (x,)))(x))(params)

    torch.testing.assert_close(grads(ours), grads(theirs))


@pytest.mark.parametrize("name, kwargs", MODULES, ids=[m[0] for m in MODULES])
def test_per_sample_grads_vmap_of_grad(name, kwargs):
    # torch.nn's RNNs cannot be vmapped at all: the oracle is a loop over torch.nn
    theirs, ours, x = _twins(name, kwargs)
    samples = torch.randn(3, *x.shape, dtype=D)
    got = func.vmap(func.grad(_loss_of(ours)))(samples)
    want = torch.stack([func.grad(_loss_of(theirs))(sample) for sample in samples])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name, kwargs", MODULES, ids=[m[0] for m in MODULES])
def test_forward_mode_ad_with_dual_tensors(name, kwargs):
    theirs, ours, x = _twins(name, kwargs)
    tangent = torch.randn_like(x)
    # a dual input that does not require grad: its tangent must reach the output, not vanish
    with fwAD.dual_level():
        want = fwAD.unpack_dual(_loss_of(theirs)(fwAD.make_dual(x, tangent))).tangent
        got = fwAD.unpack_dual(_loss_of(ours)(fwAD.make_dual(x, tangent))).tangent
        # plain tensors inside a dual_level still take the op
        torch.testing.assert_close(_loss_of(ours)(x), _loss_of(theirs)(x))
    assert got is not None
    torch.testing.assert_close(got, want)


def test_forward_mode_ad_on_a_weight_tangent():
    x, h, c = torch.randn(2, 3, dtype=D), torch.randn(2, 4, dtype=D), torch.randn(2, 4, dtype=D)
    w_ih, w_hh = torch.randn(16, 3, dtype=D), torch.randn(16, 4, dtype=D)
    tangent = torch.randn_like(w_hh)
    with fwAD.dual_level():
        ours = seqops.lstm_cell(x, (h, c), w_ih, fwAD.make_dual(w_hh, tangent))
        theirs = torch.lstm_cell(x, (h, c), w_ih, fwAD.make_dual(w_hh, tangent))
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(fwAD.unpack_dual(a).tangent, fwAD.unpack_dual(b).tangent)


def test_grad_over_weights_with_a_packed_input():
    # torch.nn fails here (pack_padded_sequence's batch_sizes under func.grad); the oracle is autograd
    torch.manual_seed(0)
    lstm = seqops.LSTM(3, 4, num_layers=2, bidirectional=True).to(D)
    packed = pack_padded_sequence(torch.randn(5, 3, 3, dtype=D), torch.tensor([5, 2, 3]), enforce_sorted=False)
    params = {k: v.detach() for k, v in lstm.named_parameters()}

    def loss(p):
        return func.functional_call(lstm, p, (packed,))[0].data.sin().sum()

    got = func.grad(loss)(params)
    lstm.zero_grad()
    loss(dict(lstm.named_parameters())).backward()
    torch.testing.assert_close(got, {k: p.grad for k, p in lstm.named_parameters()})


ATTENTION_CASES = {
    "float_mask": {"attn_mask": "float"},
    "causal": {"is_causal": True},
    "value_dim_differs": {"value_dim": 6},
}


def _math_attention(q, k, v, attn_mask=None, is_causal=False):
    # SDPA's definition written out: F.scaled_dot_product_attention itself has no forward-mode AD in float64
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if is_causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
    if attn_mask is not None:
        scores = scores + attn_mask
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "hessian"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_transform_of_attention_matches_the_math(case, transform):
    torch.manual_seed(0)
    spec = dict(ATTENTION_CASES[case])
    q = torch.randn(1, 2, 3, 4, dtype=D)
    k = torch.randn(1, 2, 5, 4, dtype=D)
    v = torch.randn(1, 2, 5, spec.pop("value_dim", 4), dtype=D)
    if spec.get("attn_mask") == "float":
        spec["attn_mask"] = torch.randn(3, 5, dtype=D)

    def loss_of(attention):
        return lambda q: attention(q, k, v, **spec).sin().sum()

    apply = TRANSFORMS[transform]
    torch.testing.assert_close(apply(loss_of(seqops.attention), q), apply(loss_of(_math_attention), q))


def test_grad_of_attention_with_lse_and_of_the_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4, dtype=D) for _ in range(3))
    mask = torch.randn(1, 1, 3, 3, dtype=D)

    def ours(q, mask):
        out, lse = seqops.attention_with_lse(q, k, v, attn_mask=mask)
        return out.sin().sum() + lse.cos().sum()

    def theirs(q, mask):
        scores = q @ k.transpose(-2, -1) / 2.0 + mask
        return (scores.softmax(-1) @ v).sin().sum() + scores.logsumexp(-1).cos().sum()

    torch.testing.assert_close(func.grad(ours, argnums=(0, 1))(q, mask), func.grad(theirs, argnums=(0, 1))(q, mask))


def test_grad_of_varlen_attention_matches_sdpa_per_sequence():
    torch.manual_seed(0)
    lengths = [3, 1, 4]
    cu = torch.tensor([0, 3, 4, 8])
    q, k, v = (torch.randn(8, 2, 4, dtype=D) for _ in range(3))

    def ours(q):
        return seqops.attention_varlen(q, k, v, cu, cu, is_causal=True).sin().sum()

    def theirs(q):
        total, start = 0, 0
        for n in lengths:
            rows = slice(start, start + n)
            heads_first = [t[rows].transpose(0, 1) for t in (q, k, v)]
            total = total + F.scaled_dot_product_attention(*heads_first, is_causal=True).sin().sum()
            start += n
        return total

    torch.testing.assert_close(func.jacrev(ours)(q), func.jacrev(theirs)(q))


def test_compiled_grad_transform_fullgraph():
    # Dynamo cannot read the transform stack: inside a compiled region any transform takes the twin
    theirs, ours, x = _twins("GRUCell", {})
    got = torch.compile(func.grad(_loss_of(ours)), fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, func.grad(_loss_of(theirs))(x))
