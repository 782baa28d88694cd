# django-cqrs: `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-serve test lint pytest venv clean

venv: $(STAMP)

$(STAMP): requirements/base.txt requirements/test.txt requirements/docs.txt pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
		else echo "Python venv support is missing: install python3-venv"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt -e .
	@touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .
	$(VENV)/bin/mkdocs build --strict -q -d .run/site

pytest: venv
	PY=$(PY) scripts/run_tests.sh

test: lint pytest

demo: venv
	scripts/services.sh up rabbitmq
	$(PY) examples/demo_project/run_demo.py; rc=$$?; scripts/services.sh down; exit $$rc

demo-serve: venv
	scripts/services.sh up rabbitmq
	$(PY) examples/demo_project/run_demo.py serve; rc=$$?; scripts/services.sh down; exit $$rc

clean:
	rm -rf $(VENV) .coverage site
