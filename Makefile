# The two commands of the README: `make run` (the hub, one process, no servers) and
# `make test` (the whole suite against local RabbitMQ and Redis).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# Test processes: most of a test's time is spent waiting for the processes and servers it
# drives, so two share two cores well (0 runs the suite in this process, one test at a time).
TEST_WORKERS ?= 2

.PHONY: run test lint bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/nagatha serve --embedded

test: install
	bash scripts/ensure-services.sh
	NAGATHA_REQUIRE_SERVICES=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check nagatha bridge modules tests
	$(BIN)/ruff format --check nagatha bridge modules tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python tests/bench/run.py

clean:
	rm -rf $(VENV)
