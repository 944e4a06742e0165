# Entry points people remember. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CS := $(BIN)/coins-sync
SANDBOX_PORT ?= 8765
export COINS_SYNC_TOKEN ?= demo-token-not-a-secret

.PHONY: install test lint validate demo plan apply bench chaos mutants audit clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check coins_sync tests
	$(BIN)/ruff format --check coins_sync tests
	$(BIN)/mypy --strict coins_sync

test: lint
	$(BIN)/pytest -q

validate: $(STAMP)
	$(CS) validate

# The demo runs against a throw-away state, so it shows the same story every time:
# validate, plan, apply, then plan again to show "no changes".
DEMO_STATE := .demo/state.json
DEMO_FLAGS := --env sandbox --state $(DEMO_STATE) --api-url http://127.0.0.1:$(SANDBOX_PORT)

demo: $(STAMP)
	@rm -rf .demo && mkdir -p .demo
	@$(CS) sandbox --port $(SANDBOX_PORT) > .demo/sandbox.log 2>&1 & echo $$! > .demo/sandbox.pid
	@trap 'kill $$(cat .demo/sandbox.pid) 2>/dev/null' EXIT; \
	for i in $$(seq 1 50); do \
	  $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', $(SANDBOX_PORT)), 0.2)" 2>/dev/null && break; \
	  sleep 0.1; \
	done; \
	echo "== coins-sync validate"; $(CS) validate && \
	echo "== coins-sync plan"; $(CS) plan $(DEMO_FLAGS) && \
	echo "== coins-sync apply --yes"; $(CS) apply $(DEMO_FLAGS) --yes && \
	echo "== coins-sync plan (again: nothing left to do)"; $(CS) plan $(DEMO_FLAGS) --detailed-exitcode

plan: $(STAMP)
	$(CS) plan

apply: $(STAMP)
	$(CS) apply

# Speed and memory targets (plan/floor, peak RSS, apply efficiency, bookkeeping growth);
# prints a table and fails when a target is missed. Never part of `make test`.
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench.py

# Fault campaigns against the sandbox (faults, kill -9, SIGINT); prints figures and
# fails unless duplicates and lost records are both 0. A reduced run is in `make test`.
chaos: $(STAMP)
	$(BIN)/python tests/chaos.py

# Mutation testing (mutmut, pinned, installed here only) of apply, the saved plan, state,
# the retry policy and the output scrubber: prints the survivors and the survival rate,
# and fails if a mutant of a listed guarantee survives. About 25 minutes on 2 cores, run
# niced with 2 workers (MUTANTS_WORKERS=1 for fewer). Never part of `make test`.
MUTMUT_VERSION := 3.8.1
MUTANTS_WORKERS ?= 2
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut==$(MUTMUT_VERSION)'
	nice -n 10 $(BIN)/python tests/mutation.py --max-children $(MUTANTS_WORKERS)

# Dependency audit. Not part of `make lint`: pip-audit needs PyPI's JSON API or OSV,
# which this project's CI machines cannot reach (only the package index is served), so
# there it would audit nothing. Run it where those services are reachable.
audit: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/pip-audit --skip-editable

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo mutants
