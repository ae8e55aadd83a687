# One command each for the tests and the demo; both do all set-up on a fresh clone:
# a virtual environment, the pinned torch and tools, and the build of the extension.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.13.0
DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.hidiff-built
SOURCES := $(shell find csrc hidiff_kernels -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') \
           setup.py pyproject.toml
export MAX_JOBS ?= 2

.PHONY: test demo kernel-demo bench ctest install info clean

$(DEPS_STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==$(TORCH_VERSION)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

install: $(BUILD_STAMP)

ctest: $(DEPS_STAMP)
	$(VENV)/bin/cmake -S . -B build/cmake -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja)
	$(VENV)/bin/cmake --build build/cmake
	$(VENV)/bin/ctest --test-dir build/cmake --output-on-failure

test: install ctest
	$(PY) -m hidiff_kernels.info
	$(PY) -m pytest tests
	$(PY) -m pytest benchmarks --benchmark-disable -q

# Trains a small HiDiff on the embedded synthetic data (DATA=<Kvasir-SEG folder> to use real images).
demo: install
	$(VENV)/bin/hidiff demo $(if $(DATA),--data $(DATA))

kernel-demo: install
	$(PY) -m hidiff_kernels.demo

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --results-md benchmarks/latest.md

info: install
	$(PY) -m hidiff_kernels.info

clean:
	rm -rf build hidiff_kernels/*.so *.egg-info $(BUILD_STAMP)
