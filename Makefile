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

# Without a GPU the suite runs the Triton kernels on CPU tensors in the interpreter; a GPU machine runs those
# CPU-tensor tests on seqops' CPU route instead (no interpreter there). So where no GPU is visible the attention
# tests run a second time without the interpreter: the CPU half of a GPU machine's run, checked here.
CPU_ROUTE_TESTS := tests/test_attention.py tests/test_attention_cpu.py tests/test_attention_dropout.py \
	tests/test_attention_launch.py tests/test_attention_layout.py tests/test_attention_op_checks.py \
	tests/test_attention_varlen.py \
	tests/test_attention_registration.py tests/test_flops.py tests/test_multihead_attention.py \
	tests/test_examples.py tests/test_onnx_export.py tests/test_export.py tests/test_func_transforms.py

test: build
	rc=0; $(PY) -m pytest tests benchmarks/tests --benchmark-disable $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; \
	if [ $$rc -eq 0 ] && $(PY) -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then \
		echo "== the attention tests again on the CPU route (TRITON_INTERPRET=0), as a GPU machine runs them"; \
		TRITON_INTERPRET=0 $(PY) -m pytest $(CPU_ROUTE_TESTS) -q -m "not gpu" $(PYTEST_ARGS) || rc=$$?; \
		if [ $$rc -eq 5 ]; then rc=0; fi; \
	fi; exit $$rc

bench: build
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: deps
	$(PY) -m ruff check .

clean:
	rm -rf build *.egg-info seqops/_C*.so seqops/_build_info.py
