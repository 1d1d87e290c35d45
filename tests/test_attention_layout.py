"""The attention ops' output layouts (seqops/ops/attention_layout.py): out and dq take q's layout, dk k's, dv
v's, on every route (the Triton kernels, PyTorch's CPU flash kernel, the reference), and the fake kernels
declare exactly those strides. Heads split from a projection by views come back mergeable by views. (On the CPU,
seqops.attention hands what SDPA runs on its CPU flash kernel to SDPA, strides included: through_the_ops
reaches the ops' own CPU route.)"""

import pytest
import torch
import torch.nn.functional as F
from attention_checks import check_fp32, through_the_ops

from seqops.ops import attention as attention_module
from seqops.ops import attention_cpu
from seqops.ops.attention_layout import heads_interleaved, in_layout, layout_strides

B, L, S, H, HKV, E = 2, 13, 11, 4, 2, 16


@pytest.fixture(params=["kernels", "cpu-flash", "reference"])
def route(request, monkeypatch):
    """Each route of the CPU ops: the Triton kernels (interpreter), PyTorch's CPU flash kernel, the reference."""
    if request.param == "kernels" and not attention_module._INTERPRET:
        pytest.skip("CPU tensors run the Triton kernels only under TRITON_INTERPRET=1")
    if request.param != "kernels":
        monkeypatch.setattr(attention_module, "_INTERPRET", False)
    if request.param == "reference":
        monkeypatch.setattr(attention_cpu, "_flash", None)
    return request.param


def _projected(n_heads, length, requires_grad=True):
    # Heads split from a [B, length, 3 * n_heads * E] projection, as MultiheadAttention splits them.
    x = torch.randn(B, length, 3 * n_heads * E, requires_grad=requires_grad)
    return x, [t.view(B, length, n_heads, E).transpose(1, 2) for t in x.chunk(3, dim=-1)]


def test_the_rule():
    _, (q, _, _) = _projected(H, L)
    assert heads_interleaved(q) and not heads_interleaved(q.contiguous())
    assert layout_strides(q, (B, H, L, 8)) == (L * H * 8, 8, H * 8, 1)
    assert layout_strides(q.contiguous(), (B, H, L, 8)) == (H * L * 8, L * 8, 8, 1)
    # One head or one row: nothing to interleave, contiguous; a broadcast head dim (stride 0) likewise.
    assert not heads_interleaved(torch.randn(B, L, 1, E).transpose(1, 2))
    assert not heads_interleaved(torch.randn(B, L, E).unsqueeze(1).expand(B, H, L, E))
    t = torch.randn(B, H, L, E)
    assert in_layout(t, t) is t
    moved = in_layout(t, q)
    assert moved.stride() == layout_strides(q, t.shape) and torch.equal(moved, t)


def test_outputs_and_gradients_take_their_inputs_layouts(route):
    xq, (q, _, _) = _projected(H, L)
    xkv, (_, k, v) = _projected(HKV, S)
    out = through_the_ops(q, k, v, enable_gqa=True)
    assert out.stride() == layout_strides(q, out.shape)
    merged = out.transpose(1, 2).view(B, L, H * E)  # a view, as after SDPA's CPU and CUDA flash kernels
    grad = torch.randn_like(merged)
    merged.backward(grad)
    # The same values and projection gradients as the computation on contiguous copies of the heads.
    leaves = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    ref = through_the_ops(*leaves, enable_gqa=True)
    assert ref.is_contiguous()
    torch.testing.assert_close(out, ref)
    dq, dk, dv = torch.autograd.grad(ref, leaves, grad.view(B, L, H, E).transpose(1, 2))
    torch.testing.assert_close(xq.grad.chunk(3, dim=-1)[0], dq.transpose(1, 2).reshape(B, L, H * E))
    torch.testing.assert_close(xkv.grad.chunk(3, dim=-1)[1], dk.transpose(1, 2).reshape(B, S, HKV * E))
    torch.testing.assert_close(xkv.grad.chunk(3, dim=-1)[2], dv.transpose(1, 2).reshape(B, S, HKV * E))


def test_contiguous_inputs_keep_contiguous_outputs(route):
    q, k, v = (torch.randn(B, n, length, E, requires_grad=True) for n, length in ((H, L), (HKV, S), (HKV, S)))
    out = through_the_ops(q, k, v, enable_gqa=True)
    assert out.is_contiguous()
    for grad in torch.autograd.grad(out, (q, k, v), torch.randn_like(out)):
        assert grad.is_contiguous()


def test_values_match_the_reference_in_the_interleaved_layout(route):
    _, (q, k, v) = _projected(H, L)
    check_fp32(q, k, v, attend=through_the_ops, is_causal=True)
    mask = torch.rand(B, 1, 1, L) > 0.3
    mask[..., 0] = True
    check_fp32(q, k, v, attend=through_the_ops, attn_mask=mask)


@pytest.mark.parametrize("interleaved", ["q", "k", "v", "all"])
def test_opcheck_forward_and_backward_in_mixed_layouts(route, interleaved):
    _, (qi, ki, vi) = _projected(H, L, requires_grad=False)
    q, k, v = (t.contiguous() for t in (qi, ki, vi))
    q, k, v = (ti if interleaved in (name, "all") else t for name, t, ti in zip("qkv", (q, k, v), (qi, ki, vi)))
    args = (q, k, v, None, None, 0.25, True, 0.0)
    torch.library.opcheck(torch.ops.seqops.attention_fwd.default, args)
    out, lse = torch.ops.seqops.attention_fwd(*args)
    assert out.stride() == layout_strides(q, out.shape)
    bwd_args = (torch.randn_like(out), None, q, k, v, None, None, out, lse, 0.25, True, 0.0, False)
    torch.library.opcheck(torch.ops.seqops.attention_bwd.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))
    dq, dk, dv, _ = torch.ops.seqops.attention_bwd(*bwd_args)
    for grad, x in zip((dq, dk, dv), (q, k, v)):
        assert grad.stride() == layout_strides(x, x.shape)


@pytest.mark.compile
def test_compiled_multihead_style_block_matches_eager(route):
    torch._dynamo.reset()

    def block(x, w):
        q, k, v = F.linear(x, w).view(B, L, 3, H, E).unbind(2)
        out = through_the_ops(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return out.transpose(1, 2).reshape(B, L, H * E)

    x = torch.randn(B, L, H * E)
    w = torch.randn(3 * H * E, H * E, requires_grad=True) * 0.1
    w_eager, w_compiled = (w.detach().clone().requires_grad_() for _ in range(2))
    eager = block(x, w_eager)
    compiled = torch.compile(block, fullgraph=True)(x, w_compiled)
    torch.testing.assert_close(compiled, eager)
    grad = torch.randn_like(eager)
    eager.backward(grad)
    compiled.backward(grad)
    torch.testing.assert_close(w_compiled.grad, w_eager.grad)
