"""Drop-in ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` running seqops' fused layer op.

Each class subclasses ``torch.nn.RNNBase`` (not ``nn.LSTM`` & co.) and so inherits torch.nn's constructor
checks, parameter registration and names, ``reset_parameters``, ``state_dict``, ``_flat_weights``
bookkeeping, ``all_weights``, ``extra_repr`` and pickling; only ``forward`` and ``flatten_parameters``
are overridden. Not inheriting from ``nn.LSTM``/``nn.GRU``/``nn.RNN`` is deliberate: TorchDynamo refuses
to trace any instance of those three classes (a graph break, an error under ``fullgraph=True``), which
would defeat the point of a compilable RNN. ``isinstance(m, nn.RNNBase)`` holds.

Under ``torch.autocast`` the modules compute in the autocast dtype on every device and return torch.nn's
result dtypes, which on the CPU are float32 for GRU and for packed or projected LSTM with float32 states
(see _autocast.py).
"""

import torch
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from seqops.nn._autocast import autocast_dtype, autocast_off, cast, result_dtype
from seqops.nn._rnn_common_call import common_call_weights, forward_common
from seqops.nn._shared_hooks import AdoptsSharedBackwardHooks
from seqops.ops.rnn_layer import _onednn_lstm_applies, onednn_takes, rnn_layer
from seqops.ops.rnn_stack import packed_batch, rnn_stack, weights_from_flat

__all__ = ["LSTM", "GRU", "RNN"]


class _SeqopsRNNBase(AdoptsSharedBackwardHooks, nn.RNNBase):
    """Shared forward: torch.nn's argument checks, then the common stack over the fused layer op."""

    # torch.nn's own wording per class, so errors read the same as with the module being replaced.
    _input_dim_error = "{name}: Expected input to be 2D or 3D, got {dim}D instead"

    def flatten_parameters(self) -> None:
        """Accepted for compatibility and does nothing.

        cuDNN wants all weights in one buffer; seqops' kernels read each weight tensor where it is, so there
        is nothing to gain (and no cuDNN call to make).
        """

    def forward(self, input, hx=None):
        flat = common_call_weights(self, input, hx)
        if flat is not None:
            if self._onednn_lstm_stack_applies(input, hx, flat):
                return self._onednn_lstm_stack(input, hx, flat)
            return forward_common(self, input, hx, flat)
        device_type = (input.data if isinstance(input, PackedSequence) else input).device.type
        dtype = autocast_dtype(device_type)
        if dtype is None:
            return self._forward(input, hx, dtype, device_type)
        h_dtype, c_dtype = (result_dtype(device_type, dtype, state) for state in self._carried_dtypes(input, hx))
        dtype = torch.promote_types(h_dtype, c_dtype)  # computed in the widest result dtype (see _autocast.py)
        input, hx = cast(input, dtype), cast(hx, dtype)
        out, h_n = self._forward(input, hx, dtype, device_type)
        if self.mode == "LSTM":
            return cast(out, h_dtype), (cast(h_n[0], h_dtype), cast(h_n[1], c_dtype))
        return cast(out, h_dtype), cast(h_n, h_dtype)

    def _carried_dtypes(self, input, hx):
        """(for the output and h_n, for c_n): the dtypes of the states that decide torch's CPU result dtypes
        under autocast, None where they do not (see _autocast.py). torch's CPU GRU, and its LSTM on packed
        input, with a projection or on an input oneDNN does not take, are composites: the state meets the
        autocast GEMMs in pointwise math. A projected LSTM's h is a GEMM's output again; its c stays promoted."""
        data = input.data if isinstance(input, PackedSequence) else input
        if self.mode == "GRU":
            return (hx.dtype if isinstance(hx, torch.Tensor) else data.dtype), None
        if self.mode != "LSTM":
            return None, None
        if not (isinstance(input, PackedSequence) or self.proj_size > 0) and onednn_takes(data):
            return None, None
        c0 = hx[1] if isinstance(hx, (tuple, list)) and len(hx) == 2 else None
        c_dtype = c0.dtype if isinstance(c0, torch.Tensor) else data.dtype
        return (None if self.proj_size > 0 else c_dtype), c_dtype

    def _forward(self, input, hx, dtype, device_type):
        self._check_args(input, hx)  # also brings _flat_weights up to date, as torch.nn's forward does
        if dtype is None and self._onednn_lstm_stack_applies(input, hx, self._flat_weights):
            return self._onednn_lstm_stack(input, hx, self._flat_weights)
        weights = weights_from_flat(self)
        if dtype is not None:
            weights = [cast(w, dtype) for w in weights]
        with autocast_off(device_type, dtype):
            return rnn_stack(
                self.mode,
                input,
                hx,
                weights,
                num_layers=self.num_layers,
                bidirectional=self.bidirectional,
                batch_first=self.batch_first,
                dropout=self.dropout,
                training=self.training,
                layer=rnn_layer,
            )

    # ---- LSTM inference on the CPU: the whole stack in one call of oneDNN's fused LSTM ----
    # rnn_layer already sends each layer there (see CPU_LSTM_INFERENCE); calling it once for the whole stack,
    # as torch.nn.LSTM does, also drops seqops' per-layer Python (~80 us a call, which step-by-step decoding
    # pays every step).

    def _onednn_lstm_stack_applies(self, input, hx, flat):
        if self.mode != "LSTM" or isinstance(input, PackedSequence) or self.proj_size > 0:
            return False
        if self.training and self.dropout > 0:
            return False  # seqops' dropout between layers, the same for every mode
        states = tuple(hx) if hx is not None and len(hx) == 2 else (None, None)
        return _onednn_lstm_applies(input, None, (input, *states, *flat), None, self.batch_first)

    def _onednn_lstm_stack(self, input, hx, flat):
        if hx is None:
            batch = input.size(0 if self.batch_first else 1)
            zeros = input.new_zeros(self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
            hx = (zeros, zeros)
        out, h_n, c_n = _VF.lstm(input, tuple(hx), flat, self.bias, self.num_layers, self.dropout,
                                 self.training, self.bidirectional, self.batch_first)
        return out, (h_n, c_n)

    # ---- argument checks: same order, error types and messages as torch.nn's forward ----

    def _check_args(self, input, hx):
        self._update_flat_weights()  # check_input reads the dtype of _flat_weights[0]
        if isinstance(input, PackedSequence):
            data, batch_sizes = input.data, input.batch_sizes
        else:
            data, batch_sizes = input, None
            if input.dim() not in (2, 3):
                raise ValueError(self._input_dim_error.format(name=self.mode.split("_")[0], dim=input.dim()))
            if input.dim() == 2:  # unbatched: the batch dim is 1 (or 0 with batch_first)
                data = input.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = self._batched_hx(hx, batched=input.dim() == 3)
        if hx is None:
            self.check_input(data, batch_sizes)
        else:
            if batch_sizes is not None and torch.compiler.is_compiling():
                # torch's check reads int(batch_sizes[0]), data that fullgraph cannot guard on: give it the batch
                # read from shapes (see packed_batch).
                batch_sizes = [packed_batch(input, self._states(hx)[0].size(1))]
            self.check_forward_args(data, hx, batch_sizes)
        if batch_sizes is None and data.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        self._check_devices_and_dtypes(data, hx)

    def _batched_hx(self, hx, batched):
        if batched and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if not batched and hx.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
        return hx if batched else hx.unsqueeze(1)

    def _states(self, hx):
        return [] if hx is None else [hx]

    def _check_devices_and_dtypes(self, data, hx):
        weight = self._flat_weights[0]
        if data.device != weight.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{data.device} and parameter tensor at {weight.device}"
            )
        for state in self._states(hx):
            if state.device != data.device:
                raise RuntimeError(
                    "Input and hidden tensors are not at the same device, found input tensor at "
                    f"{data.device} and hidden tensor at {state.device}"
                )
            if state.dtype != data.dtype:
                raise RuntimeError(
                    "Input and hidden tensors are not the same dtype, found input tensor with "
                    f"{data.dtype} and hidden tensor with {state.dtype}"
                )


