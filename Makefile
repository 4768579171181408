# SAIL — set up, run the demo, run the tests.  `make demo` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# the CT head volume used by the demo ships inside this wheel; it is read from the wheel, never installed
TOTALSEG_WHEEL := totalsegmentator==2.18.0
# torch is installed first, pinned: on a CPU-only machine an unpinned torch pulls several GB of CUDA packages.
# On a GPU machine install the CUDA build of torch into .venv first (or pass TORCH="..."); an installed torch is kept.
TORCH ?= torch==2.13.0

.PHONY: install sources demo test clean-runs

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

test: install sources
	bash tools/test.sh

clean-runs:
	rm -rf runs data/demo data/smoke
