"""seqops.attention on a CUDA GPU: bf16/fp16 under the FlashAttention rule at realistic sizes, fp32 accuracy,
dropout, determinism and compile with the autotuned kernels. Skipped where no GPU is visible."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from attention_checks import (
    assert_close_fp32_grad,
    assert_flash_rule,
    cumulative_lengths,
    float64_oracle,
    make_qkv,
    packed,
    per_sequence_oracle,
)

import seqops
from seqops import reference
from seqops.ops.attention import _draw_seed, attention, attention_dropout_mask, attention_with_lse

pytestmark = pytest.mark.gpu
LOW = [torch.float16, torch.bfloat16]


def _flash_rule_check(q, k, v, **kwargs):
    out = attention(q, k, v, **kwargs)
    grad_out = torch.randn_like(out)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, **kwargs)
    low = reference.attention(q, k, v, **kwargs)  # PyTorch's own computation in the low precision
    low_grads = torch.autograd.grad(low, (q, k, v), grad_out)
    assert_flash_rule(out, low, exact, "out")
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, a, base, want in zip(("dq", "dk", "dv"), got, low_grads, exact_grads):
        assert_flash_rule(a, base, want, name)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("E", [64, 128])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("L,S", [(1024, 1024), (1000, 1000), (97, 1030)])
def test_flash_rule_low_precision(dtype, E, is_causal, L, S):
    q, k, v = make_qkv((2, 4, L, E), (2, 4, S, E), (2, 4, S, E), dtype=dtype, device="cuda")
    _flash_rule_check(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("E,Ev", [(40, 40), (80, 80), (256, 256), (96, 64), (1, 33)])
def test_flash_rule_other_head_dims(dtype, E, Ev):
    q, k, v = make_qkv((1, 4, 300, E), (1, 4, 333, E), (1, 4, 333, Ev), dtype=dtype, device="cuda")
    _flash_rule_check(q, k, v, is_causal=True)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_flash_rule_masks_and_gqa(dtype):
    q, k, v = make_qkv((2, 8, 512, 64), (2, 2, 700, 64), (2, 2, 700, 64), dtype=dtype, device="cuda")
    pad = torch.rand(2, 1, 1, 700, device="cuda") > 0.2
    _flash_rule_check(q, k, v, attn_mask=pad, enable_gqa=True)
    bias = torch.randn(512, 700, device="cuda", dtype=dtype)
    _flash_rule_check(q, k, v, attn_mask=bias, enable_gqa=True)


@pytest.mark.parametrize("E", [64, 128])
def test_fp32_accuracy_on_gpu(E):
    # fp32 runs the dots in IEEE fp32 (no tf32), so fp32 tolerances hold, as on the CPU.
    q, k, v = make_qkv((1, 2, 513, E), (1, 2, 700, E), (1, 2, 700, E), device="cuda")
    out = attention(q, k, v, is_causal=True)
    grad_out = torch.randn_like(out)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, is_causal=True)
    torch.testing.assert_close(out, exact.float())
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad_out), exact_grads):
        assert_close_fp32_grad(got, want)


def test_matches_sdpa_and_lse():
    shape = (2, 4, 1024, 64)
    q, k, v = make_qkv(shape, shape, shape, dtype=torch.bfloat16, device="cuda")
    out, lse = attention_with_lse(q, k, v, is_causal=True)
    exact, exact_lse = reference.attention_with_lse(q.double(), k.double(), v.double(), is_causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_flash_rule(out, theirs, exact, "out vs SDPA's bf16 error")
    torch.testing.assert_close(lse, exact_lse.float())  # the lse is computed in fp32 from bf16 inputs


def test_dropout_exact_against_materialised_mask():
    p = 0.2
    q, k, v = make_qkv((2, 4, 300, 64), (2, 4, 257, 64), (2, 4, 257, 64), device="cuda")
    torch.manual_seed(5)
    out = attention(q, k, v, dropout_p=p)
    torch.manual_seed(5)
    keep = attention_dropout_mask(_draw_seed(q.device), 2, 4, 300, 257, p)
    grad_out = torch.randn_like(out)
    exact, exact_grads = float64_oracle(q, k, v, grad_out, dropout_p=p, dropout_mask=keep)
    torch.testing.assert_close(out, exact.float())
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad_out), exact_grads):
        assert_close_fp32_grad(got, want)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01


def test_backward_deterministic_with_gqa():
    q, k, v = make_qkv((2, 8, 1024, 128), (2, 2, 1024, 128), (2, 2, 1024, 128), dtype=torch.bfloat16,
                       device="cuda")
    grad = torch.randn(2, 8, 1024, 128, device="cuda", dtype=torch.bfloat16)
    runs = [torch.autograd.grad(attention(q, k, v, is_causal=True, enable_gqa=True), (q, k, v), grad)
            for _ in range(3)]
    for later in runs[1:]:
        for a, b in zip(runs[0], later):
            assert torch.equal(a, b)


@pytest.mark.compile
def test_compile_on_gpu():
    q, k, v = make_qkv((2, 4, 256, 64), (2, 4, 256, 64), (2, 4, 256, 64), dtype=torch.float16, device="cuda")
    compiled = torch.compile(attention, fullgraph=True)
    out = compiled(q, k, v, is_causal=True)
    torch.testing.assert_close(out, attention(q, k, v, is_causal=True))
    out.sum().backward()
    assert q.grad is not None and q.grad.isfinite().all()


def test_long_sequence_causal_bf16():
    q, k, v = make_qkv((1, 2, 8192, 128), (1, 2, 8192, 128), (1, 2, 8192, 128), dtype=torch.bfloat16,
                       device="cuda", requires_grad=False)
    out = attention(q, k, v, is_causal=True)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert_flash_rule(out, theirs, exact, "out at L = 8192")


def test_tma_path_launches_on_hopper_and_agrees_with_pointer_loads(monkeypatch):
    from seqops.kernels import attention_common

    if not attention_common.is_sm90(torch.device("cuda")):
        pytest.skip("the TMA path is for sm90 (H100/H200)")
    q, k, v = make_qkv((2, 4, 1000, 128), (2, 4, 1000, 128), (2, 4, 1000, 128), dtype=torch.bfloat16,
                       device="cuda")
    grad = torch.randn(2, 4, 1000, 128, device="cuda", dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a TMA launch failure would warn and fall back
        assert attention_common.TMA_ENABLED and attention_common.tma_eligible(q, k, v)
        out = attention(q, k, v, is_causal=True)
        grads = torch.autograd.grad(out, (q, k, v), grad)
    assert attention_common.TMA_ENABLED
    monkeypatch.setattr(attention_common, "TMA_ENABLED", False)
    out_ptr = attention(q, k, v, is_causal=True)
    grads_ptr = torch.autograd.grad(out_ptr, (q, k, v), grad)
    exact, exact_grads = float64_oracle(q, k, v, grad, is_causal=True)
    # Same math, possibly other tiles: each path's error is within 2x of the other's.
    assert_flash_rule(out, out_ptr, exact, "TMA output")
    for name, a, b, want in zip(("dq", "dk", "dv"), grads, grads_ptr, exact_grads):
        assert_flash_rule(a, b, want, f"TMA {name}")


def _tuned_kernels(device):
    from seqops.kernels import attention_bwd, attention_common, attention_fwd

    sm90 = attention_common.is_sm90(device)
    budget = attention_common.shared_memory_budget(
        attention_common.SMEM_SM90 if sm90 else attention_common.SMEM_DEFAULT, device)
    return budget, {  # kernel: (autotuner, resident tile, streamed tile)
        "fwd": (attention_fwd._fwd_sm90 if sm90 else attention_fwd._fwd_default, "BLOCK_M", "BLOCK_N"),
        "dkdv": (attention_bwd._dkdv_sm90 if sm90 else attention_bwd._dkdv_default, "BLOCK_N", "BLOCK_M"),
        "dq": (attention_bwd._dq_sm90 if sm90 else attention_bwd._dq_default, "BLOCK_M", "BLOCK_N"),
    }


@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
@pytest.mark.parametrize("E", [64, 128])
def test_every_tile_configuration_is_correct(monkeypatch, kernel, E):
    # The suite runs one configuration per shape (SEQOPS_ATTENTION_AUTOTUNE=0), so each configuration autotuning
    # may pick is run here on its own: causal, partial tiles (L = 300), bf16, forward and every gradient.
    from seqops.kernels.attention_common import _smem_bytes

    budget, kernels = _tuned_kernels(torch.device("cuda"))
    tuner, resident, streamed = kernels[kernel]
    q, k, v = make_qkv((2, 3, 300, E), (2, 3, 300, E), (2, 3, 300, E), dtype=torch.bfloat16, device="cuda")
    fitting = [c for c in list(tuner.configs)
               if _smem_bytes(c.kwargs[resident], c.kwargs[streamed], E, E, c.num_stages, 2) <= budget]
    assert fitting
    for config in fitting:
        monkeypatch.setattr(tuner, "configs", [config])  # one config: the autotuner runs it without tuning
        _flash_rule_check(q, k, v, is_causal=True)


def test_autotuning_picks_a_correct_configuration(monkeypatch):
    from seqops.kernels import attention_common

    monkeypatch.setattr(attention_common, "AUTOTUNE", True)
    _, kernels = _tuned_kernels(torch.device("cuda"))
    for tuner, _, _ in kernels.values():
        monkeypatch.setattr(tuner, "cache", {})  # no choice cached by the untuned tests: tune this shape afresh
    q, k, v = make_qkv((1, 4, 700, 64), (1, 4, 700, 64), (1, 4, 700, 64), dtype=torch.float16, device="cuda")
    _flash_rule_check(q, k, v, is_causal=False)
    assert all(len(tuner.cache) == 1 for tuner, _, _ in kernels.values())


def _sdpa_pair(q, k, v, **kwargs):
    """(bf16 SDPA, fp32 SDPA) outputs and (q, k, v) gradients: PyTorch's low-precision result and the exact one."""
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        leaves = [x.detach().to(dtype).contiguous().requires_grad_(x.requires_grad) for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*leaves, **kwargs)
        grads = torch.autograd.grad(out, [x for x in leaves if x.requires_grad], torch.ones_like(out)) \
            if any(x.requires_grad for x in leaves) else ()
        results.append((out, grads))
    return results


