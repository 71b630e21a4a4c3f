# Set-up and checks. `make quickstart` and `make test` create .venv and install what they need on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch wheels that work together on x86_64 CPU machines (see README); override on other platforms, e.g.
#   make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" test        (aarch64)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= train,cpu,report,dev
STUBS  := typings/tensorrt

.PHONY: install quickstart test test-slow lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/edgeres build recipes/quickstart.yaml

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check edgeres tests benchmarks
	$(BIN)/ruff format --check edgeres tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format edgeres tests benchmarks
	$(BIN)/ruff check --fix edgeres tests benchmarks

bench: install
	$(BIN)/python benchmarks/runtimes.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache typings
