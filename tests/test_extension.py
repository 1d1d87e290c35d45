"""The package and its build: import behaviour, the clear errors of a stale or missing build."""

import importlib

import pytest
import torch

import seqops
from seqops import _extension


def test_build_summary_names_torch_and_cuda():
    summary = seqops.build_summary()
    assert torch.__version__ in summary and "CUDA kernels" in summary


def test_kernels_subpackage_is_installed_as_seqops_kernels():
    kernels = importlib.import_module("seqops.kernels")
    assert kernels.__name__ == "seqops.kernels"


def test_every_schema_has_a_cpu_kernel():
    for name in ["lstm_cell_forward", "gru_cell_forward", "rnn_cell_forward", "lstm_layer_forward",
                 "gru_layer_forward", "rnn_layer_forward"]:
        for op in (name, name.replace("forward", "backward")):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"seqops::{op}", "CPU"), op


def test_cuda_kernels_registered_when_built_with_cuda():
    has = torch._C._dispatch_has_kernel_for_dispatch_key("seqops::lstm_cell_forward", "CUDA")
    assert has == _extension.has_cuda_kernels()


def test_stale_build_raises_a_clear_import_error(monkeypatch):
    info = importlib.import_module("seqops._build_info")
    monkeypatch.setattr(info, "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match=r"built against torch 0\.0\.1 but torch .* is installed.*rebuild"):
        _extension.load()


def test_missing_build_raises_a_clear_import_error(monkeypatch):
    real_import = importlib.import_module

    def no_build_info(name, *args):
        if name == "seqops._build_info":
            raise ImportError("no module")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_build_info)
    with pytest.raises(ImportError, match="has not been built"):
        _extension.load()


@pytest.mark.parametrize("isa,lacking", [("avx512", "avx512_bw"), ("avx2", "avx2"), ("avx2", "fma3")])
def test_a_build_for_vectors_this_cpu_lacks_raises_a_clear_import_error(monkeypatch, isa, lacking):
    # A binary built where AVX-512 is (SEQOPS_CPU_ISA=auto), copied to a CPU without: an error, not SIGILL.
    info = _extension._build_info()
    monkeypatch.setattr(info, "CPU_ISA", isa)
    capabilities = dict.fromkeys(_extension._ISA_FEATURES["avx512"], True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**capabilities, "avx2": True, lacking: False})
    with pytest.raises(ImportError, match=f"built for {isa.upper()}.*{lacking}.*SEQOPS_CPU_ISA"):
        _extension.load()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**capabilities, "avx2": True})
    _extension.load()


def test_this_cpu_runs_the_installed_build():
    assert _extension._missing_cpu_features(_extension._build_info().CPU_ISA) == []


def test_features_the_capability_table_does_not_name_are_not_held_against_the_cpu(monkeypatch):
    info = _extension._build_info()
    monkeypatch.setattr(info, "CPU_ISA", "avx512")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})  # another torch's names
    assert _extension._missing_cpu_features("avx512") == []
    _extension.load()
