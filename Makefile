# One-command set-up for a fresh machine: every target creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo structures test lint docs bench all

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# a bare torch requirement would pull a multi-GB CUDA build: pin the CPU wheel first
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,torch,distributed,deploy,docs,bench,dev,examples]"
	# FastKron, the benchmarks' baseline: its metadata asks for torchvision (a CUDA torch), its numpy path needs neither
	$(BIN)/python -m pip install --quiet --no-deps "pyfastkron>=1.1"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/sekron demo

structures: $(STAMP)
	$(BIN)/sekron structures

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff format --check sekron tests benchmarks examples
	$(BIN)/ruff check sekron tests benchmarks examples
	$(BIN)/mypy sekron

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/python benchmarks/run_all.py

all: test lint docs
