# One entry point for a fresh machine: every target bootstraps what it needs.
#   make test   - the README's test command: venv, install (C build), lint, cppcheck, pytest
#   make demo   - the README's main command
#   make bench  - benchmark figures (long; not part of make test)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-stamp
# The suite has well over this many tests; fewer means tests were lost (tests/conftest.py).
MIN_TESTS ?= 400
CSRC := $(wildcard csrc/*.c csrc/*.h csrc/*.py)

.PHONY: all venv sysdeps lint layers cppcheck test pytest demo bench clean asan firmware firmware-check

all: test

sysdeps:
	bash tools/install-sysdeps.sh

$(STAMP): pyproject.toml setup.py $(CSRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test,bench,plot,can,export,monitor,campaign]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check bms hil boards tools tests

# import-linter contracts (pyproject.toml [tool.importlinter]; docs/architecture.md "Layers"):
# a forbidden import fails the build, naming the importing module, line and imported module.
layers: venv
	$(VENV)/bin/lint-imports --no-cache

cppcheck: sysdeps
	cppcheck --error-exitcode=1 --enable=warning,style,performance,portability \
	  --std=c11 --inline-suppr --quiet \
	  --suppress=missingIncludeSystem --suppress=unusedFunction \
	  -I csrc -I boards/firmware/src csrc tests/c $(wildcard boards/firmware/src) $(wildcard boards/firmware/test) \
	  $(wildcard boards/firmware/sim) $(wildcard boards/firmware/hal) $(wildcard boards/firmware/fuzz)

pytest: venv
	$(PY) -m pytest --min-tests $(MIN_TESTS) --durations=15 --cov=bms --cov=hil --cov=boards --cov-report=term:skip-covered $(PYTEST_ARGS)

test: sysdeps venv lint layers cppcheck pytest

demo: venv
	$(VENV)/bin/bms demo

bench: venv
	$(VENV)/bin/bms bench

clean:
	rm -rf $(VENV) build *.egg-info bms/_core*.so hil/_wire*.so hil/emulator/_plant*.so .pytest_cache .benchmarks boards/firmware/build

# Reference firmware (boards/firmware): ELF + hex for avrdude, size report, simavr harness.
# make test covers it through pytest (tests/test_firmware_*.py); these are the direct targets.
firmware: sysdeps
	$(MAKE) -C boards/firmware firmware size harness

firmware-check: sysdeps venv
	$(MAKE) -C boards/firmware all fuzz-run FUZZ_SECONDS=20
	$(PY) -m pytest -q tests/test_firmware_build.py tests/test_firmware_codec.py tests/test_firmware_sim.py \
	  tests/test_board_protocol.py
