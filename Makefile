# Entry points people remember. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CS := $(BIN)/coins-sync
SANDBOX_PORT ?= 0
# The sandbox's token, for the two demos only: `make plan` and `make apply` talk to the
# real API with the operator's environment as it is (a token there would beat the
# COINS_SYNC_CLIENT_* credentials and be sent to the real API).
DEMO_TOKEN := demo-token-not-a-secret

.PHONY: install test lowest lint validate demo demo-postgres plan apply bench chaos mutants audit clean wheel-check

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

# The suite mostly waits (subprocesses, a sandbox's latency, a PostgreSQL cluster per
# worker), so 4 workers overlap well even on 2 cores; PYTEST_WORKERS=0 runs it serially.
# Bytecode caches are written (into the ignored __pycache__/) even where the environment
# sets PYTHONDONTWRITEBYTECODE: else every worker and every `python -m coins_sync` the
# tests start compiles the package again, about 12 s of CPU per run.
PYTEST_WORKERS ?= 4
test: lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n $(PYTEST_WORKERS)

# The suite against the lowest versions pyproject.toml allows: uv (pinned, in a venv of
# its own) resolves every direct dependency to its floor (--resolution lowest-direct)
# in a separate venv, so a floor that is too low fails here and not for a user; then the
# lowest hatchling build-system.requires allows builds the wheel and sdist, which must
# pass `twine check --strict`. CI runs it after `make test`; about 5 minutes on 2 cores.
UV_VERSION := 0.13.9
UV_VENV := .venv-uv
LOWEST := .venv-lowest
lowest:
	test -x $(UV_VENV)/bin/uv || { $(PYTHON) -m venv $(UV_VENV) && $(UV_VENV)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'; }
	rm -rf $(LOWEST)
	UV_PYTHON_DOWNLOADS=never $(UV_VENV)/bin/uv venv --quiet --python $(PYTHON) $(LOWEST)
	UV_PYTHON_DOWNLOADS=never VIRTUAL_ENV=$(LOWEST) $(UV_VENV)/bin/uv pip install --quiet --resolution lowest-direct -e '.[dev]'
	$(UV_VENV)/bin/uv pip list --quiet --python $(LOWEST)/bin/python
	PYTHONDONTWRITEBYTECODE= $(LOWEST)/bin/pytest -q -n $(PYTEST_WORKERS) -p no:cacheprovider
	$(LOWEST)/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' > $(LOWEST)/build-requires.txt
	$(UV_VENV)/bin/uv pip install --quiet --python $(LOWEST)/bin/python --resolution lowest-direct -r $(LOWEST)/build-requires.txt
	$(UV_VENV)/bin/uv pip install --quiet --python $(LOWEST)/bin/python twine
	$(LOWEST)/bin/python -c 'import hatchling.build as b; b.build_wheel("$(LOWEST)/dist"); b.build_sdist("$(LOWEST)/dist")'
	$(LOWEST)/bin/twine check --strict $(LOWEST)/dist/*

validate: $(STAMP)
	$(CS) validate

# The wheel of this tree, installed with its dependencies into a clean venv outside the
# repository, runs init, validate, plan and apply against the sandbox
# (tests/test_wheel_install.py). A pip install from the index takes a minute or two, so
# it is not part of `make test`; .ci/run runs both.
wheel-check: $(STAMP)
	WHEEL_CHECK=1 PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -p no:cacheprovider tests/test_wheel_install.py

# The demo runs against a throw-away state, so it shows the same story every time:
# validate, plan, apply, then plan again to show "no changes". The sandbox binds a free
# port (or SANDBOX_PORT when given, refusing a busy one), and the first failing step
# stops the demo with its exit code.
# DEMO_DIR: the demo's scratch folder (a test runs the demo target with one of its own).
DEMO_DIR ?= .demo
DEMO_STATE := $(DEMO_DIR)/state.json

demo: $(STAMP)
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@set -eu; export COINS_SYNC_TOKEN='$(DEMO_TOKEN)'; \
	$(CS) sandbox --port $(SANDBOX_PORT) > $(DEMO_DIR)/sandbox.log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null || true' EXIT; \
	url=""; \
	for i in $$(seq 1 100); do \
	  url=$$(sed -n 's/^coins-sync sandbox listening on \(http[^ ]*\).*/\1/p' $(DEMO_DIR)/sandbox.log); \
	  [ -n "$$url" ] && break; \
	  kill -0 $$pid 2>/dev/null || break; \
	  sleep 0.1; \
	done; \
	if [ -z "$$url" ]; then echo "make demo: the sandbox did not start:" >&2; cat $(DEMO_DIR)/sandbox.log >&2; exit 1; fi; \
	flags="--env sandbox --state $(DEMO_STATE) --api-url $$url"; \
	echo "== sandbox on $$url"; \
	echo "== coins-sync validate"; $(CS) validate; \
	echo "== coins-sync plan"; $(CS) plan $$flags; \
	echo "== coins-sync apply --yes"; $(CS) apply $$flags --yes; \
	echo "== coins-sync plan (again: nothing left to do)"; $(CS) plan $$flags --detailed-exitcode

# The same demo on the postgres backend: a throw-away local cluster (the server binaries
# must be installed: apt-get install postgresql), a project whose environment has
# backend = "postgres", and the state in the database instead of a file.
DEMO_PG := .demo-postgres
demo-postgres: $(STAMP)
	@rm -rf $(DEMO_PG) && mkdir -p $(DEMO_PG)/project
	@cp -r configs $(DEMO_PG)/project/configs
	@printf '[tool.coins-sync]\ndefault_environment = "demo"\n\n[tool.coins-sync.environments.demo]\nbackend = "postgres"\n' > $(DEMO_PG)/project/pyproject.toml
	@set -eu; export COINS_SYNC_TOKEN='$(DEMO_TOKEN)'; \
	cluster=$$(mktemp -d /tmp/coins-sync-demo-pg.XXXXXX); \
	$(CS) sandbox --port $(SANDBOX_PORT) > $(DEMO_PG)/sandbox.log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null || true; $(CURDIR)/$(BIN)/python $(CURDIR)/tests/pg_fixture.py stop $$cluster >/dev/null 2>&1 || true; rm -rf $$cluster' EXIT; \
	dsn=$$($(BIN)/python tests/pg_fixture.py start $$cluster) || \
	  { echo "make demo-postgres: needs the PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 1; }; \
	export COINS_SYNC_PG_DSN="$$dsn"; \
	url=""; \
	for i in $$(seq 1 100); do \
	  url=$$(sed -n 's/^coins-sync sandbox listening on \(http[^ ]*\).*/\1/p' $(DEMO_PG)/sandbox.log); \
	  [ -n "$$url" ] && break; \
	  kill -0 $$pid 2>/dev/null || break; \
	  sleep 0.1; \
	done; \
	if [ -z "$$url" ]; then echo "make demo-postgres: the sandbox did not start:" >&2; cat $(DEMO_PG)/sandbox.log >&2; exit 1; fi; \
	cd $(DEMO_PG)/project; \
	echo "== sandbox on $$url"; \
	echo "== coins-sync plan (state in PostgreSQL)"; $(CURDIR)/$(CS) plan --api-url $$url; \
	echo "== coins-sync apply --yes"; $(CURDIR)/$(CS) apply --api-url $$url --yes; \
	echo "== coins-sync state list"; $(CURDIR)/$(CS) state list; \
	echo "== coins-sync plan (again: nothing left to do)"; $(CURDIR)/$(CS) plan --api-url $$url --detailed-exitcode; \
	echo "== files written under the project (none for the state):"; find . -path ./configs -prune -o -type f -print

plan: $(STAMP)
	$(CS) plan

# `make apply YES=1` applies without asking (CI, scripts).
apply: $(STAMP)
	$(CS) apply $(if $(filter 1 yes true,$(YES)),--yes)

# Speed and memory targets (plan/floor, peak RSS, apply efficiency, bookkeeping growth);
# prints a table and fails when a target is missed. Never part of `make test`.
bench: $(STAMP)
	$(BIN)/python tests/benchmarks/bench.py
	$(BIN)/python tests/benchmarks/bench.py --backend postgres

# Fault campaigns against the sandbox (faults, kill -9, SIGINT); prints figures and
# fails unless duplicates and lost records are both 0, on the file backend and then on
# the postgres backend (a throw-away cluster). Not part of `make test`;
# `make chaos CHAOS_ARGS=--quick` is the reduced run.
chaos: $(STAMP)
	$(BIN)/python tests/chaos.py $(CHAOS_ARGS)
	$(BIN)/python tests/pg_chaos.py $(CHAOS_ARGS)

# Mutation testing (mutmut, pinned, installed here only) of apply, the saved plan, state,
# the retry policy and the output scrubber: prints the survivors and the survival rate,
# and fails if a mutant of a listed guarantee survives. About 25 minutes on 2 cores, run
# niced with 2 workers (MUTANTS_WORKERS=1 for fewer); MUTANTS_ARGS=--guards-only mutates
# only the listed guarantees, in minutes. Never part of `make test`.
MUTMUT_VERSION := 3.8.1
MUTANTS_WORKERS ?= 2
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mutmut==$(MUTMUT_VERSION)'
	nice -n 10 $(BIN)/python tests/mutation.py --max-children $(MUTANTS_WORKERS) $(MUTANTS_ARGS)
	nice -n 10 $(BIN)/python tests/pg_mutants.py --workers $(MUTANTS_WORKERS)

# Dependency audit. Not part of `make lint`: pip-audit needs PyPI's JSON API or OSV,
# which this project's CI machines cannot reach (only the package index is served), so
# there it would audit nothing: then it says so and fails. Run it where they are reachable.
audit: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-audit
	$(BIN)/python tests/tools/audit.py

clean:
	rm -rf $(VENV) $(LOWEST) $(UV_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo .demo-postgres mutants
