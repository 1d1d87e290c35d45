"""The launch policy of the attention kernels, without a GPU: which failures of the optional TMA path fall
back to pointer loads (and turn TMA off for the process) and which reach the caller; which tile configurations
the autotuners' pruning keeps."""

import re
import types

import pytest
import torch
import triton
from seqops.kernels import attention_common as ac


class Launcher:
    """Records each launch's USE_TMA; the TMA launch raises `error`."""

    def __init__(self, error=None):
        self.error, self.calls = error, []

    def __call__(self, *args, USE_TMA, **meta):
        self.calls.append(USE_TMA)
        if USE_TMA and self.error is not None:
            raise self.error


@pytest.fixture
def sm90_launch(monkeypatch):
    """launch_with_optional_tma as on an sm90 GPU, for a stand-in tensor on "cuda"."""
    monkeypatch.setattr(ac, "INTERPRETING", False)
    monkeypatch.setattr(ac, "TMA_ENABLED", True)
    monkeypatch.setattr(ac, "is_sm90", lambda device: True)
    monkeypatch.setattr(ac, "tma_eligible", lambda *tensors: True)
    monkeypatch.setattr(ac, "device_guard", lambda device: ac.contextlib.nullcontext())
    monkeypatch.setattr(ac.torch.cuda, "is_current_stream_capturing", lambda: False)
    streamed = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)

    def launch(launcher, dtype=torch.bfloat16):
        ac.launch_with_optional_tma(launcher, (), {}, (types.SimpleNamespace(**dict(vars(streamed), dtype=dtype)),))

    return launch


def test_a_tma_build_failure_falls_back_for_good(sm90_launch):
    launcher = Launcher(RuntimeError("PassManager::run failed"))
    with pytest.warns(RuntimeWarning, match="using pointer loads from now on"):
        sm90_launch(launcher)
    assert launcher.calls == [True, False] and not ac.TMA_ENABLED
    sm90_launch(launcher)
    assert launcher.calls == [True, False, False]


def test_out_of_shared_memory_falls_back_for_that_launch_only(sm90_launch):
    launcher = Launcher(ac.OutOfResources(300000, 232448, "shared memory"))
    sm90_launch(launcher)
    assert launcher.calls == [True, False] and ac.TMA_ENABLED


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 256.00 MiB"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"),
], ids=["oom", "cuda-error", "triton-cuda-error"])
def test_memory_and_device_faults_reach_the_caller(sm90_launch, error):
    # They are no fault of TMA's and would hit pointer loads too; switching TMA off would hide them.
    launcher = Launcher(error)
    with pytest.raises(type(error), match=re.escape(str(error))):
        sm90_launch(launcher)
    assert launcher.calls == [True] and ac.TMA_ENABLED


def test_a_failure_during_graph_capture_reaches_the_caller(sm90_launch, monkeypatch):
    monkeypatch.setattr(ac.torch.cuda, "is_current_stream_capturing", lambda: True)
    launcher = Launcher(RuntimeError("operation not permitted when stream is capturing"))
    with pytest.raises(RuntimeError, match="capturing"):
        sm90_launch(launcher)
    assert ac.TMA_ENABLED


def test_fp32_never_takes_tma(sm90_launch):
    launcher = Launcher()
    sm90_launch(launcher, dtype=torch.float32)
    sm90_launch(launcher, dtype=torch.bfloat16)
    assert launcher.calls == [False, True]


def _prune(configs, budget=ac.SMEM_SM90, **meta):
    named = {"Q": torch.empty(1, dtype=torch.bfloat16), "Mask": torch.empty(1, dtype=torch.bool)}
    kwargs = dict({"BLOCK_D": 128, "BLOCK_DV": 128, "MASK_KIND": ac.MASK_NONE}, **meta)
    return ac.prune_by_shared_memory(budget, "BLOCK_N", "BLOCK_M", streamed_vectors=2)(configs, named, **kwargs)


