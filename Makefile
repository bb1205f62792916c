# make demo   set up, build, train a colour-equivariant rollconv network against a plain CNN on
#             digits in rolled colour palettes (examples/train_digits.py)
# make test   set up, build, run the Python tests (pytest), test the CPU-only and the
#             emulated CUDA builds, and run the C++ tests (ctest) with a subset of the Python
#             tests under AddressSanitizer + UBSan (sanitizer-test)
# make cpp-test  the C++ tests alone on an optimized build (build/cmake; quick to rerun)
# make test-emulated-cuda   build csrc/cuda/primitives.cu for the host into build/emulated-cuda
#             and run the CUDA tests there on CPU tensors
# make build  set up and build (incremental: ninja recompiles only what changed)
# make bench  set up, build, benchmark against torch (writes bench/results/)
# make gpu-check PYTHON=python3
#             on a GPU machine, with the Python that has torch there (no venv, no downloads):
#             build for the local GPU's architecture into build/gpu-check, run every CUDA test,
#             then a short GPU benchmark (one table; results in bench/results/gpu_check.md)
#
# Everything lives in a virtual environment in .venv with the pinned packages of
# requirements.txt. CUDA kernels are compiled when a CUDA toolkit is found (see setup.py;
# FORCE_ONLY_CPU=1 for a CPU-only build, FORCE_CUDA=1 to insist on CUDA).

PYTHON_SYSTEM ?= python3
# The Python of `make gpu-check` (its own torch, no venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu') setup.py pyproject.toml
# DEBUG=1: -O0 -g in every build (setup.py reads it from the environment; CMake: Debug).
DEBUG ?= 0
export DEBUG
CMAKE_BUILD_TYPE := $(if $(filter 1,$(DEBUG)),Debug,Release)
CMAKE_DIR := build/cmake$(if $(filter 1,$(DEBUG)),-debug)
# The build's stamp names its kind, so that switching DEBUG rebuilds.
BUILT := $(VENV)/.built-$(if $(filter 1,$(DEBUG)),debug,release)
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all demo test build bench gpu-check venv cpp-test py-test cpu-only-test test-emulated-cuda sanitizer-test info clean

all: build

venv: $(VENV)/.deps

$(VENV)/.deps: requirements.txt
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

build: $(BUILT)

# pip install -e re-runs only when a source changed; ninja then recompiles only the
# changed files (objects are kept in build/cuda or build/cpu, see setup.py).
$(BUILT): $(VENV)/.deps $(SOURCES)
	rm -f $(VENV)/.built-*
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

info: build
	$(PY) -m rollconv info

demo: build
	$(PY) -m rollconv info
	$(PY) examples/train_digits.py

# The C++ tests run once, sanitized (sanitizer-test): one build of every source serves them
# and the Python tests under the sanitizers.
test: cpu-only-test test-emulated-cuda sanitizer-test py-test

$(CMAKE_DIR)/build.ninja: CMakeLists.txt $(VENV)/.deps
	$(VENV)/bin/cmake -S . -B $(CMAKE_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(CMAKE_BUILD_TYPE) -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"

cpp-test: $(CMAKE_DIR)/build.ninja
	$(VENV)/bin/cmake --build $(CMAKE_DIR)
	cd $(CMAKE_DIR) && $(abspath $(VENV)/bin/ctest) --output-on-failure

py-test: build
	$(PY) -m rollconv info
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The CPU-only build (FORCE_ONLY_CPU=1) compiled on its own and tested from build/,
# without touching the installed package.
cpu-only-test: $(VENV)/.deps
	bash tests/cpu_only_build.sh $(PY)

# The emulated CUDA build (ROLLCONV_EMULATE_CUDA=1): the CUDA kernels compiled for the host
# and run on CPU tensors, with the CUDA tests, in build/emulated-cuda.
test-emulated-cuda: $(VENV)/.deps
	bash tests/emulated_cuda_build.sh $(PY)

# The C++ tests and a subset of the Python tests under AddressSanitizer + UBSan, on one
# CMake build of every source (build/sanitize; any report fails the run).
sanitizer-test: $(VENV)/.deps
	bash tests/sanitizer_build.sh $(PY)

# make bench BENCH_ARGS="--quick" (or --only TEXT, --batch N, --size S, --threads N, --device cuda)
bench: build
	$(PY) bench/run.py $(BENCH_ARGS)

gpu-check:
	bash tests/gpu_check.sh $(PYTHON)

clean:
	rm -rf build rollconv/*.so $(VENV)/.built-*
