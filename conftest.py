"""Shared by tests/ and benchmarks/tests/: GPU tests skip cleanly where no GPU is visible; every test is seeded."""

import pytest
import torch


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
