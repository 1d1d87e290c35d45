"""Loads the compiled seqops._C (which registers torch.ops.seqops.*) with errors that say what to do."""

import importlib

import torch

_REBUILD = "rebuild it with: python -m pip install --no-build-isolation --no-deps -e .  (or `make build`)"


def _build_info():
    try:
        return importlib.import_module("seqops._build_info")
    except ImportError:
        return None


def load():
    info = _build_info()
    if info is None:
        raise ImportError(f"seqops' compiled extension has not been built; {_REBUILD}")
    if info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"seqops was built against torch {info.TORCH_VERSION} but torch {torch.__version__} is "
            f"installed; a C++ extension must be built against the torch it runs with; {_REBUILD}"
        )
    try:
        importlib.import_module("seqops._C")
    except ImportError as err:
        raise ImportError(f"seqops._C failed to load ({err}); {_REBUILD}") from err
    return info


def has_cuda_kernels():
    info = _build_info()
    return bool(info and info.WITH_CUDA)