def test_pruning_counts_the_streamed_row_vectors(monkeypatch):
    # dK/dV (64 keys resident, 64 query rows streamed, 3 stages) at bf16 D=128: 132,096 bytes in an sm90 build
    # (tests/sm90_build.py); the tiles alone estimate 131,072, with lse and delta 132,608.
    monkeypatch.setattr(ac, "AUTOTUNE", True)
    config = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=3)
    assert _prune([config], budget=132608 + ac.SMEM_SLACK) == [config]
    smaller = triton.Config({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=1)
    assert _prune([config, smaller], budget=132607 + ac.SMEM_SLACK) == [smaller]


def test_deterministic_algorithms_run_the_first_configuration(monkeypatch):
    monkeypatch.setattr(ac, "AUTOTUNE", True)
    configs = ac.DKDV_CONFIGS_SM90
    assert len(_prune(configs)) > 1
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert _prune(configs) == configs[:1]
    finally:
        torch.use_deterministic_algorithms(previous)


class _CudaArgument:
    """What pruning reads of a CUDA tensor argument, without a GPU."""

    def __init__(self, dtype):
        self.dtype, self.device = dtype, torch.device("cuda", 0)

    def element_size(self):
        return torch.empty(0, dtype=self.dtype).element_size()


def test_pruning_caps_the_budget_by_the_device_s_own_shared_memory(monkeypatch):
    # sm86/sm89/sm120 parts let a block opt in to ~99 KB, not sm80's 163 KB: the device's figure decides.
    monkeypatch.setattr(ac, "AUTOTUNE", True)
    monkeypatch.setattr(ac, "INTERPRETING", False)
    monkeypatch.setattr(ac, "_device_shared_memory", lambda index: 101376)
    meta = {"BLOCK_D": 256, "BLOCK_DV": 256, "MASK_KIND": ac.MASK_NONE}
    prune = ac.prune_by_shared_memory(ac.SMEM_DEFAULT)
    on_gpu = prune(ac.DQ_CONFIGS_DEFAULT, {"Q": _CudaArgument(torch.bfloat16)}, **meta)
    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages) for c in on_gpu] == [(32, 16, 1)]
    compiling = prune(ac.DQ_CONFIGS_DEFAULT, {"Q": torch.empty(1, dtype=torch.bfloat16)}, **meta)
    assert len(compiling) == 2  # CPU tensors (builds without a GPU): the static budget


KERNEL_TILES = {  # kernel: (default list, resident tile, streamed tile, streamed row vectors)
    "fwd": (ac.FWD_CONFIGS_DEFAULT, "BLOCK_M", "BLOCK_N", 0),
    "dkdv": (ac.DKDV_CONFIGS_DEFAULT, "BLOCK_N", "BLOCK_M", 2),
    "dq": (ac.DQ_CONFIGS_DEFAULT, "BLOCK_M", "BLOCK_N", 0),
}


@pytest.mark.parametrize("kernel", list(KERNEL_TILES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_default_lists_fit_sm80_and_99_kb_parts_at_every_head_dim(kernel, dtype):
    # Pruning falls back to the smallest configuration when none fits, which then fails to launch: every case
    # must have one that fits (fp32 at head dims above 128 did not on sm80). fp32 on ~99 KB parts is left out:
    # its dK/dV at head dim 256 builds 0.4 KB over the estimate there.
    configs, resident, streamed, vectors = KERNEL_TILES[kernel]
    budgets = [ac.SMEM_DEFAULT] + ([101376] if dtype != torch.float32 else [])
    elt = torch.empty(0, dtype=dtype).element_size()
    for E, EV in [(16, 16), (64, 64), (128, 128), (160, 160), (256, 256), (256, 64), (64, 256)]:
        for mask_elt in (0, 1, 4, elt):
            for budget in budgets:
                fitting = [c for c in configs
                           if ac._smem_bytes(c.kwargs[resident], c.kwargs[streamed], ac.next_pow2_at_least_16(E),
                                             ac.next_pow2_at_least_16(EV), c.num_stages, elt, mask_elt, vectors)
                           <= budget - ac.SMEM_SLACK
                           and (elt < 4 or (c.kwargs[resident] * c.kwargs[streamed] <= ac.FP32_MAX_TILE
                                            and c.num_stages <= ac.FP32_MAX_STAGES))]
                assert fitting, (kernel, dtype, E, EV, mask_elt, budget)
