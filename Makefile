# Two entry points do all set-up themselves: `make demo` and `make test`.
# Python 3.11, torch 2.14.1. Set FORCE_CUDA=1 to compile the CUDA kernels without a GPU.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CSRC    = $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

.PHONY: setup build test demo bench wheel-check ci gpu-check clang-check clean

setup: $(VENV)/.deps build

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Rebuilt when a kernel source changes; ninja recompiles only what changed.
$(VENV)/.built: $(VENV)/.deps setup.py $(CSRC)
	$(PY) -m pip install --no-build-isolation --no-deps -v -e . > $(VENV)/build.log 2>&1 \
	  || (tail -n 80 $(VENV)/build.log; echo "ldeq: build failed, full log in $(VENV)/build.log"; exit 1)
	grep "ldeq build" $(VENV)/build.log
	$(PY) -c "import ldeq._ext as e; assert e.extension_loaded(), 'ldeq._C did not import'; print('ldeq._C loaded, CUDA kernels:', e.cuda_built())"
	touch $@

build: $(VENV)/.built

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m ldeq.demo

bench: setup
	$(PY) -m pytest -q benchmarks/bench_*.py --benchmark-only

# First thing on a machine with a GPU: the CUDA tests and CUDA benchmarks (< 8 min on one GPU),
# report in benchmarks/results/gpu_check_<gpu>.md. `make setup` compiles CUDA when a GPU is visible.
gpu-check: setup
	$(PY) -c "import sys, torch, ldeq._ext as e; sys.exit(0 if e.cuda_built() or not torch.cuda.is_available() else 1)" \
	  || (rm -f $(VENV)/.built && $(MAKE) build)   # built before a GPU was visible: rebuild with CUDA
	$(PY) benchmarks/gpu_check.py

# Second-compiler check: every C++ source compiled with Clang (zig c++; `pip install ziglang`),
# for x86-64 (vector paths) and aarch64 (portable path only). Compile-only, see the script.
# Installs the ziglang wheel into the venv when it is missing.
clang-check: $(VENV)/.deps
	$(PY) -c "import ziglang" 2>/dev/null || $(PY) -m pip install --quiet ziglang
	$(PY) tools/clang_build_check.py --target x86_64-linux-gnu aarch64-linux-gnu

# Packaging smoke test: wheel from `pip wheel --no-build-isolation .`, installed with its
# dependencies into a fresh virtualenv, then import-and-run from outside the checkout.
wheel-check: setup
	PY=$(abspath $(PY)) .ci/wheel_smoke.sh

# What CI runs: a fresh clone of HEAD in a temporary directory, `make test` (FORCE_CUDA=1), wheel-check.
ci:
	.ci/run

clean:
	rm -rf build *.egg-info ldeq/*.so $(VENV)/.built
