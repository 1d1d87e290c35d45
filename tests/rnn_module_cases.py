"""Shared helpers of the RNN module tests: option combinations, twin construction, inputs, and a runner that
returns outputs, final states and every gradient of a module so that two modules can be compared."""

import itertools

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import seqops

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")

# Small odd sizes: every dimension differs, so a swapped axis cannot go unnoticed.
T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [3, 5, 1]  # unsorted, with a length-1 sequence, for packed input


def module_pair(mode, *, seed=0, **options):
    """(torch.nn module, seqops module) with the same configuration and the same weights."""
    kwargs = dict(options)
    classes = {"LSTM": (nn.LSTM, seqops.LSTM), "GRU": (nn.GRU, seqops.GRU)}
    if mode.startswith("RNN"):
        kwargs["nonlinearity"] = "tanh" if mode == "RNN_TANH" else "relu"
        classes[mode] = (nn.RNN, seqops.RNN)
    torch_cls, seqops_cls = classes[mode]
    torch.manual_seed(seed)
    theirs = torch_cls(I, H, **kwargs)
    ours = seqops_cls(I, H, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def pairwise_cases(base, extra):
    """Every combination of the ``base`` options, each completed by the ``extra`` option values that cover
    the most not-yet-covered value pairs (over all options); rows are added until every pair is covered.

    base, extra: dicts name -> list of values. Returns a list of dicts.
    """
    names = list(base) + list(extra)
    values = {**base, **extra}
    uncovered = {
        ((a, va), (b, vb))
        for a, b in itertools.combinations(names, 2)
        for va in values[a]
        for vb in values[b]
    }

    def pairs(case):
        return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(names, 2)}

    extra_choices = [dict(zip(extra, combo)) for combo in itertools.product(*extra.values())]
    cases = []
    base_rows = [dict(zip(base, combo)) for combo in itertools.product(*base.values())]
    for row in itertools.chain(base_rows, itertools.cycle(base_rows)):
        if cases and len(cases) >= len(base_rows) and not uncovered:
            break
        best = max(extra_choices, key=lambda choice: len(pairs({**row, **choice}) & uncovered))
        case = {**row, **best}
        uncovered -= pairs(case)
        cases.append(case)
    return cases


def make_inputs(mode, case, dtype, device="cpu"):
    """Random input and (optional) initial state for ``case``; returns (input, hx, leaves).

    leaves are the tensors gradients are taken with respect to (the padded input for packed input)."""
    num_directions = 2 if case["bidirectional"] else 1
    layers = case["num_layers"] * num_directions
    out_size = P if case.get("proj_size", 0) else H
    layout, batch_first = case["layout"], case["batch_first"]
    kw = dict(dtype=dtype, device=device)

    if layout == "unbatched":
        x = torch.randn(I, T, **kw).t() if case.get("noncontiguous") else torch.randn(T, I, **kw)
    elif case.get("noncontiguous"):
        # Same logical shape, strided storage: a transposed view of the other layout.
        x = torch.randn(*((T, B) if batch_first else (B, T)), I, **kw).transpose(0, 1)
    else:
        x = torch.randn(B, T, I, **kw) if batch_first else torch.randn(T, B, I, **kw)
    x.requires_grad_(True)
    leaves = [x]

    hx = None
    if case["with_hx"]:
        state_batch = () if layout == "unbatched" else (B,)
        h0 = torch.randn(layers, *state_batch, out_size, **kw).requires_grad_(True)
        leaves.append(h0)
        hx = h0
        if mode == "LSTM":
            c0 = torch.randn(layers, *state_batch, H, **kw).requires_grad_(True)
            leaves.append(c0)
            hx = (h0, c0)

    inp = x
    if layout == "packed":
        inp = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first, enforce_sorted=False)
    return inp, hx, leaves


def run(module, mode, inp, hx, leaves, grad_seed=1, upstream_dtype=None):
    """Forward + backward with fixed random upstream gradients (rounded through ``upstream_dtype`` if given, so
    a float64 reference can see the upstream gradients a low-precision run sees).

    Returns a dict name -> tensor: output, h_n, (c_n), and the gradient of every leaf and parameter."""
    out, state = module(inp, hx)
    states = list(state) if mode == "LSTM" else [state]
    out_data = out.data if isinstance(out, PackedSequence) else out
    results = {"output": out_data}
    results.update({f"state{k}": s for k, s in enumerate(states)})
    if isinstance(out, PackedSequence):
        results["batch_sizes"] = out.batch_sizes
        results["sorted_indices"] = out.sorted_indices
        results["unsorted_indices"] = out.unsorted_indices

    gen = torch.Generator().manual_seed(grad_seed)
    tensors = [out_data, *states]
    upstream = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(upstream_dtype or t.dtype).to(t)
                for t in tensors]
    params = dict(module.named_parameters())
    wrt = list(leaves) + list(params.values())
    # retain_graph: the packing of a shared PackedSequence input is part of the graph and is reused.
    grads = torch.autograd.grad(tensors, wrt, upstream, allow_unused=True, retain_graph=True)
    for k in range(len(leaves)):
        results[f"grad_leaf{k}"] = grads[k]
    for name, g in zip(params, grads[len(leaves) :]):
        results[f"grad_{name}"] = g
    return results


def assert_same_results(actual, expected, **tol):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] is not None and expected[key] is not None, f"{key}: missing gradient"
        torch.testing.assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}", **tol)
