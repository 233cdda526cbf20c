#!/usr/bin/env bash
# The whole suite as `make test` runs it on a 2-core machine, in three phases; every lane's log
# is under build/ and is printed at the end, each with its ten slowest tests.
#
#   1. at once: mypy; the light tests (the network-bound ones included), then the heavy tests
#      of lane A; the other heavy tests that bound no latency (lane B).
#   2. when phase 1 is done, the emulated-engine tests that bound latency or refusal counts,
#      in two lanes: each holds a local cluster at ~0.6 of a core under load (measured with
#      a process-tree CPU monitor on the length-class test), so two of them leave the
#      engines' event loops a core of slack; nothing else runs.
#   3. the real-vLLM latency tests alone: their engines compute on the CPUs.
#
# Tests whose clusters can run at the same time keep their Ray files in folders of their own
# (build/ray-tmp-NAME): a Ray job resolves its cluster through the temp folder's
# ray_current_cluster file, and a shared folder sent a replan job to the other lane's cluster.
#
# A lane's status is pytest's own (5, no test collected, included: .ci/run fails on it); the
# script exits with the first non-zero one, after every phase has run.
set -u
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
mkdir -p build
PYTEST=("$BIN/python" -m pytest -q --durations=10)
HEAVY_A=(tests/app/test_router_faults.py tests/app/test_fuzz_api.py)
LATENCY_A=(tests/app/test_ladder_serving.py tests/app/test_chaos.py)
declare -A RC
START=$(date +%s)
stamp() { echo "[$(( $(date +%s) - START )) s] $*"; }

lane() {    # lane NAME ARGS...: one pytest process, its log build/test-NAME.log
  local name=$1; shift
  "${PYTEST[@]}" --basetemp="build/pytest-$name" "$@" > "build/test-$name.log" 2>&1
}

stamp "phase 1: mypy, the light tests then heavy lane A, heavy lane B (logs: build/mypy.log," \
  "build/test-rest.log, build/test-heavy-a.log, build/test-heavy-b.log)"
"$BIN/mypy" > build/mypy.log 2>&1 & mypy=$!
{ lane rest -m "not heavy or network"; echo $? > build/rc-rest
  lane heavy-a -m "heavy and not latency and not network" "${HEAVY_A[@]}"
  echo $? > build/rc-heavy-a; } & light=$!
ignore_a=(); for f in "${HEAVY_A[@]}"; do ignore_a+=(--ignore "$f"); done
lane heavy-b -m "heavy and not latency and not network" "${ignore_a[@]}"; RC[heavy-b]=$?
wait $light; wait $mypy; RC[mypy]=$?
RC[rest]=$(cat build/rc-rest); RC[heavy-a]=$(cat build/rc-heavy-a)

stamp "phase 2: the emulated latency tests in two lanes (build/test-latency-a.log," \
  "build/test-latency-b.log)"
lane latency-a -m "latency and not vllm" "${LATENCY_A[@]}" & lat_a=$!
ignore_l=(); for f in "${LATENCY_A[@]}"; do ignore_l+=(--ignore "$f"); done
lane latency-b -m "latency and not vllm" "${ignore_l[@]}"; RC[latency-b]=$?
wait $lat_a; RC[latency-a]=$?

stamp "phase 3: the real-vLLM latency tests (build/test-latency-vllm.log)"
lane latency-vllm -m "latency and vllm"; RC[latency-vllm]=$?
stamp "done"

status=0
for name in rest heavy-a heavy-b latency-a latency-b latency-vllm; do
  echo "== $name (exit ${RC[$name]})"; cat "build/test-$name.log"
  if [ "$status" -eq 0 ] && [ "${RC[$name]}" -ne 0 ]; then status=${RC[$name]}; fi
done
echo "== mypy (exit ${RC[mypy]})"; cat build/mypy.log
if [ "$status" -eq 0 ] && [ "${RC[mypy]}" -ne 0 ]; then status=${RC[mypy]}; fi
stamp "exit $status"
exit "$status"
