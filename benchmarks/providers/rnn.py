"""Whole RNN layers (one layer, one direction, input projection included, sequence-first input):
seqops' modules, torch.nn with and without cuDNN, torch.compile of the reference cell, a Python loop."""

import torch

from benchmarks.providers.base import (
    Provider,
    allow_recompiles,
    mode_fn,
    random_tensor,
    reference_fn,
    require_device,
    seqops_attr,
)

MODULES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}
NN_CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn_tanh": torch.nn.RNNCell}
REFERENCE_CELLS = {"lstm": "lstm_cell", "gru": "gru_cell", "rnn_tanh": "rnn_tanh_cell"}


def layer_inputs(case, device):
    """x: [T, B, I] (requires grad); initial state h0 (and c0 for LSTM): [1, B, H], constants."""
    dt = case.torch_dtype
    x = random_tensor((case.T, case.B, case.I), device, dt)
    h0 = random_tensor((1, case.B, case.H), device, dt, requires_grad=False)
    if case.op != "lstm":
        return x, h0
    hx = (h0, random_tensor((1, case.B, case.H), device, dt, requires_grad=False))
    return x, hx


def build_module(module_cls, case, device):
    kwargs = {"nonlinearity": "tanh"} if case.op == "rnn_tanh" else {}
    return module_cls(case.I, case.H, num_layers=1, device=device, dtype=case.torch_dtype, **kwargs)


def module_setup(get_cls, cudnn=True):
    def setup(case, device):
        module = build_module(get_cls(case.op), case, device)
        if case.mode == "infer":
            module.eval()  # as served: cuDNN then runs its inference forward, without a reserve space
        x, hx = layer_inputs(case, device)

        def forward():
            if cudnn:  # torch's defaults, untouched
                return module(x, hx)[0]
            with torch.backends.cudnn.flags(enabled=False):
                return module(x, hx)[0]

        return mode_fn(case.mode, forward, [x, *module.parameters()])

    return setup


def cuda_only_module_setup(get_cls, cudnn):
    inner = module_setup(get_cls, cudnn)

    def setup(case, device):
        require_device(device, "cuda")  # on the CPU cuDNN's flag changes nothing: the torch.nn row covers it
        return inner(case, device)

    return setup


def step_loop_setup(get_step):
    """A Python loop over time of step(x_t, state) -> state, the cell's weights as its parameters."""

    def setup(case, device):
        kwargs = {"nonlinearity": "tanh"} if case.op == "rnn_tanh" else {}
        cell = NN_CELLS[case.op](case.I, case.H, device=device, dtype=case.torch_dtype, **kwargs)
        step = get_step(case.op, cell)
        x, hx = layer_inputs(case, device)
        state0 = tuple(s[0] for s in hx) if isinstance(hx, tuple) else hx[0]

        def forward():
            state, outs = state0, []
            for t in range(case.T):
                state = step(x[t], state)
                outs.append(state[0] if isinstance(state, tuple) else state)
            return torch.stack(outs)

        return mode_fn(case.mode, forward, [x, *cell.parameters()])

    return setup


def nn_cell_step(op, cell):
    return cell


def compiled_reference_step(op, cell):
    """torch.compile of the reference cell with default settings. The step, not the whole layer, is
    compiled: Dynamo unrolls the time loop, and unrolling T = 1024 steps of forward and backward takes
    longer to compile than the whole suite runs. Default dynamic=None: the first shape of an op and dtype
    (the headline shape in the GPU list) gets static kernels, later shapes one dynamic recompile."""
    ref = reference_fn(REFERENCE_CELLS[op])
    allow_recompiles()
    compiled = torch.compile(ref, fullgraph=True)
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    return lambda x_t, state: compiled(x_t, state, *weights)


RNN_PROVIDERS = (
    Provider("seqops", "rnn", module_setup(lambda op: seqops_attr(MODULES[op])),
             description="seqops.LSTM/GRU/RNN"),
    Provider("torch.nn", "rnn", module_setup(lambda op: getattr(torch.nn, MODULES[op])),
             description="torch.nn.LSTM/GRU/RNN (cuDNN on CUDA)"),
    Provider("torch.nn-nocudnn", "rnn",
             cuda_only_module_setup(lambda op: getattr(torch.nn, MODULES[op]), cudnn=False),
             devices=("cuda",), description="torch.nn with cuDNN disabled"),
    Provider("compile-ref", "rnn", step_loop_setup(compiled_reference_step), compiles=True,
             description="torch.compile(seqops.reference cell) in a Python loop"),
    Provider("pyloop", "rnn", step_loop_setup(nn_cell_step), description="torch.nn cell in a Python loop"),
)
