"""Loads the compiled seqops._C (which registers torch.ops.seqops.*) with errors that say what to do."""

import importlib

import torch

_REBUILD = ("rebuild it against the installed torch: python -m pip install --no-build-isolation --no-deps "
            "--force-reinstall <seqops source directory or sdist>  (in a checkout: pip install "
            "--no-build-isolation --no-deps -e .)")


def _build_info():
    try:
        return importlib.import_module("seqops._build_info")
    except ImportError:
        return None


# The instruction sets setup.py compiles each SEQOPS_CPU_ISA for, as torch.cpu.get_capabilities() names them
_ISA_FEATURES = {
    "avx512": ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq", "fma3", "f16c"),
    "avx2": ("avx2", "fma3", "f16c"),
}


def _missing_cpu_features(isa):
    """The features of the build's ISA that the running CPU is known to lack: a feature the table does not name
    (another torch's names) is not held against it."""
    needed = _ISA_FEATURES.get(isa, ())
    try:
        capabilities = torch.cpu.get_capabilities() if needed else {}
    except (AttributeError, RuntimeError):
        return []
    return [feature for feature in needed if capabilities.get(feature) is False]


def load():
    info = _build_info()
    if info is None:
        raise ImportError(f"seqops' compiled extension has not been built; {_REBUILD}")
    if info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"seqops was built against torch {info.TORCH_VERSION} but torch {torch.__version__} is "
            f"installed; a C++ extension must be built against the torch it runs with; {_REBUILD}"
        )
    missing = _missing_cpu_features(getattr(info, "CPU_ISA", "default"))
    if missing:
        raise ImportError(
            f"seqops' CPU kernels were built for {info.CPU_ISA.upper()}, which this CPU lacks ({', '.join(missing)}): "
            "they would stop the process with an illegal instruction. Build seqops on this machine "
            "(SEQOPS_CPU_ISA=auto picks its vectors), or build a portable binary with SEQOPS_CPU_ISA=avx2 or "
            f"default; {_REBUILD}"
        )
    try:
        importlib.import_module("seqops._C")
    except ImportError as err:
        raise ImportError(f"seqops._C failed to load ({err}); {_REBUILD}") from err
    return info


def has_cuda_kernels():
    info = _build_info()
    return bool(info and info.WITH_CUDA)
