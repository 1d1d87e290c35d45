"""The drop-in RNN modules' lean path for the common call.

A module call in plain eager mode, autocast off, on a batched tensor of the parameters' dtype and device (CPU:
float32/float64) with no initial state or well-formed ones, needs none of the full path's work: torch.nn's
argument checks would pass, the autocast casts and the per-layer routing are no-ops, the tracer and transform
guards of call_op are false. That work cost more than the op itself on short calls: step-by-step decoding at
T=1 (2-core Zen 4, no grad) took 52 us a call of a vanilla RNN at B=1, H=64 against torch.nn's 29 us, of which
the layer op was 18; GRU at B=8, H=256, 198 us against 148, the op 133.

Every other call, valid or not, takes the full path, whose checks and errors are torch.nn's.
"""

import torch

from seqops.ops._autograd import plain_tensor, plain_tensor_call
from seqops.ops.rnn_layer import eager_rnn_layer
from seqops.ops.rnn_stack import run_layers, state_sizes, time_major_to_batch_first, weights_from_flat

__all__ = ["common_call_weights", "forward_common"]

# CPU dtypes the layer ops run as they are; fp16/bf16 go through float32 on the full path (rnn_layer._in_fp32).
_CPU_DTYPES = (torch.float32, torch.float64)


def _registered_weights(module):
    """The weights torch.nn's _update_flat_weights would list, read from the module's registered parameters
    (a dict lookup, not getattr and a weakref per weight: 0.7 us against 5.7 for one layer); None where one is
    not a registered tensor (a parametrization or weight norm holds it elsewhere)."""
    params = module._parameters
    flat = [params.get(name) for name in module._flat_weights_names]
    return None if any(w is None for w in flat) else flat


def _state_fits(state, input, shape):
    return plain_tensor(state) and state.shape == shape and state.dtype == input.dtype and (
        state.device == input.device)


def _states_fit(module, input, hx):
    if hx is None:
        return True
    batch = input.size(0 if module.batch_first else 1)
    states = module.num_layers * (2 if module.bidirectional else 1)
    state_size = module.proj_size if module.proj_size > 0 else module.hidden_size
    if module.mode != "LSTM":
        return _state_fits(hx, input, (states, batch, state_size))
    return (type(hx) in (tuple, list) and len(hx) == 2 and _state_fits(hx[0], input, (states, batch, state_size))
            and _state_fits(hx[1], input, (states, batch, module.hidden_size)))


def common_call_weights(module, input, hx):
    """The module's flat weights if this call is the common one the lean path serves, else None."""
    if not plain_tensor_call(input) or input.dim() != 3 or input.numel() == 0:
        return None
    if (input.is_cpu and input.dtype not in _CPU_DTYPES) or input.size(2) != module.input_size:
        return None
    flat = _registered_weights(module)
    if flat is None or flat[0].dtype != input.dtype or flat[0].device != input.device:
        return None
    if flat[1].dim() != 2 or flat[1].size(1) != (module.proj_size or module.hidden_size):
        return None  # weights that disagree with the module's sizes: the full path's checks and errors
    return flat if _states_fit(module, input, hx) else None


def forward_common(module, input, hx, flat):
    """The module's forward for a call common_call_weights accepted (flat: its result), as the full path computes
    it: the same layer ops, states and outputs."""
    x = input.transpose(0, 1) if module.batch_first else input
    h0, c0 = (hx if module.mode == "LSTM" else (hx, None)) if hx is not None else (None, None)
    num_directions = 2 if module.bidirectional else 1
    weights = weights_from_flat(module, flat)
    _, state_size = state_sizes(module.mode, weights)  # from the weights, as on the full path (rnn_stack)
    output, h_n, c_n = run_layers(module.mode, x, None, h0, c0, weights, batch=x.size(1), state_size=state_size,
                                  num_directions=num_directions, dropout=module.dropout, training=module.training,
                                  layer=eager_rnn_layer)
    if module.batch_first:
        output = time_major_to_batch_first(module.mode, output)
    return (output, (h_n, c_n)) if module.mode == "LSTM" else (output, h_n)
