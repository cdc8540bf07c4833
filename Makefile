# curvscope: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEV_STAMP := $(VENV)/.curvscope-dev
DEMO_STAMP := $(VENV)/.curvscope-demo

.PHONY: test lint format demo bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(DEV_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e '.[dev]'
	touch $@ $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -e '.[demo]'
	touch $@

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest

demo: $(DEMO_STAMP)
	$(VENV)/bin/curvscope demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
