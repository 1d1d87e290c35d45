"""ONNX export of seqops modules (seqops/ops/onnx_export.py): a model exports with either exporter, as its
torch.nn original does, and ONNX Runtime computes what seqops computes eagerly."""

import io
import logging
import warnings

import pytest
import torch
from torch import nn

import seqops

ort = pytest.importorskip("onnxruntime")  # in requirements.txt; a GPU image without it skips
pytest.importorskip("onnx")

pytestmark = pytest.mark.filterwarnings("ignore")


class _FirstOutput(nn.Module):
    """The module's output tensor (outputs of modules that return a tuple: the first)."""

    def __init__(self, module, **call_kwargs):
        super().__init__()
        self.module, self.call_kwargs = module, call_kwargs

    def forward(self, *args):
        out = self.module(*args, **self.call_kwargs)
        return out[0] if isinstance(out, tuple) else out


MODELS = {
    "LSTM, 2 layers, bidirectional": (lambda: seqops.LSTM(5, 7, num_layers=2, bidirectional=True),
                                      lambda: (torch.randn(6, 4, 5),)),
    "GRU, batch_first, with h0": (lambda: seqops.GRU(5, 7, batch_first=True),
                                  lambda: (torch.randn(4, 6, 5), torch.randn(1, 4, 7))),
    "RNN relu, bidirectional": (lambda: seqops.RNN(5, 7, nonlinearity="relu", bidirectional=True),
                                lambda: (torch.randn(6, 4, 5),)),
    "RNN without bias": (lambda: seqops.RNN(5, 7, bias=False), lambda: (torch.randn(6, 4, 5),)),
    "LSTMCell": (lambda: seqops.LSTMCell(5, 7), lambda: (torch.randn(4, 5),)),
    "GRUCell": (lambda: seqops.GRUCell(5, 7), lambda: (torch.randn(4, 5), torch.randn(4, 7))),
    "RNNCell": (lambda: seqops.RNNCell(5, 7), lambda: (torch.randn(4, 5),)),
    "MultiheadAttention": (lambda: seqops.MultiheadAttention(8, 2, batch_first=True),
                           lambda: (torch.randn(2, 6, 8),) * 3),
}


def _export_and_run(model, inputs, dynamo):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the dynamo exporter's progress and torchvision notes
        try:
            torch.onnx.export(model, inputs, buffer, dynamo=dynamo)
        finally:
            logging.disable(logging.NOTSET)
    session = ort.InferenceSession(buffer.getvalue())
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def _cases():
    for dynamo in (False, True):
        for name in MODELS:
            yield pytest.param(name, dynamo, id=f"{name}-{'dynamo' if dynamo else 'torchscript'}")


@pytest.mark.parametrize("name,dynamo", list(_cases()))
def test_exported_model_computes_what_seqops_computes(name, dynamo):
    make, make_inputs = MODELS[name]
    torch.manual_seed(0)
    kwargs = {"need_weights": False} if name == "MultiheadAttention" else {}
    model = _FirstOutput(make(), **kwargs).eval()
    inputs = make_inputs()
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(_export_and_run(model, inputs, dynamo), expected)


def test_a_converted_model_exports_like_its_original():
    torch.manual_seed(0)
    original = nn.Sequential(nn.LSTM(5, 7, num_layers=2), _Take(0), nn.Linear(7, 3)).eval()
    x = torch.randn(6, 4, 5)
    from_original = _export_and_run(original, (x,), dynamo=False)
    converted = seqops.convert(original)
    assert isinstance(converted[0], seqops.LSTM)
    torch.testing.assert_close(_export_and_run(converted, (x,), dynamo=False), from_original)


class _Take(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, out):
        return out[self.index]


def test_packed_input_refuses_to_export_with_a_clear_error():
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = seqops.LSTM(5, 7)

        def forward(self, x, lengths):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0])[0]

    with pytest.raises(Exception, match="packed sequences"):
        torch.onnx.export(Packed().eval(), (torch.randn(6, 3, 5), torch.tensor([6, 4, 2])), io.BytesIO(),
                          dynamo=False)
