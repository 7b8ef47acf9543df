# `make demo` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel where one is provided locally; pass extra pip arguments (for example a
# CPU-only index) through TORCH_PIP_ARGS to avoid a multi-GB CUDA download on a laptop.
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sideformer demo

# The tuning tests start a throwaway PostgreSQL server; this installs Debian's package if missing.
postgres:
	bash tests/pg/install-postgres.sh

test: $(STAMP) postgres
	$(BIN)/ruff check sideformer tests benchmarks
	$(BIN)/ruff format --check sideformer tests benchmarks
	$(BIN)/shellcheck tests/pg/install-postgres.sh
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check sideformer tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
