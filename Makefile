# The README's commands. Each target does its own set-up; nothing needs installing by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: setup test lint demo bench dashboards clean

setup: $(STAMP)

# torch goes first and pinned: anything unpinned would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@bash .ci/ensure-python "$(PYTHON)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[trainer,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

test: setup
	@bash .ci/ensure-binaries
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check service trainer_image tests bench migrations

demo: setup
	@bash scripts/demo.sh

bench: setup
	@bash .ci/ensure-binaries
	@for script in bench/api_submit.py bench/plan.py bench/trainer_cpu.py bench/controller_scale.py bench/watchdog.py; do echo "== $$script"; $(PY) $$script || exit 1; done

# Grafana dashboards as code (scripts/dashboards.py) into the chart; tests/dashboards checks they match.
dashboards: setup
	$(PY) scripts/dashboards.py

clean:
	rm -rf $(VENV) .pretrain demo-out .pytest_cache
