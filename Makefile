# The two commands of the README's quick start. Both set up ./.venv first (idempotent).
#   make demo   tiny random checkpoints → ./vidiff-demo/*.mp4 and *.gif (no GPU, no download)
#   make test   the test suite (what CI runs, through .ci/run)
#   make browser  Debian's chromium for the browser test (apt-get; .ci/run does it before make test)
# TORCH picks the PyTorch build: these machines carry a local CPU build of exactly 2.13.0; elsewhere
# e.g. `make demo TORCH=torch` takes PyPI's default (CUDA on Linux).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup setup-test clean-demo browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .

setup-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"

demo: setup
	$(BIN)/vidiff demo --overwrite

test: setup-test
	$(BIN)/python -m pytest

browser:
	bash .ci/install-chromium

clean-demo:
	rm -rf vidiff-demo
