# BOute — the two commands of the contract: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: setup demo test lint typecheck bench clean

setup: $(STAMP)

# torch first, from the CPU wheel on local disk; otherwise pip resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/boute trace --shape gsm8k --rate 100
	$(BIN)/boute profile
	$(BIN)/boute plan --quality 89 --out build/plan.json
	$(BIN)/boute evaluate build/plan.json
	$(BIN)/boute compare

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Each benchmark prints a table, writes JSON under build/ and exits 1 if it misses a target.
bench: setup
	-$(BIN)/python benchmarks/calibration.py
	-$(BIN)/python benchmarks/perfdb.py
	-RAY_AUTH_MODE=disabled $(BIN)/python benchmarks/search.py --tune

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
