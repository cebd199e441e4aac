# `make demo` and `make test` work on a fresh machine with only python3: they create .venv,
# install the package with the pinned constraints, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= demo-out
# glibc malloc: keep freed memory instead of returning it to the OS after every batch
# (measured ~1.6x faster CPU inference on the 2-core dev machine, see README benchmarks).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 17179869184

.PHONY: setup demo lint test test-fast test-slurm docker-check bench clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ghanet demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check ghanet_pipeline tests benchmarks

# The two tiers of tests/README.md: everything (< 10 min on the 2-core development machine, what CI runs) and
# the inner loop without the slow, Snakemake and crash tests (< 3 min).
test: lint
	$(BIN)/python -m pytest -q -ra

test-fast: lint
	$(BIN)/python -m pytest -q -ra -m "not slow and not workflow and not chaos"

# The workflow on a throwaway one-node SLURM cluster (root; installs Debian's slurm packages when missing;
# skips, saying why, where it cannot). See docs/workflow.md.
test-slurm: $(STAMP)
	GHANET_SLURM_TEST=1 $(BIN)/python -m pytest -q -ra -m slurm tests/e2e/test_slurm.py

# Build the Dockerfile (locally made Debian base image) and run segment + extract-features in it on
# SLIDE=/path/to/slide.svs; the bag must equal the one made outside. Root, podman (or ENGINE=docker).
# Not part of CI (see docs/workflow.md for the measured time).
docker-check: $(STAMP)
	GHANET=$(abspath $(BIN))/ghanet SLIDE="$(SLIDE)" bash pipelines/testing/docker-check.sh

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build *.egg-info
