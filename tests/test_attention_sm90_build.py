"""The attention kernels build for sm90 (H100/H200) with Triton's own compiler and ptxas, on this machine,
with or without a GPU: every kernel of a forward and backward, in the tile configurations it can run with, and
each configuration within sm90's shared memory per block. The interpreter runs the kernels' logic; only a
build finds what the GPU compiler rejects (a type it cannot lower, a tile that does not fit)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# On a GPU machine the kernels are built for the GPU itself, and run (test_attention_gpu.py and the each_device
# runs): these stand-in builds would only take its few minutes.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU builds and runs the kernels themselves")

SCRIPT = Path(__file__).with_name("sm90_build.py")
SM90_SHARED_LIMIT = 232448

# The first configuration of each autotuner's pruned list (what runs untuned, SEQOPS_ATTENTION_AUTOTUNE=0):
# each dtype, padded and separate value head dims, the largest head dim, every mask kind, causal, dropout.
FIRST_CONFIG_CASES = [
    {"dtype": "bfloat16", "E": 128, "mask": "float", "dropout": 0.1},  # the most shared memory: dQ's 225 KB
    {"dtype": "float16", "E": 128, "causal": True, "dropout": 0.1},
    {"dtype": "bfloat16", "E": 64, "mask": "bool"},
    {"dtype": "float16", "E": 40},
    {"dtype": "bfloat16", "E": 96, "EV": 64},
    {"dtype": "bfloat16", "E": 256},
    {"dtype": "float32", "E": 64, "mask": "float", "dropout": 0.1},
    {"dtype": "float32", "E": 128, "causal": True},
    {"dtype": "bfloat16", "E": 128, "varlen": True, "causal": True, "dropout": 0.1},  # packed sequences
    {"dtype": "float32", "E": 64, "varlen": True},
]
# Every configuration autotuning tries, at the common shape.
ALL_CONFIG_CASES = [{"dtype": "bfloat16", "E": 128}]


def _build(cases, which):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), json.dumps(cases), which], capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def builds():
    return _build(FIRST_CONFIG_CASES, "first") + _build(ALL_CONFIG_CASES, "all")


def _name(row):
    keys = ("dtype", "E", "EV", "varlen", "mask", "causal", "dropout", "kernel", "config", "tma")
    return " ".join(f"{k}={row[k]}" for k in keys if k in row)


def test_every_kernel_builds_for_sm90(builds):
    failed = [f"{_name(row)}: {row['error']}" for row in builds if "error" in row]
    assert not failed, "\n".join(failed)
    built = {(row["dtype"], row["kernel"], row["tma"]) for row in builds}
    for kernel in ("fwd", "dkdv", "dq"):  # each kernel with and without TMA; fp32 never takes TMA
        assert {("bfloat16", kernel, False), ("bfloat16", kernel, True), ("float32", kernel, False)} <= built
        assert ("float32", kernel, True) not in built
    assert ("bfloat16", "delta", None) in built
    assert len({tuple(row["config"]) for row in builds if row["kernel"] == "dkdv"}) >= 4
    assert {(kernel, tma) for kernel in ("fwd", "dkdv", "dq") for tma in (False, True)} <= {
        (row["kernel"], row["tma"]) for row in builds if row.get("varlen")}


def test_every_configuration_fits_sm90_shared_memory(builds):
    # The autotuners' pruning estimates shared memory; a configuration it keeps that needs more than the
    # per-block maximum fails at launch on the GPU.
    over = [f"{_name(row)}: {row['shared']} bytes" for row in builds if row.get("shared", 0) > SM90_SHARED_LIMIT]
    assert not over, "\n".join(over)
