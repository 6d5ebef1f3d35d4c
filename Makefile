# oncomri: `make demo` runs the main job on the built-in example; `make test` runs the suite.
# Both build .venv from nothing with the system's python3 (3.11+).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean system-deps

# System tools the tests run for real: dcm2niix (cross-check of the DICOM
# reader) and dciodvfy from dicom3tools (validation of DICOM we write).
SYSTEM_TOOLS := dcm2niix dciodvfy
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages for:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dcm2niix dicom3tools >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/oncomri demo --out demo_output

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

bench: $(STAMP) system-deps
	$(BIN)/python bench/bench_relaxometry.py
	$(BIN)/python bench/bench_io.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