class LSTM(_SeqopsRNNBase):
    """``torch.nn.LSTM`` with the same constructor, parameters, state_dict and semantics.

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
         bidirectional=False, proj_size=0, device=None, dtype=None)
    """

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's helpers, which nn.RNNBase lacks; the same code path as nn.LSTM's for messages.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def _batched_hx(self, hx, batched):
        h, c = hx[0], hx[1]
        if batched and (h.dim() != 3 or c.dim() != 3):
            raise RuntimeError(
                "For batched 3-D input, hx and cx should also be 3-D but got "
                f"({h.dim()}-D, {c.dim()}-D) tensors"
            )
        if not batched and (h.dim() != 2 or c.dim() != 2):
            raise RuntimeError(
                "For unbatched 2-D input, hx and cx should also be 2-D but got "
                f"({h.dim()}-D, {c.dim()}-D) tensors"
            )
        return (h, c) if batched else (h.unsqueeze(1), c.unsqueeze(1))

    def _states(self, hx):
        return [] if hx is None else [hx[0], hx[1]]


class GRU(_SeqopsRNNBase):
    """``torch.nn.GRU`` with the same constructor, parameters, state_dict and semantics.

    GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None)
    """

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class RNN(_SeqopsRNNBase):
    """``torch.nn.RNN`` with the same constructor, parameters, state_dict and semantics.

    RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
        dropout=0.0, bidirectional=False, device=None, dtype=None)
    """

    _input_dim_error = "{name}: Expected input to be 2D or 3D, got {dim}D tensor instead"

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        # Like torch.nn.RNN, nonlinearity is the 4th positional argument but not one of RNNBase's.
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)
