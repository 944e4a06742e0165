# Entry points people remember. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CS := $(BIN)/coins-sync
SANDBOX_PORT ?= 8765
export COINS_SYNC_TOKEN ?= demo-token-not-a-secret

.PHONY: install test lint validate demo demo-postgres plan apply bench chaos audit clean

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

# The same demo on the postgres backend: a throw-away local cluster (the server binaries
# must be installed: apt-get install postgresql), a project whose environment has
# backend = "postgres", and the state in the database instead of a file.
DEMO_PG := .demo-postgres
demo-postgres: $(STAMP)
	@rm -rf $(DEMO_PG) && mkdir -p $(DEMO_PG)/project
	@cp -r configs $(DEMO_PG)/project/configs
	@printf '[tool.coins-sync]\ndefault_environment = "demo"\n\n[tool.coins-sync.environments.demo]\napi_url = "http://127.0.0.1:$(SANDBOX_PORT)"\nbackend = "postgres"\n' > $(DEMO_PG)/project/pyproject.toml
	@mktemp -d /tmp/coins-sync-demo-pg.XXXXXX > $(DEMO_PG)/cluster-dir
	@$(BIN)/python tests/pg_fixture.py start $$(cat $(DEMO_PG)/cluster-dir) > $(DEMO_PG)/dsn || \
	  { echo "demo-postgres needs the PostgreSQL server binaries (apt-get install postgresql)"; exit 1; }
	@$(CS) sandbox --port $(SANDBOX_PORT) > $(DEMO_PG)/sandbox.log 2>&1 & echo $$! > $(DEMO_PG)/sandbox.pid
	@trap 'cd $(CURDIR); kill $$(cat $(DEMO_PG)/sandbox.pid) 2>/dev/null; $(BIN)/python tests/pg_fixture.py stop $$(cat $(DEMO_PG)/cluster-dir); rm -rf $$(cat $(DEMO_PG)/cluster-dir)' EXIT; \
	export COINS_SYNC_PG_DSN="$$(cat $(DEMO_PG)/dsn)"; \
	for i in $$(seq 1 50); do \
	  $(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', $(SANDBOX_PORT)), 0.2)" 2>/dev/null && break; \
	  sleep 0.1; \
	done; \
	cd $(DEMO_PG)/project && \
	echo "== coins-sync plan (state in PostgreSQL)"; $(CURDIR)/$(CS) plan && \
	echo "== coins-sync apply --yes"; $(CURDIR)/$(CS) apply --yes && \
	echo "== coins-sync state list"; $(CURDIR)/$(CS) state list && \
	echo "== coins-sync plan (again: nothing left to do)"; $(CURDIR)/$(CS) plan --detailed-exitcode && \
	echo "== files written under the project (none for the state):"; find . -path ./configs -prune -o -type f -print

plan: $(STAMP)
	$(CS) plan

apply: $(STAMP)
	$(CS) apply

# Speed and memory targets (plan/floor, peak RSS, apply efficiency, bookkeeping growth);
# prints a table and fails when a target is missed. Never part of `make test`.
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench.py
	$(BIN)/python tests/benchmarks/bench.py --backend postgres

# Fault campaigns against the sandbox (faults, kill -9, SIGINT); prints figures and
# fails unless duplicates and lost records are both 0, on the file backend and then on
# the postgres backend (a throw-away cluster). A reduced run is in `make test`.
chaos: $(STAMP)
	$(BIN)/python tests/chaos.py
	$(BIN)/python tests/pg_chaos.py

# Dependency audit. Not part of `make lint`: pip-audit needs PyPI's JSON API or OSV,
# which this project's CI machines cannot reach (only the package index is served), so
# there it would audit nothing. Run it where those services are reachable.
audit: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/pip-audit --skip-editable

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo .demo-postgres
