# make test: create .venv when missing, install fasttx (building the CUDA extension when nvcc is
# here) with its test extras, run the whole test suite. make bench: run the benchmarks.
# make test-compat TORCH=2.11.0: the same suite on another torch and the Triton it pins (README,
# "Supported versions").
PYTHON ?= python3
VENV ?= .venv
# Only installed when the venv cannot already import torch (the venv sees the system's packages,
# so a machine that ships torch, like the GPU machine, keeps its own).
TORCH_SPEC ?= torch==2.14.1
# Architectures of the CUDA extension; CI builds both (see README, "Building").
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0a
MAX_JOBS ?= $(shell nproc)
BENCH_OUT ?= bench-out
TORCH ?= 2.11.0

export TORCH_CUDA_ARCH_LIST MAX_JOBS

PY := $(VENV)/bin/python
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: test bench install clean test-compat

install: $(VENV)/.installed

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install --no-build-isolation -e ".[test]"
	touch $@

# The suite runs on TEST_WORKERS pytest-xdist processes, a test file at a time each (--dist loadfile: a
# file's module fixtures, such as an emulator's build, run once). The emulated CUDA kernels run on one
# host thread each (tests/cuda_emulator/cta.h), so a 2-core machine runs two files at once.
TEST_WORKERS ?= 2
PYTEST_ARGS := -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The other torch goes into its own venv without its dependencies: everything else (the CUDA 13
# libraries torch loads, numpy, pytest, pip, setuptools, ...) comes from $(VENV), whose
# site-packages are appended to the compat venv's path as plain .pth lines, so that $(VENV)'s own
# .pth files (its editable fasttx among them) stay out. fasttx is installed editable from a copy
# of this working tree under the compat venv, so its CUDA extension is compiled against the other
# torch's headers without overwriting the one $(VENV) uses; build_ext keeps its objects in
# $(COMPAT_SRC)/build, so a rerun recompiles only what changed (pip's editable build would start
# from scratch every time).
COMPAT_VENV := .venv-torch$(TORCH)
COMPAT_PY := $(abspath $(COMPAT_VENV))/bin/python
COMPAT_SRC := $(COMPAT_VENV)/src

$(COMPAT_VENV)/.installed: $(VENV)/.installed
	test -x $(COMPAT_PY) || $(PYTHON) -m venv --system-site-packages --without-pip $(COMPAT_VENV)
	$(PY) -c "import sys; print(*(p for p in sys.path if p.endswith('site-packages')), sep='\n')" \
		> "$$($(COMPAT_PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/zz_main_venv.pth"
	$(COMPAT_PY) -m pip install --no-deps torch==$(TORCH)
	$(COMPAT_PY) -m pip install --no-deps "$$($(COMPAT_PY) -c 'from importlib.metadata import requires; \
		print(next(r.split(";")[0] for r in requires("torch") if r.startswith("triton")))')"
	# timm (tests/integrations) imports torchvision, whose compiled ops fit one torch release only:
	# torchvision 0.(minor + 15) goes with torch 2.minor.
	$(COMPAT_PY) -m pip install --no-deps "torchvision==0.$$(( $$(echo $(TORCH) | cut -d. -f2) + 15 )).*"
	touch $@

test-compat: $(COMPAT_VENV)/.installed
	mkdir -p $(COMPAT_SRC)
	find $(COMPAT_SRC) -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	git ls-files -z --cached --others --exclude-standard \
		| tar --null --ignore-failed-read -T - -cf - | tar -xf - -C $(COMPAT_SRC)
	cd $(COMPAT_SRC) && FASTTX_BUILD_CUDA=0 $(COMPAT_PY) -m pip install -q --no-build-isolation --no-deps -e .
	cd $(COMPAT_SRC) && $(COMPAT_PY) setup.py -q build_ext --inplace
	cd $(COMPAT_SRC) && $(COMPAT_PY) -m pytest $(PYTEST_ARGS)

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

# make kernel-report: the Triton kernels compiled for sm_90a without a GPU, and what their code shows
# (registers, spills, shared memory, load/store widths, cp.async / TMA, MMAs, pipelining) at the
# launchers' configurations for the benchmark shapes; README, "Benchmarks". KERNEL_REPORT_ARGS=--quick
# for the few kernels the test compiles.
KERNEL_REPORT_OUT ?= $(BENCH_OUT)/kernel-report
KERNEL_REPORT_ARGS ?=

.PHONY: kernel-report
kernel-report: install
	env -u TRITON_INTERPRET $(PY) -m fasttx.benchmarks.kernel_report --out $(KERNEL_REPORT_OUT) $(KERNEL_REPORT_ARGS)
