"""Builds seqops._C (C++ always, CUDA when asked for or found). Metadata lives in pyproject.toml.

Environment:
  SEQOPS_CUDA=auto|0|1   auto: build CUDA kernels when torch is a CUDA build and a toolkit is found
                         (a visible GPU is not required); 1: fail loudly if that is impossible; 0: CPU only.
  TORCH_CUDA_ARCH_LIST   GPU architectures; with no GPU visible and none given, DEFAULT_CUDA_ARCHS below.
  SEQOPS_CPU_ISA=auto|avx512|avx2|default
                         auto: the widest of AVX-512 / AVX2+FMA vector kernels that the building x86-64 CPU
                         has (pip builds from source on the machine that runs it); default: portable code.
  MAX_JOBS               parallel compile jobs (torch.utils.cpp_extension honours it).
  SEQOPS_DEBUG=1         -O0 -g, for gdb / compute-sanitizer line info.
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# H100/H200 (sm_90) is the target; sm_80 covers A100-class; +PTX lets newer GPUs JIT the sm_90 code.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _find_cuda_home():
    """The toolkit root. torch guesses dirname(dirname(which nvcc)), wrong when nvcc is a wrapper script."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for root in candidates:
        if os.path.exists(os.path.join(root, "bin", "nvcc")) and os.path.exists(
            os.path.join(root, "include", "cuda_runtime.h")
        ):
            return root
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ.setdefault("CUDA_HOME", _cuda_home)

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    mode = os.environ.get("SEQOPS_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"SEQOPS_CUDA must be auto, 0 or 1, not {mode!r}")
    if mode == "0":
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        reasons.append("no CUDA toolkit found (set CUDA_HOME)")
    if reasons:
        if mode == "1":
            sys.exit("SEQOPS_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(reasons))
        print("seqops: building without CUDA kernels: " + "; ".join(reasons))
        return False
    return True


def _cpu_isa():
    mode = os.environ.get("SEQOPS_CPU_ISA", "auto").lower()
    if mode not in ("auto", "avx512", "avx2", "default"):
        sys.exit(f"SEQOPS_CPU_ISA must be auto, avx512, avx2 or default, not {mode!r}")
    if mode != "auto":
        return mode
    if platform.machine() not in ("x86_64", "AMD64"):
        return "default"  # aarch64: ATen's NEON vectors are used without extra flags
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return "default"
    if all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma")):
        return "avx512"
    return "avx2" if "avx2" in flags and "fma" in flags else "default"


def _nvidia_pip_includes():
    """cuBLAS/cuSPARSE headers of the nvidia-*-cu13 pip packages, which a bare toolkit may lack."""
    dirs = []
    for base in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cublas/include", "nvidia/cusparse/include"):
            path = os.path.join(base, sub)
            if os.path.isdir(path) and path not in dirs:
                dirs.append(path)
    return dirs


BUILD_INFO = {}  # filled by extensions(), written by BuildWithInfo when the extension is actually built


def _build_info_text():
    return "# Written by setup.py when the extension is built; read by seqops._extension.\n" + "".join(
        f"{key} = {value!r}\n" for key, value in BUILD_INFO.items()
    )


def _check_compiler():
    """One clear line where there is no C++ compiler, instead of a long traceback that buries it."""
    compiler = os.environ.get("CXX", "c++").split()[0]
    if shutil.which(compiler) is None:
        sys.exit(f"seqops: no C++ compiler found ({compiler!r}); install one (g++ or clang++, e.g. "
                 "`apt install g++`) or point CXX at it")


class BuildWithInfo(BuildExtension.with_options(use_ninja=True)):
    """build_ext that also records how seqops._C was built (seqops/_build_info.py): in the source tree for
    in-place and editable builds, in build_lib for wheels (build_py has already run by then). A wheel's record
    stays out of the source tree, where it would misdescribe an editable install's extension."""

    def run(self):
        _check_compiler()
        super().run()
        in_source = self.inplace or getattr(self, "editable_mode", False)
        targets = [os.path.join(ROOT, "seqops")] if in_source else []
        if not self.inplace:
            targets.append(os.path.join(self.build_lib, "seqops"))
        for folder in targets:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "_build_info.py"), "w") as f:
                f.write(_build_info_text())


def extensions():
    with_cuda = _want_cuda()
    isa = _cpu_isa()
    debug = os.environ.get("SEQOPS_DEBUG", "0") == "1"

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/rnn/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -g0: Python's own CFLAGS carry -g, which made the CPU build's library 20x larger (13.7 MB, 0.66 MB without)
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # No -std: torch.utils.cpp_extension picks the standard its headers need (C++20 for torch 2.14).
    cxx += ["-fdiagnostics-color=always", "-Wall", "-Wno-unused-function"]
    # Selects ATen's Vectorized<> of that width (SLEEF math, exported by libtorch_cpu) in our own namespace.
    if isa == "avx512":
        cxx += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"]
    elif isa == "avx2":
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    # at::parallel_for is a header template: without OpenMP in our own compile it runs every loop on one thread.
    # torch's wheels use OpenMP (libgomp) on Linux; the extension shares that runtime and its thread pool.
    link = []
    if sys.platform.startswith("linux"):
        cxx += ["-fopenmp"]
        link += ["-fopenmp"]
    macros = [("Py_LIMITED_API", "0x030a0000")]
    include_dirs = [os.path.join(ROOT, "csrc")]

    archs = None
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        macros.append(("SEQOPS_WITH_CUDA", "1"))
        include_dirs += _nvidia_pip_includes()
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "(from the visible GPU)")
        nvcc = ["-O0", "-G"] if debug else ["-O3", "-lineinfo"]
        # No --use_fast_math: fp32 results must match cuDNN/ATen to fp32 tolerance (precise expf/tanhf).
        nvcc += ["--expt-relaxed-constexpr", "--extended-lambda"]
        ext = CUDAExtension(
            "seqops._C",
            sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "seqops._C",
            sources,
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
            py_limited_api=True,
        )
    BUILD_INFO.update(
        TORCH_VERSION=torch.__version__, TORCH_CUDA_VERSION=torch.version.cuda, WITH_CUDA=with_cuda,
        CUDA_ARCH_LIST=archs, CPU_ISA=isa,
    )
    print(f"seqops: CUDA={with_cuda} archs={archs} cpu_isa={isa} torch={torch.__version__}")
    return [ext]


setup(
    packages=["seqops", "seqops.ops", "seqops.nn", "seqops.reference", "seqops.kernels"],
    package_dir={"seqops.kernels": "kernels"},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildWithInfo},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
