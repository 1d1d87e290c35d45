import pytest


@pytest.fixture
def full_benchmarks(request):
    """True under `--benchmark-only` / `--benchmark-enable`: time for real. Otherwise (make test) every
    benchmark runs once as a smoke check, whether or not --benchmark-disable was given."""
    option = request.config.getoption
    return bool(option("benchmark_only", False) or option("benchmark_enable", False))
