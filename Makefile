# faultmail developer entry points. The virtual environment is built on Debian's own
# /usr/bin/python3 (3.11.2 on Debian 12), the interpreter the .deb uses.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m tests.harness.demo

lint: $(STAMP)
	$(BIN)/ruff check agent tests firmware-sim
	$(BIN)/ruff format --check agent

typecheck: $(STAMP)
	$(BIN)/mypy agent

test: lint typecheck
	$(BIN)/python -m pytest -q --durations=10

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
