# The environment's location is a variable so CI can keep one (6.6 GB with torch's CUDA build) outside
# its fresh clones: `make test VENV=~/.cache/perceiver-stream/venv`.
VENV ?= .venv
PYTHON ?= python3.11
PY := $(VENV)/bin/python
# Reinstall when pyproject.toml changes or the venv last served another checkout (editable install); each target
# installs the extras it needs: quickstart, bench, or dev (everything, for the tests).
KEY := $(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(shell echo $(CURDIR) | sha256sum | cut -c1-12)
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# pytest-xdist workers; each gets its share of the cores (tests/conftest.py). Slow tests are handed out first.
TEST_WORKERS ?= 2
BENCHMARKS := model_step ac_memory convert_throughput data_throughput lamb_step train_smoke remote_throughput

.PHONY: install test lint bench quickstart gpu-check clean

install: $(VENV)/.installed-dev-$(KEY)

$(VENV)/.installed-%-$(KEY): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$*]'
	rm -f $(VENV)/.installed-$*-*
	touch $@

test: install
	$(TEST_ENV) $(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: install
	$(PY) -m ruff check .

bench: $(VENV)/.installed-bench-$(KEY)
	set -e; for b in $(BENCHMARKS); do echo "==> bench/$$b.py"; $(TEST_ENV) $(PY) bench/$$b.py; done

# On a CUDA machine (gpu/README.md); the lent GPU machine has no venv of ours, so its python3 is used there.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(TEST_ENV) $(GPU_PYTHON) gpu/gpu_check.py

quickstart: $(VENV)/.installed-quickstart-$(KEY)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) quickstart.py

clean:
	rm -rf .venv build *.egg-info
