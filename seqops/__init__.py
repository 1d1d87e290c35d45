"""seqops: fused sequence-model kernels for PyTorch, drop-in for torch.nn / torch.nn.functional."""

import importlib

from seqops import _after_import, _extension

_BUILD = _extension.load()

from seqops import reference  # noqa: E402
from seqops.convert import convert  # noqa: E402
from seqops.nn.cells import GRUCell, LSTMCell, RNNCell  # noqa: E402
from seqops.nn.multihead_attention import MultiheadAttention  # noqa: E402
from seqops.nn.rnn import GRU, LSTM, RNN  # noqa: E402
from seqops.ops.attention import attention, attention_with_lse  # noqa: E402
from seqops.ops.attention_varlen import attention_varlen, attention_varlen_with_lse  # noqa: E402
from seqops.ops.gru_cell import gru_cell  # noqa: E402
from seqops.ops.lstm_cell import lstm_cell  # noqa: E402
from seqops.ops.rnn_cell import rnn_relu_cell, rnn_tanh_cell  # noqa: E402
from seqops.ops.rnn_layer import rnn_layer  # noqa: E402

# FlopCounterMode's formulas for seqops' ops, registered once torch.utils.flop_counter is imported: importing it
# here would load Triton with it (~85 ms, ~75 MiB) in every program.
_after_import.after_import("torch.utils.flop_counter", lambda: importlib.import_module("seqops.ops.flops"))

__version__ = "0.1.0"

__all__ = [
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "MultiheadAttention",
    "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell", "rnn_layer",
    "attention", "attention_with_lse", "attention_varlen", "attention_varlen_with_lse",
    "convert", "reference", "build_summary",
]


def build_summary():
    """One line: how this seqops was built, for bug reports and benchmark records."""
    return (
        f"seqops {__version__}: torch {_BUILD.TORCH_VERSION}, CUDA kernels {'yes' if _BUILD.WITH_CUDA else 'no'}"
        f" (archs {_BUILD.CUDA_ARCH_LIST}), CPU ISA {_BUILD.CPU_ISA}"
    )
