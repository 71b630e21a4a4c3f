# Set-up and checks. `make quickstart` and `make test` create .venv and install what they need on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch wheels that work together on x86_64 CPU machines (see README); override on other platforms, e.g.
#   make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" test        (aarch64)
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= train,cpu,report,dev,sign,s3,search
STUBS  := typings/tensorrt
# TensorRT type stubs (TensorRT 10.13 API) for mypy. Kept out of .venv: installed there, they leave an empty
# importable `tensorrt` package that makes TensorRT look installed. --no-deps: their dependency on tensorrt fails.
TRT_STUBS ?= tensorrt-stubs==10.13.0.35.1

.PHONY: install quickstart test test-slow lint format bench bench-precision bench-repro bench-loader bench-tensorrt bench-peers bench-floor clean typings \
	tensorrt-api mutate mutate-report docs-check

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

# Mutation testing of qdq, keys, bundle/manifest, bundle/tarsafe, onnx_file and recipe_yaml's YAML functions against
# their fast tests (configuration: [tool.mutmut] in pyproject.toml; results and survivors: tests/MUTANTS.md). Not part
# of CI: ~10-18 minutes on 2 cores, one worker, niced, each process capped at 6 GiB of address space (a mutant that
# lets a YAML bomb expand dies of MemoryError instead of filling the machine), one thread per BLAS/OpenMP pool and a
# fixed hash seed (the order of a mutant's tests). Starts afresh (rm -rf mutants); the log is mutants/run.log.
MUTATE_SCOPE := 'edgeres.qdq.*' 'edgeres.keys.*' 'edgeres.bundle.manifest.*' 'edgeres.bundle.tarsafe.*' \
	'edgeres.onnx_file.*' 'edgeres.recipe_yaml.x_load_yaml__mutmut_*' 'edgeres.recipe_yaml.x*compose_node__mutmut_*' \
	'edgeres.recipe_yaml.x_apply_override__mutmut_*' 'edgeres.recipe_yaml.x_parse_set__mutmut_*'
mutate: install
	rm -rf mutants && mkdir mutants
	@echo "mutmut run (log: mutants/run.log)"
	@start=$$(date +%s); ulimit -v 6291456; OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONHASHSEED=0 \
		nice -n 15 $(BIN)/mutmut run --max-children 1 $(MUTATE_SCOPE) > mutants/run.log 2>&1 \
		|| { tail -c 3000 mutants/run.log; exit 1; }; echo "wall time: $$(( $$(date +%s) - start )) s"
	@$(MAKE) --no-print-directory mutate-report

# The per-module table and every mutant not killed, from the last `make mutate` (the functions out of scope left out).
# "other" is no tests, not checked, skipped, suspicious or segfault; it counts as survived.
mutate-report:
	@printf "%-24s %6s %7s %7s %9s %6s %8s\n" module total killed timeout survived other killed%
	@$(BIN)/mutmut results --all true | grep -v -e '_list_index__mutmut_' -e '__init____mutmut_' \
		| sed -E 's/^ *(.*)\.x[^.]*__mutmut_[0-9]+: (.*)$$/\1 \2/' | awk '{ m = $$1; $$1 = ""; st = substr($$0, 2); n[m]++; \
		  if (st == "killed" || st == "timeout" || st == "survived") c[m, st]++; else c[m, "other"]++ } END { \
		  for (m in n) printf "%-24s %6d %7d %7d %9d %6d %7.1f%%\n", m, n[m], c[m, "killed"], c[m, "timeout"], \
		    c[m, "survived"], c[m, "other"], 100 * c[m, "killed"] / n[m] }' | sort
	@$(BIN)/mutmut results | grep -v -e '_list_index__mutmut_' -e '__init____mutmut_' || true

# The README cannot drift from the CLI: its synopsis against every command's options (both ways), then its `sh` and
# `python` blocks run against a 1-epoch quickstart build (cache kept in $(DOCS_WORK): a second run skips training).
DOCS_WORK ?= .docs-check
docs-check: install
	$(BIN)/python tests/docs_check.py synopsis
	$(BIN)/python tests/docs_check.py run --work $(DOCS_WORK)

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

# edgeres against its peers on CIFAR-10 under the pre-registered protocol (benchmarks/peers.py, benchmarks/README.md;
# needs ../shared: the data and the trained checkpoint). The data is unpacked once to PEERS_DATA, outside the
# repository. Runs the search of recipes/search-cifar10.yaml first (hours on 2 cores from a cold cache; resumable and
# cached); PEERS_ARGS="--trials 8" runs fewer trials, "--cache DIR" names the cache.
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
