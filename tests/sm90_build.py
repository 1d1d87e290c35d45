"""Builds the attention kernels for sm90 (H100/H200) on a machine without a GPU, and reports what each build
needs: `python tests/sm90_build.py` prints one JSON line per build. Run by tests/test_attention_sm90_build.py
in a process of its own, since it swaps Triton's active driver for one that reports an sm90 target.

Each launcher runs as in use, on CPU tensors, up to its launch, which is captured instead: the arguments,
the constants and the tile configurations its autotuner would try (after pruning) are then compiled down
to a cubin by Triton's own pipeline and the ptxas it ships. No kernel runs.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter's
os.environ["SEQOPS_ATTENTION_AUTOTUNE"] = "1"  # the autotuners' full pruned lists (the test suite turns it off)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402


class Sm90Driver:
    """Just enough of a CUDA driver for compiling: the target, and a device and stream that are never used."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("sm90_build compiles only")


driver.set_active(Sm90Driver())

from seqops.kernels import attention_bwd, attention_common, attention_fwd  # noqa: E402

captured = []


def capture(launcher, args, meta, streamed):
    captured.append((args, dict(meta)))


attention_fwd.launch_with_optional_tma = capture
attention_bwd.launch_with_optional_tma = capture


class RecordLaunch:
    """Stands in for a kernel the backward launches directly (delta): records the call instead."""

    def __getitem__(self, grid):
        return lambda *args, **meta: captured.append((args, dict(meta)))


delta_kernel = attention_bwd.attention_bwd_delta_kernel
attention_bwd.attention_bwd_delta_kernel = RecordLaunch()


def inputs(B, H, Hkv, L, S, E, EV, dtype, mask):
    q = torch.randn(B, H, L, E, dtype=dtype)
    k = torch.randn(B, Hkv, S, E, dtype=dtype)
    v = torch.randn(B, Hkv, S, EV, dtype=dtype)
    m = None
    if mask == "bool":
        m = torch.ones(L, S, dtype=torch.bool).expand(B, H, L, S)
    elif mask == "float":
        m = torch.zeros(L, S, dtype=dtype).expand(B, H, L, S)
    return q, k, v, m


def launches(case):
    """[(kernel name, jit function, its sm90 autotuner or None, args, meta)] of one forward and backward."""
    dtype = getattr(torch, case["dtype"])
    E, EV = case["E"], case.get("EV", case["E"])
    causal, dropout, mask = case.get("causal", False), case.get("dropout", 0.0), case.get("mask")
    seed = torch.tensor([1234], dtype=torch.int64)
    captured.clear()
    if case.get("varlen"):  # packed sequences of 300 and 212 rows
        cu = torch.tensor([0, 300, 512], dtype=torch.int32)
        q, k, v = (torch.randn(512, h, d, dtype=dtype) for h, d in ((4, E), (2, E), (2, EV)))
        attention_fwd.attention_varlen_forward(q, k, v, cu, cu, 300, 300, E**-0.5, causal, dropout, seed)
        out, do = (torch.randn(512, 4, EV, dtype=dtype) for _ in range(2))
        attention_bwd.attention_varlen_backward(do, q, k, v, out, torch.randn(4, 512), cu, cu, 300, 300, E**-0.5,
                                                causal, dropout, seed)
    else:
        q, k, v, m = inputs(2, 4, 2, 512, 512, E, EV, dtype, mask)
        attention_fwd.attention_forward(q, k, v, m, E**-0.5, causal, dropout, seed)
        out, do = (torch.randn(2, 4, 512, EV, dtype=dtype) for _ in range(2))
        lse = torch.randn(2, 4, 512)
        attention_bwd.attention_backward(do, q, k, v, out, lse, m, E**-0.5, causal, dropout, seed, mask == "float")
    (fwd_args, fwd_meta), (delta_args, delta_meta), (dkdv_args, dkdv_meta), (dq_args, dq_meta) = captured
    return [
        ("delta", delta_kernel, None, delta_args, delta_meta),
        ("fwd", attention_fwd.attention_fwd_kernel, attention_fwd._fwd_sm90, fwd_args, fwd_meta),
        ("dkdv", attention_bwd.attention_bwd_dkdv_kernel, attention_bwd._dkdv_sm90, dkdv_args, dkdv_meta),
        ("dq", attention_bwd.attention_bwd_dq_kernel, attention_bwd._dq_sm90, dq_args, dq_meta),
    ]


def stack_bytes(compiled):
    """Per-thread stack (register spills) of the cubin, from the cuobjdump Triton ships."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):  # a Triton build without it: the build itself is what the test checks
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"STACK:(\d+)", usage)
    registers = re.search(r"REG:(\d+)", usage)
    return (int(found.group(1)) if found else None), (int(registers.group(1)) if registers else None)


def build(case, which):
    """which: 'first' (the configuration that runs untuned) or 'all' (every one autotuning would try)."""
    rows = []
    for name, jit, tuned, args, meta in launches(case):
        named = dict(zip(jit.arg_names, args))
        if tuned is None:  # launched with fixed constants, default warps and stages
            configs, constants, tma_choices = [triton.Config({}, num_warps=4, num_stages=3)], meta, (None,)
        else:
            constants = {key: val for key, val in meta.items() if key not in ("BLOCK_M", "BLOCK_N")}
            configs = tuned.early_config_prune(tuned.configs, named, **constants)
            if which == "first":
                configs = configs[:1]
            tma_choices = (False, True) if attention_common.tma_suits(named["Q"].dtype) else (False,)
        for config in configs:
            for tma in tma_choices:
                tiles = [config.kwargs.get("BLOCK_M", meta.get("BLOCK_M")), config.kwargs.get("BLOCK_N")]
                row = dict(case, kernel=name, tma=tma, config=[*tiles, config.num_warps, config.num_stages])
                extra = {} if tma is None else {"USE_TMA": tma}
                try:
                    compiled = jit.warmup(*args, grid=(1,), num_warps=config.num_warps,
                                          num_stages=config.num_stages, **constants, **config.kwargs, **extra)
                except Exception as err:  # noqa: BLE001 - reported, and failed by the test
                    row["error"] = f"{type(err).__name__}: {str(err)[-2000:]}"
                else:
                    row["shared"] = compiled.metadata.shared
                    row["stack"], row["registers"] = stack_bytes(compiled)
                rows.append(row)
    return rows


def main(argv):
    cases = json.loads(argv[1]) if len(argv) > 1 else [{"dtype": "bfloat16", "E": 128}]
    which = argv[2] if len(argv) > 2 else "first"
    for case in cases:
        for row in build(case, which):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv)
