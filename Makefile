# The environment's location is a variable so CI can keep one (6.6 GB with torch's CUDA build) outside
# its fresh clones: `make test VENV=~/.cache/perceiver-stream/venv`.
VENV ?= .venv
PYTHON ?= python3.11
PY := $(VENV)/bin/python
# Reinstall when pyproject.toml changes or the venv last served another checkout (editable install).
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)-$(shell echo $(CURDIR) | sha256sum | cut -c1-12)
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
# pytest-xdist workers; each gets its share of the cores (tests/conftest.py). Slow tests are handed out first.
TEST_WORKERS ?= 2

.PHONY: install test lint bench quickstart gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(TEST_ENV) $(PY) -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: install
	$(PY) -m ruff check .

bench: install
	$(TEST_ENV) $(PY) bench/model_step.py
	$(TEST_ENV) $(PY) bench/ac_memory.py
	$(TEST_ENV) $(PY) bench/convert_throughput.py
	$(TEST_ENV) $(PY) bench/data_throughput.py
	$(TEST_ENV) $(PY) bench/lamb_step.py
	$(TEST_ENV) $(PY) bench/train_smoke.py

# On a CUDA machine (README, "GPU"); the lent GPU machine has no venv of ours, so its python3 is used there.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(TEST_ENV) $(GPU_PYTHON) bench/gpu_check.py

quickstart: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) quickstart.py

clean:
	rm -rf .venv build *.egg-info
