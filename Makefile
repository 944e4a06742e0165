# Entry points people remember. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CS := $(BIN)/coins-sync
SANDBOX_PORT ?= 8765
export COINS_SYNC_TOKEN ?= demo-token-not-a-secret

.PHONY: install test lint validate demo plan apply bench chaos clean

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

demo: $(STAMP)
	$(CS) validate configs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
