# `make test` and `make demo` create the virtual environment themselves on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: test demo lint typecheck bench clean

# The CUDA build of torch makes the environment 6.4 GB: pip unpacks it beside the
# environment rather than in a /tmp that may be a small tmpfs, and keeps no second
# copy in its cache.
$(BIN)/featkit-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	mkdir -p $(VENV)/pip-tmp
	TMPDIR=$(abspath $(VENV))/pip-tmp $(BIN)/python -m pip install -q --no-cache-dir -e '.[dev]'
	rm -rf $(VENV)/pip-tmp
	touch $@

lint: $(BIN)/featkit-installed
	$(BIN)/ruff check featkit protocols tests benchmarks examples
	$(BIN)/ruff format --check featkit protocols tests benchmarks examples

typecheck: $(BIN)/featkit-installed
	$(BIN)/mypy featkit protocols/featkit_protocols

test: lint typecheck
	$(BIN)/python -m pytest -q

demo: $(BIN)/featkit-installed
	$(BIN)/featkit demo

bench: $(BIN)/featkit-installed
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/probe.py
	$(BIN)/python benchmarks/probe_workspace.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache featkit_runs
