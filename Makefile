# Quick start: `make demo` runs the main job on the bundled sample data, `make test` runs the test suite.
# Both create .venv and install the package into it on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-tools lint format demo install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Tools the portability tests read our files with: Debian's h5dump (HDF5 1.10) and h5py 3.14.0, the last
# release bundling HDF5 1.14, in a venv of its own; and Debian's chromium, which the HTML report's tests drive
# headless. Installed when missing (apt needs root); without them those tests skip locally and fail under CI=true.
H5PY114 := .venv-h5py114/bin/python

$(H5PY114):
	$(PYTHON) -m venv .venv-h5py114
	.venv-h5py114/bin/python -m pip install --quiet h5py==3.14.0

test-tools: $(H5PY114)
	@command -v h5dump >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   hdf5-tools >/dev/null) || echo "h5dump (Debian hdf5-tools) not installed: its portability test will skip"; }
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   chromium >/dev/null) || echo "chromium not installed: the HTML report's browser tests will skip"; }

# The tests use the 16 sample X-rays from the user cache (~/.cache/enhancer), fetched from PyPI on first use like
# `enhancer fetch-samples` does. Offline, ENHANCER_SAMPLES=DIR names a copy; a checkout that has the project's
# shared data folder beside it (../shared/data/kermany-val) uses that copy.
export ENHANCER_SAMPLES ?= $(wildcard $(abspath ..)/shared/data/kermany-val)

# Formatting and lint (rules and their reasons: [tool.ruff] in pyproject.toml); `make format` applies the formatter.
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) test-tools lint
	ENHANCER_H5PY114_PYTHON=$(abspath $(H5PY114)) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The demo: fetch the 16 sample X-rays, enhance them with the seed ResNet-101 architecture, merge, draw a grid.
# CHECKPOINT=path/to/ResNet-101_GradCAM_Cropped_v4.pth uses a trained model; without one a demonstration model
# (random weights, BatchNorm calibrated and output layer fitted on the samples) is made; its heatmaps say nothing
# medical.
DEMO_DIR ?= demo-output
CHECKPOINT ?=
DEMO_CHECKPOINT := $(if $(CHECKPOINT),$(CHECKPOINT),$(DEMO_DIR)/demo-resnet101.pt)
DEMO_OUT := $(DEMO_DIR)/enhanced-$(basename $(notdir $(DEMO_CHECKPOINT)))

demo: $(STAMP)
	$(BIN)/enhancer fetch-samples $(DEMO_DIR)/samples
	@if [ -z "$(CHECKPOINT)" ]; then \
	  echo "No CHECKPOINT given: using a DEMONSTRATION model (random weights, calibrated BatchNorm); its heatmaps"; \
	  echo "show the pipeline working, not medical evidence. Run 'make demo CHECKPOINT=your.pth' for a real model."; \
	  [ -f $(DEMO_CHECKPOINT) ] || $(BIN)/enhancer demo-model $(DEMO_CHECKPOINT) --arch resnet101 \
	    --data $(DEMO_DIR)/samples; fi
	$(BIN)/enhancer inspect $(DEMO_CHECKPOINT)
	$(BIN)/enhancer enhance --data $(DEMO_DIR)/samples --checkpoint $(DEMO_CHECKPOINT) --out $(DEMO_OUT) --batch-size 16
	$(BIN)/enhancer merge $(DEMO_OUT)
	$(BIN)/enhancer verify $(DEMO_OUT)
	$(BIN)/enhancer show $(DEMO_OUT) --out $(DEMO_DIR)/grid.png
	@echo
	@echo "Samples:          $(DEMO_DIR)/samples"
	@echo "Enhanced dataset: $(DEMO_OUT) (shards, manifest.json, rejected.csv, README.md)"
	@echo "Grid:             $(DEMO_DIR)/grid.png"

clean:
	rm -rf $(VENV) .venv-h5py114 build *.egg-info .pytest_cache
