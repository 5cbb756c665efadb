# The README's commands. Each target does its own set-up; nothing needs installing by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# Tests spread over this many workers (pytest-xdist; 0 runs them in this process); an idle
# worker steals queued tests from a busy one. On fresh clones here (2 cores, quiet machine), six
# runs: 2,182-2,185 tests, 7:03 to 7:39 of pytest, 7:39 to 8:11 in all (median 7:50), set-up 0:18
# to 0:22 on the last two. The suite is CPU-bound (97% busy over a run): a third worker gained nothing.
TEST_WORKERS ?= 2

.PHONY: setup test lint demo scaling-demo bench chaos dashboards docs clean

setup: $(STAMP)

# torch is pinned: anything unpinned would pull a multi-GB CUDA build. uv installs it with the rest
# in one resolution, several times faster than pip. uv reads no pip configuration, so the wheel
# folders pip is pointed at (PIP_FIND_LINKS: this machine's CPU build of torch) are handed to it;
# without them torch goes in first with pip, which finds a CPU build wherever the machine's pip
# configuration says. Byte code is not compiled at install (23 s for every module of every
# package, transformers' thousands of model files included): Python writes it as modules are first
# imported, into .venv, for the processes after. PYTHONDONTWRITEBYTECODE (set on CI here) would
# forbid that, and every trainer and server process would compile torch and megatron from source:
# it is not passed on to what make runs.
unexport PYTHONDONTWRITEBYTECODE
TORCH := torch==2.13.0
UV_LINKS := $(foreach links,$(PIP_FIND_LINKS),--find-links $(links))
$(STAMP): pyproject.toml
	@bash .ci/ensure-python "$(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	@test -n "$(UV_LINKS)" || $(PY) -m pip install --quiet $(TORCH)
	$(VENV)/bin/uv pip install --quiet --python $(PY) $(UV_LINKS) '$(TORCH)' -e '.[trainer,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

test: setup
	@bash .ci/ensure-binaries
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check service pretrainctl trainer_image tests bench migrations scripts

demo: setup
	@bash scripts/demo.sh

# A real iso-FLOP sweep on this CPU (4 compute budgets × 4 tiny Llamas, two trainers at a time)
# through the embedded service, then `pretrainctl scaling fit --json --plot` over the finished
# jobs: scaling-demo/runs.csv, fit.json, fit.png (docs/scaling.md, "The sweep").
scaling-demo: setup
	$(PY) -m pretrainctl.scaling_demo --out scaling-demo

# Every bench/*.py in turn (bench/run_all.py), echoed live; their headline figures, one table, go
# to bench/RESULTS.md (committed, quoted by docs/benchmarks.md), written even when a benchmark fails.
# BENCH_ARGS passes options, e.g. make bench BENCH_ARGS="--only plan --quick".
bench: setup
	@bash .ci/ensure-binaries
	$(PY) bench/run_all.py $(BENCH_ARGS)

# The chaos suite (tests/chaos, bench/chaos.py): 100 seeded trials of the whole loop with its
# processes SIGKILLed and Postgres restarted mid-ingest; prints the trial table and writes its
# summary into bench/RESULTS.md. CHAOS_ARGS passes options, e.g. make chaos CHAOS_ARGS="--trials 10".
chaos: setup
	@bash .ci/ensure-binaries
	$(PY) bench/chaos.py --trials 100 --results-md bench/RESULTS.md $(CHAOS_ARGS)

# Grafana dashboards as code (scripts/dashboards.py) into the chart; tests/dashboards checks they match.
dashboards: setup
	$(PY) scripts/dashboards.py

# docs/configuration.md's settings table, from service/settings.py; tests/test_project.py checks it.
# docs/job-lifecycle.md, from service/lifecycle.py; tests/service/test_lifecycle.py checks it.
docs: setup
	$(PY) scripts/settings_table.py
	$(PY) scripts/lifecycle_diagram.py

clean:
	rm -rf $(VENV) .pretrain demo-out scaling-demo .pytest_cache
