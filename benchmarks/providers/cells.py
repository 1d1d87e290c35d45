"""Single-step cells: seqops' fused cell ops against torch.nn's cells and the pure-PyTorch reference."""

import torch

from benchmarks.cases import GATES
from benchmarks.providers.base import Provider, mode_fn, random_tensor, reference_fn, seqops_attr

NN_CELLS = {"lstm_cell": torch.nn.LSTMCell, "gru_cell": torch.nn.GRUCell, "rnn_tanh_cell": torch.nn.RNNCell}


def cell_inputs(case, device):
    """x: [B, I]; state: (h, c) for LSTM, h otherwise, each [B, H]; weights w_ih: [G*H, I], w_hh: [G*H, H],
    biases [G*H], scaled like torch.nn's init so the gates stay out of saturation."""
    dt, B, I, H = case.torch_dtype, case.B, case.I, case.H
    gh = GATES[case.gate_op] * H
    x = random_tensor((B, I), device, dt)
    h = random_tensor((B, H), device, dt)
    state = (h, random_tensor((B, H), device, dt)) if case.op == "lstm_cell" else h
    scale = H**-0.5
    weights = [random_tensor(s, device, dt, scale=scale) for s in ((gh, I), (gh, H), (gh,), (gh,))]
    leaves = [x, *(state if isinstance(state, tuple) else (state,)), *weights]
    return x, state, weights, leaves


def functional_setup(get_fn):
    """A provider whose cell has torch.lstm_cell's signature: fn(input, state, w_ih, w_hh, b_ih, b_hh)."""

    def setup(case, device):
        fn = get_fn(case.op)
        x, state, weights, leaves = cell_inputs(case, device)
        return mode_fn(case.mode, lambda: fn(x, state, *weights), leaves)

    return setup


def nn_cell_setup(case, device):
    x, state, _, leaves = cell_inputs(case, device)
    kwargs = {"nonlinearity": "tanh"} if case.op == "rnn_tanh_cell" else {}
    cell = NN_CELLS[case.op](case.I, case.H, device=device, dtype=case.torch_dtype, **kwargs)
    leaves = [*leaves[: -4], *cell.parameters()]
    return mode_fn(case.mode, lambda: cell(x, state), leaves)


CELL_PROVIDERS = (
    Provider("seqops", "cell", functional_setup(lambda op: seqops_attr(op)), description="seqops.<op>"),
    Provider("torch.nn", "cell", nn_cell_setup, description="torch.nn.LSTMCell / GRUCell / RNNCell"),
    Provider("reference", "cell", functional_setup(lambda op: reference_fn(op)),
             description="seqops.reference cells"),
)
