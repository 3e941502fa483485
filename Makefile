# The two commands a new user runs: `make demo` and `make test`. Each makes its own
# virtual environment (.venv) on first use and installs what it needs into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch runs the benchmark workloads; on a machine without a GPU this resolves to the CPU
# build. Override with TORCH= (empty) to skip it, or another spec for a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[test,globus]' $(TORCH)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/gpuslice demo

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy

unit: $(VENV)/.installed
	$(BIN)/pytest

test: lint typecheck unit

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/resolve_fleet.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
