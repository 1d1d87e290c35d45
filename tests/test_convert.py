"""seqops.convert: every torch.nn recurrent module (and MultiheadAttention once seqops has it) becomes its
seqops twin, keeping parameters, device, dtype, training mode and hooks; the model computes the same."""

import copy

import pytest
import torch
from torch import nn

import seqops

TWINS = {
    nn.LSTM: seqops.LSTM,
    nn.GRU: seqops.GRU,
    nn.RNN: seqops.RNN,
    nn.LSTMCell: seqops.LSTMCell,
    nn.GRUCell: seqops.GRUCell,
    nn.RNNCell: seqops.RNNCell,
}

# torch.nn.LSTM with proj_size says so on the CPU; it is about torch.nn, not the module under test.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


class Everything(nn.Module):
    """One of each recurrent module, nested in containers, all on the forward path."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.lstm = nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, proj_size=2)
        self.stack = nn.ModuleList([nn.GRU(4, 5), nn.RNN(5, 5, nonlinearity="relu")])
        self.cells = nn.ModuleDict(
            {"lstm": nn.LSTMCell(5, 4), "gru": nn.GRUCell(4, 4), "rnn": nn.RNNCell(4, 3, bias=False)}
        )

    def forward(self, x):  # x: [B, T, 3]
        y, _ = self.lstm(self.encoder(x))  # [B, T, 4]
        y, _ = self.stack[0](y.transpose(0, 1))
        y, h = self.stack[1](y)
        h, c = self.cells["lstm"](y[-1])
        h = self.cells["gru"](h, c)
        return self.cells["rnn"](h)


def _recurrent(model):
    return {name: m for name, m in model.named_modules() if type(m) in TWINS or type(m) in TWINS.values()}


def test_every_recurrent_module_is_swapped_and_computes_the_same():
    torch.manual_seed(0)
    model = Everything()
    params_before = dict(model.named_parameters())
    x = torch.randn(2, 5, 3)
    expected = model(x)
    before = {name: type(m) for name, m in _recurrent(model).items()}

    assert seqops.convert(model) is model
    after = _recurrent(model)
    assert set(after) == set(before) and len(after) == 6
    for name, m in after.items():
        assert type(m) is TWINS[before[name]], name
    # The same Parameter objects (not copies): optimizers and tied weights keep working.
    for name, p in model.named_parameters():
        assert p is params_before[name], name
    assert list(model.state_dict()) == list(params_before)
    torch.testing.assert_close(model(x), expected)


def test_keeps_dtype_device_training_mode_and_requires_grad():
    model = nn.Sequential(nn.GRU(3, 4, 2, dropout=0.5)).double().eval()
    model[0].weight_hh_l1.requires_grad_(False)
    seqops.convert(model)
    gru = model[0]
    assert type(gru) is seqops.GRU
    assert not gru.training and not model.training
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in gru.parameters())
    assert not gru.weight_hh_l1.requires_grad and gru.weight_ih_l1.requires_grad
    assert gru.dropout == 0.5 and gru.num_layers == 2
    gru.train()
    assert gru.training


def test_converting_a_bare_module_returns_its_twin():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, proj_size=2)
    twin = seqops.convert(lstm)
    assert type(twin) is seqops.LSTM and type(lstm) is nn.LSTM  # the original is left as it was
    assert twin.weight_hr_l0 is lstm.weight_hr_l0
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(twin(x)[0], lstm(x)[0])


def test_a_shared_module_becomes_one_shared_twin():
    shared = nn.GRUCell(3, 3)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    seqops.convert(model)
    assert model["a"] is model["b"][0]
    assert type(model["a"]) is seqops.GRUCell


def test_user_subclasses_and_seqops_modules_are_left_alone():
    class MyLSTM(nn.LSTM):  # may override forward; swapping it would change behaviour
        pass

    mine, ours = MyLSTM(3, 4), seqops.LSTM(3, 4)
    model = nn.ModuleList([mine, ours])
    seqops.convert(model)
    assert model[0] is mine and model[1] is ours


def test_hooks_and_attributes_survive():
    calls = []
    model = nn.Sequential(nn.RNN(3, 4))
    model[0].register_forward_hook(lambda module, args, out: calls.append(type(module)))
    model[0].note = "kept"
    seqops.convert(model)
    model(torch.randn(5, 3))
    assert calls == [seqops.RNN] and model[0].note == "kept"


def test_hook_handles_registered_before_convert_still_remove_their_hooks():
    calls = []
    model = nn.Sequential(nn.LSTM(3, 4))
    handles = [
        model[0].register_forward_hook(lambda module, args, out: calls.append("forward")),
        model[0].register_forward_pre_hook(lambda module, args, kwargs: calls.append("pre"), with_kwargs=True),
        model[0].register_full_backward_hook(lambda module, grad_in, grad_out: calls.append("backward")),
        model[0].register_state_dict_post_hook(lambda module, state, prefix, local: calls.append("state_dict")),
    ]
    seqops.convert(model)
    model(torch.randn(5, 2, 3, requires_grad=True))[0].sum().backward()
    model.state_dict()
    assert sorted(calls) == ["backward", "forward", "pre", "state_dict"]
    for handle in handles:
        handle.remove()
    calls.clear()
    model(torch.randn(5, 2, 3, requires_grad=True))[0].sum().backward()
    model.state_dict()
    assert calls == []


@pytest.mark.parametrize("make", [lambda: nn.LSTM(4, 4), lambda: nn.GRUCell(4, 4),
                                  lambda: nn.MultiheadAttention(4, 2)], ids=["LSTM", "GRUCell", "MHA"])
def test_hooks_registered_on_the_original_after_convert_fire_on_the_twin(make):
    # The hook dicts are shared, but torch files a backward hook as full by a flag of the module it was
    # registered on: the original's, which the twin does not have.
    original = make()
    model = seqops.convert(nn.Sequential(original))
    calls = []
    original.register_forward_hook(lambda module, args, out: calls.append("forward"))
    original.register_full_backward_pre_hook(lambda module, grad_out: calls.append("backward pre"))
    original.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(len(grad_in)))
    x = torch.randn(3, 4, requires_grad=True)
    out = model[0](x, x, x)[0] if isinstance(original, nn.MultiheadAttention) else model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()
    inputs = 3 if isinstance(original, nn.MultiheadAttention) else 1
    assert calls == ["forward", "backward pre", inputs]


def test_optimizer_built_before_convert_still_trains_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seqops.convert(model)
    before = model[0].weight_ih_l0.detach().clone()
    model(torch.randn(5, 2, 3))[0].sum().backward()
    opt.step()
    assert not torch.equal(model[0].weight_ih_l0, before)


def test_state_dict_of_converted_model_loads_into_the_original():
    torch.manual_seed(0)
    original = Everything()
    converted = seqops.convert(Everything())
    original.load_state_dict(converted.state_dict())
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(original(x), converted(x))


def test_multihead_attention_is_swapped_and_computes_the_same():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    seqops.convert(model)
    assert type(model[0]) is seqops.MultiheadAttention
    q = torch.randn(4, 1, 8)
    reference = nn.MultiheadAttention(8, 2)
    reference.load_state_dict(model[0].state_dict())
    for need_weights in (True, False):  # torch's path, then the fused one
        ours = model[0](q, q, q, need_weights=need_weights)[0]
        torch.testing.assert_close(ours, reference(q, q, q, need_weights=need_weights)[0])


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # torch.nn.Transformer's own notices
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
def test_converted_transformer_computes_the_same_in_training_and_inference(batch_first, norm_first):
    # nn.Transformer's layers call self_attn with is_causal and masks, and read its attributes for their
    # inference fast path: the swapped attention must serve both.
    torch.manual_seed(0)
    original = nn.Transformer(
        d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.0,
        batch_first=batch_first, norm_first=norm_first,
    )
    converted = seqops.convert(copy.deepcopy(original))
    assert sum(type(m) is seqops.MultiheadAttention for m in converted.modules()) == 6
    src, tgt = torch.randn(3, 7, 16), torch.randn(3, 5, 16)
    if not batch_first:
        src, tgt = src.transpose(0, 1), tgt.transpose(0, 1)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[:, 5:] = True
    kwargs = dict(
        tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), tgt_is_causal=True,
        src_key_padding_mask=pad, memory_key_padding_mask=pad,
    )
    expected, actual = original(src, tgt, **kwargs), converted(src, tgt, **kwargs)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    converted_params = dict(converted.named_parameters())
    for name, p in original.named_parameters():
        torch.testing.assert_close(converted_params[name].grad, p.grad, msg=name)

    original.eval(), converted.eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(src, tgt, **kwargs), original(src, tgt, **kwargs))


def test_a_module_compiled_in_place_stays_compiled_as_its_twin():
    # Module.compile() keeps a compiled call of the original module; the twin must run its own forward,
    # compiled with the same settings (here: the backend).
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    original = nn.GRU(4, 6, num_layers=2, dropout=0.5)
    reference = copy.deepcopy(original).eval()
    original.compile(backend=recording_backend)
    model = seqops.convert(nn.Sequential(original)).eval()
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        first, second = model(x)[0], model(x)[0]
        expected = reference(x)[0]
    torch.testing.assert_close(first, expected)  # in eval: no dropout, as the twin (not the original) says
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    ops = {str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"}
    assert any("seqops" in op for op in ops), ops


def test_a_module_compiled_with_compile_disabled_gives_an_uncompiled_twin():
    original = nn.GRU(4, 6, num_layers=2, dropout=0.5)
    original.compile(disable=True)  # stores the original's own call
    model = seqops.convert(nn.Sequential(original)).eval()
    assert model[0]._compiled_call_impl is None
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)  # the twin's eval mode, not the original's


def test_a_compiled_call_without_readable_settings_is_compiled_with_the_defaults():
    original = nn.GRU(4, 6)
    original._compiled_call_impl = lambda *args, **kwargs: None  # not a torch.compile wrapper of this torch
    with pytest.warns(UserWarning, match="default settings"):
        twin = seqops.convert(original)
    assert twin._compiled_call_impl._torchdynamo_orig_callable.__self__ is twin


def test_rejects_a_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        seqops.convert(torch.randn(3))


def test_a_converted_model_is_freed_by_reference_counting():
    # No reference cycle from convert: the model's memory comes back at `del`, not at Python's next cyclic
    # collection (a loop of build, convert, drop grew by ~40 MiB per model).
    import gc
    import weakref

    gc.disable()
    try:
        model = seqops.convert(nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 5), nn.Sequential(nn.GRU(5, 6))))
        refs = [weakref.ref(m) for m in model.modules()] + [weakref.ref(p) for p in model.parameters()]
        del model
        assert all(ref() is None for ref in refs)
    finally:
        gc.enable()
