import os

import pytest
import torch


# --- attention (issue 4): run the Triton kernels in the interpreter where no CUDA device is visible. ---------
# pytest_configure runs before collection imports any test module (and so seqops' Triton kernels, which read
# TRITON_INTERPRET when decorated). An explicit TRITON_INTERPRET wins; on a GPU the kernels run natively.
def pytest_configure(config):
    if "TRITON_INTERPRET" not in os.environ and not cuda_available():
        os.environ["TRITON_INTERPRET"] = "1"
# --- end attention block -------------------------------------------------------------------------------------


def cuda_available():
    # Queried lazily (never at import), so collection works on machines without a driver.
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def devices():
    """Devices to parametrize over: CPU always, CUDA as a gpu-marked param."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


os.environ.setdefault("PYTHONHASHSEED", "0")
