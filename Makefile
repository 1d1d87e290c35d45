# Two commands do all the set-up on a fresh machine:
#   make test    create/reuse .venv, install pinned deps, build seqops (C++ and, where possible, CUDA), run the tests
#   make bench   the same set-up, then the benchmark suite (GPU when one is visible, else CPU)
# SEQOPS_SYSTEM_PYTHON=1 uses the current python3 with what it already has installed (no venv, no network),
# e.g. on a GPU machine whose torch is preinstalled.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS
PYTEST_ARGS ?=
BENCH_ARGS ?=

ifeq ($(SEQOPS_SYSTEM_PYTHON),1)
PY := python3
DEPS :=
else
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
endif

.PHONY: test bench build deps lint clean

$(VENV)/.deps-installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=23.1" setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

deps: $(DEPS)

build: deps
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import seqops; print(seqops.build_summary())"

test: build
	rc=0; $(PY) -m pytest tests benchmarks/tests --benchmark-disable $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

bench: build
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: deps
	$(PY) -m ruff check .

clean:
	rm -rf build *.egg-info seqops/_C*.so seqops/_build_info.py
