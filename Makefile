# reasonrec developer targets. `make help` lists them.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.DEFAULT_GOAL := help

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (Python >= 3.11) on PATH; set PY=..."; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	@touch $@

$(DEV_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install reasonrec (CPU torch 2.13.0)

dev: $(DEV_STAMP) ## install reasonrec with the dev extras

demo: $(STAMP) ## run the full demo on synthetic data (embedded Redis unless REDIS_URL is set)
	$(BIN)/reasonrec demo

test: $(DEV_STAMP) ## run the test suite (real Redis, Celery, HTTP and gRPC on loopback)
	$(BIN)/python -m pytest -q

lint: $(DEV_STAMP) ## ruff lint + format check, mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy sid_index fast_path slow_path serving trainer

bench: $(DEV_STAMP) ## run one benchmark by hand, e.g. `make bench B=beam_search_speed` (writes RESULTS.md)
	@if [ -z "$(B)" ]; then echo "usage: make bench B=<name>; available:"; \
	  ls benchmarks/*.py | sed 's|benchmarks/||; s|\.py$$||; s|^|  |'; exit 2; fi
	$(BIN)/python -m benchmarks.$(B)

proto: $(DEV_STAMP) ## regenerate the gRPC stubs in serving/proto/gen from the .proto
	$(BIN)/python -m grpc_tools.protoc -Iserving/proto/gen=serving/proto --python_out=. \
	  --grpc_python_out=. --pyi_out=. serving/proto/gen/reasonrec/v1/recommend.proto

clean: ## remove the virtualenv and build artifacts
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache

.PHONY: help install dev demo test lint bench proto clean
