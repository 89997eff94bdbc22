# Two commands from a clean clone:  `make demo`  and  `make test`.
# Both create .venv if missing and install what they need; a second run only checks
# a stamp file and reuses the environment.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
# The CPU torch wheel lies in /opt/wheels on these machines; uv ignores pip's config, so
# the local version is pinned explicitly (otherwise uv fetches a multi-GB CUDA build).
FIND_LINKS := $(wildcard /opt/wheels)
UV_FLAGS := $(if $(FIND_LINKS),--find-links $(FIND_LINKS) -c .ci/constraints-cpu.txt,)
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
# Some machines export PYTHONDONTWRITEBYTECODE=1; then every test subprocess (Ray workers,
# the operator, jobs) recompiles transformers and torch on import, ~30 s each. Bytecode is
# written into .venv and __pycache__ (both git-ignored) on first import.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo micro-family test lint install clean-demo help

help:
	@echo "make demo   - install, then run a tiny SPHINX-X scaling sweep end to end on the local default"
	@echo "make micro-family - install, then a 3 x 3 sweep that shows the scaling law (about 17 min on 2 idle cores)"
	@echo "make test   - install dev dependencies, then lint and run the whole test suite"
	@echo "make lint   - ruff check + ruff format --check + import-linter contracts + mypy (pyproject's [tool.mypy])"
	@echo "              + hadolint (Dockerfile) + bash -n and shellcheck (every shell script) only"

# Never `python -m ...` from the repo root before the package is installed: `-m` puts the
# current directory first on sys.path, where our `operator/` folder shadows the standard
# library's `operator` (the installed package maps it to `sphinxx.operator`).
$(BIN)/python:
	cd / && $(PYTHON) -m venv $(CURDIR)/$(VENV)

$(UV): $(BIN)/python
	$(BIN)/pip install -q uv

# --compile-bytecode: every process the tests and the demo start (Ray workers, jobs, the operator)
# imports torch, DeepSpeed, transformers and Ray; compiled once here, none of them compiles them again.
$(STAMP): pyproject.toml .ci/constraints-cpu.txt | $(UV)
	$(UV) pip install --python $(BIN)/python $(UV_FLAGS) --compile-bytecode -e '.[dev]'
	@touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	bash .ci/lint_imports.sh
	bash .ci/typecheck.sh
	$(BIN)/hadolint Dockerfile
	bash .ci/lint_shell.sh

# The whole suite runs as three concurrent pytest lanes (.ci/test_lanes.sh; one pytest keeps 2 cores
# less than half busy); with PYTEST_ARGS set (paths, -k, -m, ...) one pytest runs what they select.
test: lint
ifeq ($(strip $(PYTEST_ARGS)),)
	bash .ci/test_lanes.sh
else
	$(BIN)/pytest $(PYTEST_ARGS)
endif

demo: $(STAMP)
	$(BIN)/python -m sphinxx.jobs.demo

# 3 model sizes x 3 data fractions, scored on held-out data (README, "A sweep that shows the science").
micro-family: $(STAMP)
	$(BIN)/python -m sphinxx.jobs.demo --sweep examples/sweeps/micro-family.yaml --size 630 --workdir .micro

clean-demo:
	rm -rf .demo .micro
