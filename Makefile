# SAIL — set up, run the demo, run the tests.  `make demo` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# the CT head volume used by the demo ships inside this wheel; it is read from the wheel, never installed
TOTALSEG_WHEEL := totalsegmentator==2.18.0

.PHONY: install sources demo test clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"

sources: $(BIN)/python
	@ls .cache/wheels/totalsegmentator-*.whl >/dev/null 2>&1 || $(BIN)/pip download -q --no-deps $(TOTALSEG_WHEEL) -d .cache/wheels

demo: install sources
	$(BIN)/sail run demo

test: install sources
	bash tools/test.sh

clean-runs:
	rm -rf runs data/demo data/smoke
