# The two commands of the README:
#   make serve   installs what the server needs into .venv and starts it (ARGS="--workers 3 --port 8000")
#   make test    installs what the tests need into .venv and runs the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: serve test install install-dev

serve: install
	$(PY) run_server.py $(ARGS)

test: install-dev
	$(PY) -m pytest -q $(ARGS)

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@
