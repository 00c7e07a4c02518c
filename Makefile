# Quick start: `make demo` runs the main job on the bundled sample data, `make test` runs the test suite.
# Both create .venv and install the package into it on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "The demo lands with the enhance job; for now: $(BIN)/enhancer --help" && $(BIN)/enhancer --help

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