def test_key_offsets_past_2_31_elements():
    # K/V rows 8192 elements apart (a [S, 64 heads x 128] buffer, one head used) and S = 2^18: a head spans
    # 2^31 elements, past the kernels' 32-bit row offsets; the launcher copies such views contiguous.
    S, row = 1 << 18, 64 * 128
    k_buf = torch.randn(S, row, device="cuda", dtype=torch.bfloat16)
    v_buf = torch.randn(S, row, device="cuda", dtype=torch.bfloat16)
    k = k_buf[:, -128:].view(1, 1, S, 128).requires_grad_()  # the last head: the largest offsets
    v = v_buf[:, -128:].view(1, 1, S, 128).requires_grad_()
    q = torch.randn(1, 1, 256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    assert k.stride(2) * (S - 1) >= 2**31
    out = attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    (low, low_grads), (exact, exact_grads) = _sdpa_pair(q, k, v)
    assert_flash_rule(out, low, exact, "out")
    for name, a, base, want in zip(("dq", "dk", "dv"), grads, low_grads, exact_grads):
        assert_flash_rule(a, base, want, name)


def test_dense_mask_past_2_31_elements():
    # A dense [L, S] boolean mask with L * S > 2^31: row * mask stride passes 2^31.
    L, S = 1024, (1 << 21) + 16
    q = torch.randn(1, 1, L, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 1, S, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = torch.rand(1, 1, L, S, device="cuda") > 0.3
    out = attention(q, k, v, attn_mask=mask)
    (low, _), (exact, _) = _sdpa_pair(q, k, v, attn_mask=mask)
    assert_flash_rule(out, low, exact, "out with a 2^31-element mask")


# Packed sequences and jagged nested tensors (seqops.attention_varlen) with the compiled, autotuned kernels.


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("is_causal", [False, True])
def test_varlen_flash_rule_low_precision(dtype, is_causal):
    lengths_q, lengths_k = [1000, 17, 513, 2048, 1], [1000, 300, 0, 2048, 64]
    q = packed(lengths_q, 8, 128, dtype, "cuda")
    k, v = (packed(lengths_k, 2, 128, dtype, "cuda") for _ in range(2))
    cu_q, cu_k = cumulative_lengths(lengths_q, "cuda"), cumulative_lengths(lengths_k, "cuda")
    kwargs = dict(is_causal=is_causal, enable_gqa=True)
    out = seqops.attention_varlen(q, k, v, cu_q, cu_k, **kwargs)
    grad_out = torch.randn_like(out)
    exact, exact_grads = per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, **kwargs)
    low, low_grads = per_sequence_oracle(q, k, v, cu_q, cu_k, grad_out, dtype=dtype, **kwargs)
    assert_flash_rule(out, low, exact, "out")
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    for name, a, base, want in zip(("dq", "dk", "dv"), got, low_grads, exact_grads):
        assert_flash_rule(a, base, want, name)


@pytest.mark.parametrize("is_causal", [False, True])
def test_jagged_nested_tensors_match_sdpa_on_gpu(is_causal):
    # SDPA runs its flash kernel on CUDA nested tensors, causal included: the same function, bf16 noise apart.
    lengths = [700, 33, 1500]
    make = lambda: torch.nested.nested_tensor(  # noqa: E731
        [torch.randn(n, 4, 64) for n in lengths], layout=torch.jagged, device="cuda", dtype=torch.bfloat16,
        requires_grad=True)
    qn, kn = make(), make()
    vn = torch.nested.nested_tensor_from_jagged(torch.randn_like(kn.values()), kn.offsets()).requires_grad_()
    q, k, v = (t.transpose(1, 2) for t in (qn, kn, vn))
    ours = seqops.attention(q, k, v, is_causal=is_causal)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    exact = [F.scaled_dot_product_attention(*(t.double() for t in seq), is_causal=is_causal)
             for seq in zip(q.unbind(), k.unbind(), v.unbind())]  # [H, L_i, E] each, dense
    flat = lambda tensors: torch.cat([t.flatten() for t in tensors])  # noqa: E731
    assert_flash_rule(flat(ours.unbind()), flat(theirs.unbind()), flat(exact), "out")


def test_varlen_backward_is_deterministic():
    lengths = [900, 1200, 77]
    q = packed(lengths, 8, 64, torch.bfloat16, "cuda")
    k, v = (packed(lengths, 2, 64, torch.bfloat16, "cuda") for _ in range(2))
    cu = cumulative_lengths(lengths, "cuda")
    out = seqops.attention_varlen(q, k, v, cu, cu, is_causal=True, enable_gqa=True)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
    again = torch.autograd.grad(out, (q, k, v), grad)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
