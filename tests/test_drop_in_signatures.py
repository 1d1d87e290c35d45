"""What tools read off a drop-in (IDEs, docs, hint-driven wrappers): torch.nn's signatures and type hints."""

import inspect
import typing

import pytest
from torch import nn

import seqops


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN", "MultiheadAttention"])
def test_signatures_and_type_hints_are_torch_nn_s(name):
    theirs, ours = getattr(nn, name), getattr(seqops, name)
    for method in ("__init__", "forward"):
        assert inspect.signature(getattr(ours, method)) == inspect.signature(getattr(theirs, method))
    assert typing.get_type_hints(ours.forward) == typing.get_type_hints(theirs.forward)
