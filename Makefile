# `make repro` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test test-fast bench lint ui system-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Debian's Fashion-MNIST package is the offline source of Fashion-MNIST; installed only
# when missing and we are root. Failure is not fatal: the fetch stage lists its sources.
system-deps:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	    || echo "warning: could not install dataset-fashion-mnist"; \
	fi

repro: setup
	@if grep -Eq '^\s*dataset:\s*fashion_mnist' params.yaml; then $(MAKE) --no-print-directory system-deps; fi
	$(BIN)/dvc repro

# Everything (what CI runs); `make test-fast` skips the tests marked slow (end-to-end DVC runs).
# Two test processes, each taking whole test files (module fixtures stay in one process).
test: setup system-deps
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# Time to an answer, side by side (after `make repro`): reports/bench.json, README and docs tables.
bench: setup
	$(BIN)/python -m benchmarks.bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# MLflow's UI over the project's store, on this machine only: http://127.0.0.1:$(UI_PORT)
UI_PORT ?= 5000
ui: setup
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
