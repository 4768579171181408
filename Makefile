# SAIL — set up, run the demo, run the tests.  `make demo` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# the CT head volume used by the demo ships inside this wheel; it is read from the wheel, never installed
TOTALSEG_WHEEL := totalsegmentator==2.18.0
# torch is installed first, pinned: on a CPU-only machine an unpinned torch pulls several GB of CUDA packages.
# On a GPU machine install the CUDA build of torch into .venv first (or pass TORCH="..."); an installed torch is kept.
TORCH ?= torch==2.13.0

NPM_DIR := .cache/npm
WIDGET_JS := $(NPM_DIR)/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js

.PHONY: install sources demo test docs docs-deps browser dicom-tools refresh-docs clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"

sources: $(BIN)/python
	@ls .cache/wheels/totalsegmentator-*.whl >/dev/null 2>&1 || $(BIN)/pip download -q --no-deps $(TOTALSEG_WHEEL) -d .cache/wheels

demo: install sources
	$(BIN)/sail run demo

test: install sources docs-deps browser dicom-tools
	bash tools/test.sh

# the offline preview of the documentation site (Quarto cannot be installed offline; `nbdev_docs` builds the real site where it is)
docs: install docs-deps
	$(BIN)/sail docs preview

# re-execute nbs/ on the finished demo run and store slim outputs (run before committing notebook changes that alter results)
refresh-docs: demo
	$(BIN)/sail docs refresh demo

# the widget manager and require.js for pages with widgets, from the npm registry (never a CDN at view time)
docs-deps: $(WIDGET_JS)
$(WIDGET_JS):
	npm install --prefix $(NPM_DIR) --no-audit --no-fund --silent @jupyter-widgets/html-manager@1 requirejs@2

# Debian's Chromium for the browser tests and static figure export (Playwright drives it; it never downloads a browser)
browser:
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Debian's chromium: apt-get install chromium"; fi; }

# Debian's dcm2niix: the independent reference SAIL's DICOM reader is checked against (tests/test_independent.py)
dicom-tools:
	@command -v dcm2niix >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix >/dev/null; \
	  else echo "the DICOM check needs Debian's dcm2niix: apt-get install dcm2niix"; fi; }

clean-runs:
	rm -rf runs data/demo data/smoke _preview
