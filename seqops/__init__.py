"""seqops: fused sequence-model kernels for PyTorch, drop-in for torch.nn / torch.nn.functional."""

from seqops import _extension

_BUILD = _extension.load()

from seqops import reference  # noqa: E402
from seqops.ops.gru_cell import gru_cell  # noqa: E402
from seqops.ops.lstm_cell import lstm_cell  # noqa: E402
from seqops.ops.rnn_cell import rnn_relu_cell, rnn_tanh_cell  # noqa: E402
from seqops.ops.rnn_layer import rnn_layer  # noqa: E402

__version__ = "0.1.0"


def build_summary():
    """One line: how this seqops was built, for bug reports and benchmark records."""
    return (
        f"seqops {__version__}: torch {_BUILD.TORCH_VERSION}, CUDA kernels {'yes' if _BUILD.WITH_CUDA else 'no'}"
        f" (archs {_BUILD.CUDA_ARCH_LIST}), CPU ISA {_BUILD.CPU_ISA}"
    )
