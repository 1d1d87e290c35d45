"""torch.export of seqops' modules and attention with dynamic batch and sequence dims: the exported program
runs at other sizes with eager's numbers, and survives torch.export.save / load."""

import io

import pytest
import torch
from torch.export import Dim

import seqops

T, B, I, H = 5, 3, 4, 6

# torch.nn's RNNs say the same: their forward refreshes _flat_weights, which export sees as an assignment.
pytestmark = pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights.* were assigned during export")


class Call(torch.nn.Module):
    """Wraps a function (or a module whose outputs are tuples) for export; returns a flat tuple of tensors."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return tuple(torch.utils._pytree.tree_leaves(self.fn(*args)))


def _export_and_compare(fn, example, other, dynamic_shapes):
    program = torch.export.export(Call(fn), example, dynamic_shapes=(dynamic_shapes,))  # forward(*args)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    for args in (example, other):
        want = Call(fn)(*args)
        for got in (program.module()(*args), loaded.module()(*args)):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name,options", [("LSTM", {"num_layers": 2, "bidirectional": True}),
                                          ("LSTM", {"proj_size": 3, "batch_first": True}),
                                          ("GRU", {}), ("RNN", {"nonlinearity": "relu"})])
def test_rnn_layers_with_dynamic_batch_and_length(name, options):
    torch.manual_seed(0)
    module = getattr(seqops, name)(I, H, **options)
    batch_first = options.get("batch_first", False)

    def inputs(length, batch):
        return (torch.randn(batch, length, I) if batch_first else torch.randn(length, batch, I),)

    dims = {0: Dim("batch"), 1: Dim("length")} if batch_first else {0: Dim("length"), 1: Dim("batch")}
    _export_and_compare(module, inputs(T, B), inputs(T + 4, B + 2), ({**dims},))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_with_dynamic_batch(name):
    torch.manual_seed(0)
    cell = getattr(seqops, name)(I, H)
    _export_and_compare(cell, (torch.randn(B, I),), (torch.randn(B + 3, I),), ({0: Dim("batch")},))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_with_dynamic_length_on_either_side_of_the_head_dim(dtype, is_causal):
    # Lengths below and above the head dim (8): the export must not guard on their order.
    def attend(q, k, v):
        return seqops.attention(q, k, v, is_causal=is_causal)

    def qkv(length):
        return tuple(torch.randn(2, 2, length, 8, dtype=dtype) for _ in range(3))

    length = Dim("length", min=2, max=64)
    _export_and_compare(attend, qkv(5), qkv(20), tuple({2: length} for _ in range(3)))


def test_multihead_attention_with_dynamic_batch_and_length():
    torch.manual_seed(0)
    mha = seqops.MultiheadAttention(8, 2, batch_first=True).eval()

    def attend(x, pad):
        return mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]

    def inputs(batch, length):
        pad = torch.zeros(batch, length, dtype=torch.bool)
        pad[0, -1] = True
        return torch.randn(batch, length, 8), pad

    batch, length = Dim("batch", min=2, max=32), Dim("length", min=2, max=64)
    dims = ({0: batch, 1: length}, {0: batch, 1: length})
    _export_and_compare(attend, inputs(2, 5), inputs(4, 20), dims)
