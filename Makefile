# oncomri: `make demo` runs the main job on the built-in example; `make test` runs the suite.
# Both build .venv from nothing with the system's python3 (3.11+).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/oncomri demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_relaxometry.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
