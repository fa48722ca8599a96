# faultmail developer entry points. The virtual environment is built on Debian's own
# /usr/bin/python3 (3.11.2 on Debian 12), the interpreter the .deb uses.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-compat lint typecheck unit clean venv bench deb test-deb test-arm64 man

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
	$(BIN)/ruff format --check agent tests firmware-sim

typecheck: $(STAMP)
	$(BIN)/mypy agent tests
	$(BIN)/mypy firmware-sim/firmware_sim.py

test: lint typecheck
	$(BIN)/python -m pytest -q --durations=10

# The interpreter-dependent part of the suite on another Python 3.11 (this machine's pyenv
# 3.11.7 lacks Debian's email header-injection fix, so the tests prove we do not depend on it).
COMPAT_PYTHON ?= $(shell command -v python3.11)
# What depends on the interpreter's own libraries (email, json, sqlite3, ssl): every unit test,
# and the daemon end to end where mail is composed, parsed, signed and submitted. The whole
# suite on both interpreters would double CI's time for the broker and fault tests, which
# exercise nothing interpreter-specific beyond these.
COMPAT_TESTS ?= tests/unit tests/test_docs.py tests/integration/test_pipeline.py \
	tests/integration/test_mail_quality.py tests/integration/test_languages.py \
	tests/integration/test_poison_input.py tests/integration/test_hostile_relay.py \
	tests/integration/test_delivery.py tests/integration/test_postfix.py
test-compat:
	@if [ -z "$(COMPAT_PYTHON)" ] || [ "$$(readlink -f $(COMPAT_PYTHON))" = "$$(readlink -f $(PYTHON))" ]; then \
		echo "test-compat: no second Python 3.11 here; skipped"; \
	else \
		$(MAKE) --no-print-directory VENV=.venv-compat PYTHON=$(COMPAT_PYTHON) venv && \
		.venv-compat/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS); \
	fi

# Benchmarks print figures; they assert nothing about time (see tests/bench/README.md).
bench: $(STAMP)
	$(BIN)/python -m tests.bench

# The Debian package: make deb ARCH=amd64|arm64 (see packaging/README.md).
ARCH ?= amd64
deb:
	bash packaging/build-deb.sh $(ARCH)

# Install test of the package under real systemd (root; debootstrap + systemd-nspawn).
test-deb: deb
	bash packaging/test-deb.sh $(ARCH)

# The arm64 package installed and run on this amd64 machine under qemu-user emulation (root;
# debootstrap --arch arm64 + systemd-nspawn, binfmt_misc; see packaging/README.md, "arm64").
test-arm64:
	bash packaging/build-deb.sh arm64
	bash packaging/test-arm64.sh

# The man page in the .deb, generated from the argument parser (tests check it is current).
man: $(STAMP)
	$(BIN)/python -m agent.cli.manpage > packaging/debian/faultmail.1

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# build/ holds the .deb's work tree and wheel cache (build/deb), dist/ the packages; pip and
# setuptools leave build/ and faultmail.egg-info behind a wheel or editable install.
clean:
	rm -rf $(VENV) .venv-compat demo-out .pytest_cache .mypy_cache .ruff_cache \
		build dist *.egg-info
