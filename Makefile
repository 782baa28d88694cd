# django-cqrs: `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The core suite also runs on Django 4.2 LTS, the oldest Django the original django-cqrs supports.
VENV42 := .venv-django42
STAMP42 := $(VENV42)/.installed

.PHONY: demo demo-serve test lint pytest venv venv42 clean

venv: $(STAMP)

venv42: $(STAMP42)

$(STAMP): requirements/base.txt requirements/test.txt requirements/docs.txt pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
		else echo "Python venv support is missing: install python3-venv"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt -e .
	@touch $(STAMP)

$(STAMP42): requirements/base.txt requirements/django42.txt | $(STAMP)
	$(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q --upgrade pip
	$(VENV42)/bin/python -m pip install -q -r requirements/django42.txt
	@touch $(STAMP42)

lint: venv
	$(VENV)/bin/ruff check --no-cache .
	$(VENV)/bin/ruff format --no-cache --check .
	$(VENV)/bin/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d .run/site

pytest: venv venv42
	PY=$(PY) PY42=$(VENV42)/bin/python scripts/run_tests.sh

test: lint pytest

demo: venv
	scripts/services.sh up rabbitmq
	$(PY) examples/demo_project/run_demo.py; rc=$$?; scripts/services.sh down; exit $$rc

demo-serve: venv
	scripts/services.sh up rabbitmq
	$(PY) examples/demo_project/run_demo.py serve; rc=$$?; scripts/services.sh down; exit $$rc

clean:
	rm -rf $(VENV) $(VENV42) .coverage site
