import os

import pytest
import torch


def pytest_configure(config):
    # Where no CUDA device is visible, the Triton attention kernels run in the interpreter on CPU tensors, so
    # the whole public path is tested here too. This runs before collection imports seqops (whose kernels read
    # TRITON_INTERPRET when decorated); an explicit TRITON_INTERPRET wins; on a GPU the kernels run natively.
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    # fp32 GEMMs in IEEE fp32 whatever the environment set (torch.set_float32_matmul_precision in a plugin):
    # the fp32 CUDA tests hold seqops to fp32 accuracy. (torch.nn's cuDNN RNNs keep their own TF32 default;
    # the tests measure their error, they do not assume it.)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def each_device(request):
    """A module's tests on CPU tensors (the Triton interpreter where no GPU is visible) and, on a GPU machine,
    again on CUDA tensors, against the compiled kernels: tensors a test makes without naming a device land on
    this one. Use with pytestmark = pytest.mark.usefixtures("each_device")."""
    with torch.device(request.param):
        yield request.param


def devices():
    """Devices to parametrize over: CPU always, CUDA as a gpu-marked param."""
    return ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def strided_copy(t):
    """t's values in a non-contiguous layout (matrices column-major, vectors every other element), keeping
    requires_grad; anything else (None, flags, integer batch sizes) as it is."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() == 0:
        return t
    if t.dim() >= 2:
        copy = t.detach().mT.contiguous().mT
    else:
        copy = t.new_empty(2 * t.numel())[::2].copy_(t.detach())
    assert not copy.is_contiguous() or t.numel() <= 1
    return copy.requires_grad_(t.requires_grad)


def raise_alike(error, theirs, ours, args):
    """Calls theirs(*args) and ours(*args), each expected to raise ``error``; returns both messages (ours, theirs)."""
    with pytest.raises(error) as theirs_error:
        theirs(*args)
    with pytest.raises(error) as ours_error:
        ours(*args)
    return str(ours_error.value), str(theirs_error.value)
