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

# The demo: fetch the 16 sample X-rays, enhance them with the seed ResNet-101 architecture, merge, draw a grid.
# CHECKPOINT=path/to/ResNet-101_GradCAM_Cropped_v4.pth uses a trained model; without one a demonstration model
# (random weights, calibrated BatchNorm) is made, and its heatmaps say nothing medical.
DEMO_DIR ?= demo-output
CHECKPOINT ?=
DEMO_CHECKPOINT := $(if $(CHECKPOINT),$(CHECKPOINT),$(DEMO_DIR)/demo-resnet101.pt)
DEMO_OUT := $(DEMO_DIR)/enhanced-$(basename $(notdir $(DEMO_CHECKPOINT)))

demo: $(STAMP)
	$(BIN)/enhancer fetch-samples $(DEMO_DIR)/samples
	@if [ -z "$(CHECKPOINT)" ]; then \
	  echo "No CHECKPOINT given: using a DEMONSTRATION model (random weights, calibrated BatchNorm); its heatmaps"; \
	  echo "show the pipeline working, not medical evidence. Run 'make demo CHECKPOINT=your.pth' for a real model."; \
	  [ -f $(DEMO_CHECKPOINT) ] || $(BIN)/enhancer demo-model $(DEMO_CHECKPOINT) --arch resnet101; fi
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
	rm -rf $(VENV) build *.egg-info .pytest_cache
