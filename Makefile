# oncomri: `make demo` runs the main job on the built-in example; `make test` runs the suite.
# Both build .venv from nothing with the system's python3 (3.11+).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean system-deps

# System tools the tests run for real: dcm2niix (cross-check of the DICOM
# reader), dciodvfy from dicom3tools (validation of DICOM we write) and a
# PostgreSQL server (initdb; Debian keeps it under /usr/lib/postgresql/*/bin)
# that the study-database tests start in a temporary folder; headless
# chromium renders the HTML report in its test.
SYSTEM_TOOLS := dcm2niix dciodvfy chromium
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing initdb"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages for:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq dcm2niix dicom3tools postgresql chromium >/dev/null; \
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
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/bench_relaxometry.py
	$(BIN)/python bench/bench_io.py
	$(BIN)/python bench/bench_dce.py
	$(BIN)/python bench/bench_study.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
