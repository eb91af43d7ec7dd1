# make test: create .venv when missing, install fasttx (building the CUDA extension when nvcc is
# here) with its test extras, run the whole test suite. make bench: run the benchmarks.
PYTHON ?= python3
VENV ?= .venv
# Only installed when the venv cannot already import torch (the venv sees the system's packages,
# so a machine that ships torch, like the GPU machine, keeps its own).
TORCH_SPEC ?= torch==2.14.1
# Architectures of the CUDA extension; CI builds both (see README, "Building").
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0a
MAX_JOBS ?= $(shell nproc)
BENCH_OUT ?= bench-out

export TORCH_CUDA_ARCH_LIST MAX_JOBS

PY := $(VENV)/bin/python
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: test bench install clean

install: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m fasttx bench --op all --out $(BENCH_OUT)

clean:
	rm -rf build *.egg-info fasttx/_C*.so $(BENCH_OUT)

# make gpu-check: the one-call validation on a lent GPU (README, "GPU validation"). It uses the
# python of .venv when there is one, else this machine's python3, with its torch as it is: nothing
# is downloaded; fasttx is installed editable into it and fasttx._C built for the visible GPU only,
# within GPU_CHECK_BUDGET seconds of wall time. Without a GPU it is the CPU dry run.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_OUT ?= gpu-check-out
GPU_CHECK_BUDGET ?= 480
GPU_CHECK_ARGS ?=

.PHONY: gpu-check
gpu-check:
	$(GPU_CHECK_PYTHON) -m fasttx.cli.gpu_check --out $(GPU_CHECK_OUT) --budget $(GPU_CHECK_BUDGET) $(GPU_CHECK_ARGS)
