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

.PHONY: setup test demo bench clean help

help:
	@echo "make demo   set up, convert DATA=dir (default: a generated ImageFolder), train with both loaders, compare"
	@echo "make test   set up and run the test suite (what CI runs)"
	@echo "make bench  converter / reader benchmarks on real JPEGs (prints a table)"
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
	$(PY) bench/bench_lmdb.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
