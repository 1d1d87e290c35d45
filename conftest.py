"""Shared by tests/ and benchmarks/tests/: GPU tests skip cleanly where no GPU is visible; every test is seeded."""

import os

import pytest
import torch


def pytest_configure(config):
    # On a GPU, one attention configuration per shape instead of autotuning each (attention_common.AUTOTUNE):
    # the tests check results, and tuning every shape they touch would compile each kernel ~10 times per shape,
    # tens of minutes in all. test_attention_gpu tunes on purpose. An explicit setting wins, and timing runs
    # (pytest benchmarks --benchmark-only) keep autotuning.
    if not config.getoption("benchmark_only", default=False):
        os.environ.setdefault("SEQOPS_ATTENTION_AUTOTUNE", "0")


def pytest_collection_modifyitems(config, items):
    # Queried here, after collection, never at import: collection works on machines without a driver.
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
