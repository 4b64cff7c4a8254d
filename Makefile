# `make repro` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup lock repro labs lab test test-fast bench bench-cgan lint ui play any-digit compare system-deps fashion-mnist clean

setup: $(STAMP)

# Exactly what requirements.lock pins (runtime and dev), each file checked against its hash;
# then the project itself, editable and without dependencies (they are all in the lock).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Re-resolve pyproject.toml (dev extra included) into requirements.lock, for CPython 3.11 on
# Linux x86_64, with the hash of every file pip may take, from the registry or from this
# machine's wheel folders (pip's own configuration). Keeps the pins that still fit; to move
# them all: make lock LOCK_ARGS=--upgrade, or one: LOCK_ARGS='--upgrade-package pandas'.
# Under a minute when the pins are kept; a cold resolve took 17 minutes here. Then
# `make setup` installs the new lock.
lock: $(STAMP)
	$(BIN)/pip-compile --allow-unsafe --extra=dev --generate-hashes --no-emit-find-links \
	  --no-emit-index-url --output-file=$(LOCK) --strip-extras $(LOCK_ARGS) pyproject.toml

# Debian packages, each installed when its file (a glob) is missing and we are root, else
# named in a warning: dataset-fashion-mnist is the offline source of Fashion-MNIST; the tests
# use chromium (the report and `make ui` in a browser) and postgresql (the team server's
# database; a machine may have its client and not its server).
FASHION_MNIST := /usr/share/datasets/fashion-mnist
define apt-install
	@missing=$$(for pair in $(1); do ls -d $${pair%%=*} >/dev/null 2>&1 || echo "$${pair#*=}"; \
	  done | xargs); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's $$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	      >/dev/null || echo "warning: could not install $$missing"; \
	  else echo "warning: missing Debian packages: $$missing (run as root: make system-deps)"; fi; \
	fi
endef

system-deps:
	$(call apt-install,$(FASHION_MNIST)=dataset-fashion-mnist /usr/bin/chromium=chromium \
	  /usr/lib/postgresql/*/bin/initdb=postgresql)

fashion-mnist:
	$(call apt-install,$(FASHION_MNIST)=dataset-fashion-mnist)

repro: setup
	@if grep -Eq '^\s*dataset:\s*fashion_mnist' params.yaml; then $(MAKE) --no-print-directory fashion-mnist; fi
	$(BIN)/dvc repro

# The labs' own setups (labs/*.yaml) as named DVC experiments, queued and run two at a time,
# then one table per lab in reports/labs.md and reports/labs.html: `make labs` runs every lab
# (under 40 minutes on 2 cores), `make lab LAB=lab4` one (LAB="lab4 tutorial": several).
labs: setup fashion-mnist
	$(BIN)/python -m digitlab.labs run --all

lab: setup fashion-mnist
	$(BIN)/python -m digitlab.labs run $(LAB)

# Everything (what CI runs); `make test-fast` skips the tests marked slow (end-to-end DVC runs).
# TEST_WORKERS test processes, each taking whole test files (module fixtures stay in one).
TEST_WORKERS ?= 2
test: setup system-deps
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

# Time to an answer, side by side (after `make repro`): reports/bench.json, README and docs tables.
bench: setup
	$(BIN)/python -m benchmarks.bench

# The conditional GAN on all digits next to PyTorch-GAN's cgan.py, the same seconds each
# (after `make repro`; about 15 minutes): reports/bench_cgan.json and a table.
bench-cgan: setup
	$(BIN)/python -m benchmarks.cgan

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# MLflow's UI over the project's store, on this machine only. MLflow 3's UI shows an
# experiment's GenAI views (traces) unless told the workflow: the address printed opens the
# training runs of the digitlab experiment (the store's first, id 1).
UI_PORT ?= 5000
ui: setup
	@echo "MLflow's UI, the training runs: http://127.0.0.1:$(UI_PORT)/#/experiments/1/runs?workflowType=machine_learning"
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
	  --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

# The experiments side by side in 120 columns: the params that differ between them, and
# accuracy, decent rate and Fréchet ratio (no output hashes; the detector's figures and the
# rest: `dvc exp show`, or the report).
COMPARE := --only-changed --precision 4 --keep '^accuracy$$' --drop 'Created|.*/|.*\.pt$$|detector\.|.*_(worst|median|real)$$|digits_present|classifier_score'
compare: setup
	@$(BIN)/dvc exp show --no-pager $(COMPARE)

# The conditional all-digit generator of docs/experiments.md, registered for the playground's
# "ask for any digit": the DVC experiment any-digit, run in a temporary copy (the workspace and
# its params stay as they are; the classifier comes from DVC's cache). ANY_DIGIT_EXTRA='-S …'
# adds overrides.
ANY_DIGIT := -S digit=all -S gan.conditional=true -S 'gan.discriminator.hidden=[256,128]' \
  -S gan.batch_size=384 -S gan.optimizer_d.lr=0.0007 -S gan.optimizer_g.lr=0.0007 -S gan.epochs=120 \
  -S gan.ema=0.9995
any-digit: setup
	$(BIN)/dvc exp run --temp $(ANY_DIGIT) $(ANY_DIGIT_EXTRA)

# The playground over the registered models (after `make repro`), on this machine only:
# http://127.0.0.1:$(PLAY_PORT) (python -m digitlab.play --host 0.0.0.0 to share it)
PLAY_PORT ?= 8000
play: setup
	$(BIN)/python -m digitlab.play --port $(PLAY_PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
