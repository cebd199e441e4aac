# `make demo` and `make test` work on a fresh machine with only python3: they create .venv,
# install the package with the pinned constraints, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out
# glibc malloc: keep freed memory instead of returning it to the OS after every batch
# (measured: 1.32x the encoder's CPU patches/s, median; docs/benchmarks.md, "glibc malloc").
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 17179869184

.PHONY: setup demo lint test test-fast test-slurm docker-check bench bench-docs bench-smoke clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 'ghanet needs python3 >= 3.11 (the pinned constraints do); this is ' + sys.version.split()[0] + ': make PYTHON=python3.11 ...')"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,openvino]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ghanet demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check ghanet_pipeline tests benchmarks pipelines

# The two tiers of tests/README.md: everything (what CI runs) and the inner loop without the slow, Snakemake
# and crash tests. Both run on every core (pytest-xdist: one worker per core, at most 4; each test file on one
# worker, so a module's expensive fixture is built once; files in collection order). TEST_JOBS=1: one process.
TEST_JOBS ?= auto
PYTEST := $(BIN)/python -m pytest -q -ra -n $(TEST_JOBS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder
test: lint
	$(PYTEST)

test-fast: lint
	$(PYTEST) -m "not slow and not workflow and not chaos"

# The workflow on a throwaway one-node SLURM cluster (root; installs Debian's slurm packages when missing;
# skips, saying why, where it cannot). See docs/workflow.md.
test-slurm: $(STAMP)
	GHANET_SLURM_TEST=1 $(BIN)/python -m pytest -q -ra -m slurm tests/e2e/test_slurm.py

# Build the Dockerfile (locally made Debian base image) and run segment + extract-features in it on
# SLIDE=/path/to/slide.svs; the bag must equal the one made outside. Root, podman (or ENGINE=docker).
# Not part of CI (see docs/workflow.md for the measured time).
docker-check: $(STAMP)
	GHANET=$(abspath $(BIN))/ghanet SLIDE="$(SLIDE)" bash pipelines/testing/docker-check.sh

# The benchmark suite (docs/benchmarks.md): every benchmark with the options of the docs' figures, one JSON
# record each in benchmarks/results/, then the docs' generated tables rewritten from the newest records.
# Run on a quiet machine. bench-smoke: each benchmark at its smallest size, records in a temporary folder.
# BENCH_ARGS: more suite options, e.g. BENCH_ARGS="--real-slide CMU-1-Small-Region.svs --skip encoders".
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m benchmarks.suite --demo-out $(DEMO_OUT) $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.report

bench-docs: $(STAMP)
	$(BIN)/python -m benchmarks.report

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks.suite --smoke --demo-out $(DEMO_OUT) $(BENCH_ARGS)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
