# Set-up and checks. `make quickstart` and `make test` create .venv and install what they need on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch wheels that work together on x86_64 CPU machines (see README); override on other platforms, e.g.
#   make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" test        (aarch64)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= train,cpu,report,dev,sign
STUBS  := typings/tensorrt
# TensorRT type stubs (TensorRT 10.13 API) for mypy. Kept out of .venv: installed there, they leave an empty
# importable `tensorrt` package that makes TensorRT look installed. --no-deps: their dependency on tensorrt fails.
TRT_STUBS ?= tensorrt-stubs==10.13.0.35.1

.PHONY: install quickstart test test-slow lint format bench bench-precision bench-repro bench-loader bench-tensorrt bench-peers bench-floor clean typings \
	tensorrt-api

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

# One process. DataLoader workers start from a fork server (never forked from the threaded test process), streamed
# splits end their workers when the consumer stops, runners release their sessions on close, and an autouse fixture
# (tests/conftest.py::_no_leaks) fails a test that leaves processes or open runners behind.
test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow --timeout=3600

$(STUBS): | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --upgrade --no-deps --target typings/.site $(TRT_STUBS)
	$(BIN)/python -m edgeres.tensorrt.stubs typings --from typings/.site

typings: $(STUBS)

# The TensorRT API names the tests' stand-in `tensorrt` is made of (tests/fake_tensorrt.py), from the stubs above.
tensorrt-api: | $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --upgrade --no-deps --target typings/.site $(TRT_STUBS)
	$(BIN)/python -m edgeres.tensorrt.stubs typings --from typings/.site --api-json tests/data/tensorrt-10.13-api.json

lint: install $(STUBS)
	$(BIN)/ruff check edgeres tests benchmarks
	$(BIN)/ruff format --check edgeres tests benchmarks
	MYPYPATH=typings $(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format edgeres tests benchmarks
	$(BIN)/ruff check --fix edgeres tests benchmarks

bench: install
	$(BIN)/python benchmarks/runtimes.py

bench-precision: install
	$(BIN)/python benchmarks/precision.py

bench-repro: install
	$(BIN)/python benchmarks/reproducibility.py

# Streaming loader against training throughput: make bench-loader DATA_ROOT=<image folder root, e.g. CIFAR-10>
bench-loader: install
	$(BIN)/python benchmarks/loader.py $(DATA_ROOT) --json benchmarks/results/loader.json

# edgeres against its peers on CIFAR-10 (benchmarks/peers.py; needs ../shared: the data and the trained checkpoint).
# The data is unpacked once to PEERS_DATA, outside the repository. Builds recipes/cifar10-peers.yaml first (hours on
# 2 cores, resumable); PEERS_ARGS=--available measures only what is already built.
SHARED     ?= ../shared
PEERS_DATA ?= $(HOME)/.cache/edgeres-data/cifar10
PEERS_ARGS ?=
bench-peers: install
	@test -d $(PEERS_DATA)/train || { mkdir -p $(PEERS_DATA) && tar -xzf $(SHARED)/data/cifar10-jpeg.tar.gz -C $(PEERS_DATA); }
	$(BIN)/python benchmarks/peers.py --data-root $(PEERS_DATA) --weights $(SHARED)/models/resnet50-cifar10.pt $(PEERS_ARGS)

# Batch-1 latency at 32x32 against width and depth pruning, untrained (benchmarks/latency_floor.py; needs ../shared).
bench-floor: install
	$(BIN)/python benchmarks/latency_floor.py --weights $(SHARED)/models/resnet50-cifar10.pt

# The TensorRT device check (NVIDIA GPU or Jetson; under 8 minutes): see README, "TensorRT device check".
bench-tensorrt: install
	$(BIN)/python benchmarks/tensorrt_smoke.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache typings
