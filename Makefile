# `make demo` and `make test` each create .venv and install what they need on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.13.0: the CPU wheel where one is provided locally; pass extra pip arguments (for example a
# CPU-only index) through TORCH_PIP_ARGS to avoid a multi-GB CUDA download on a laptop.
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP  := $(VENV)/.installed
# YAML that is YAML as written (Helm templates are checked by rendering them in tests/e2e/test_chart.py).
K8S_YAML := helm/sideformer-tune/Chart.yaml helm/sideformer-tune/values.yaml helm/sideformer-tune/ci \
	helm/sideformer-tune/examples k8s .github/workflows

.PHONY: chart-readme demo test lint bench clean postgres docker image e2e-kind

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

# The container tests build the CPU image offline and run it; this installs docker.io (and debootstrap)
# if missing and starts dockerd if nothing answers.
docker:
	bash tests/e2e/start-docker.sh

# The air-gapped CPU image (debootstrap base + host wheelhouse): sideformer:cpu.
image: docker
	bash image/build-offline.sh

test: $(STAMP) postgres docker
	$(BIN)/ruff check sideformer tests benchmarks image
	$(BIN)/ruff format --check sideformer tests benchmarks image
	$(BIN)/shellcheck tests/pg/install-postgres.sh tests/e2e/start-docker.sh image/*.sh image/stand-ins/*.sh
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck tests/e2e/kind.sh helm/sideformer-tune/files/*.sh
	$(BIN)/yamllint -c .yamllint.yaml $(K8S_YAML)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/python -m pytest

# The whole flow on a kind cluster (needs kind, kubectl, helm and network access; not part of make test).
e2e-kind: image
	bash tests/e2e/kind.sh

# Rewrite helm/sideformer-tune/README.md from README.tmpl.md and values.yaml's comments (make test fails
# while it is stale).
chart-readme: $(STAMP)
	$(BIN)/python -m tests.e2e.chart_readme

lint: $(STAMP)
	$(BIN)/ruff check sideformer tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
