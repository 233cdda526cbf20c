"""benchmarks/run_all.py: every script is listed, and a missed target fails the run."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run_all  # noqa: E402
from _targets import Target, check, passed, resolve  # noqa: E402

# A fake benchmark: writes a targets block for a measured 2.0 against `score <= 1.0` (or the
# override) and exits 1 when it misses, as every script of benchmarks/ does.
FAKE = """
import argparse, json, sys
sys.path.insert(0, {bench!r})
from _targets import Target, add_target_argument, check, passed, resolve
TARGETS = {{"score": Target("<=", 1.0, "s", "a fake figure")}}
ap = argparse.ArgumentParser()
ap.add_argument("--json")
add_target_argument(ap, TARGETS)
args = ap.parse_args()
rows = check(resolve(TARGETS, args.target), {{"score": 2.0}})
open(args.json, "w").write(json.dumps({{"targets": rows}}))
sys.exit(0 if passed(rows) else 1)
"""


def _fake(tmp_path: Path) -> run_all.Bench:
    script = tmp_path / "fake.py"
    script.write_text(FAKE.format(bench=str(BENCHMARKS)))
    return run_all.Bench("fake", str(script), full_json=str(tmp_path / "fake.json"))


def test_every_benchmark_script_is_in_the_runner() -> None:
    scripts = {p.name for p in BENCHMARKS.glob("*.py")
               if not p.name.startswith("_") and p.name != "run_all.py"}
    listed = {Path(b.script).name for b in run_all.BENCHMARKS}
    assert scripts - listed == set()
    assert listed - scripts == set()        # nothing listed that does not exist
    assert len({b.name for b in run_all.BENCHMARKS}) == len(run_all.BENCHMARKS)


def test_quick_results_stay_out_of_the_committed_data() -> None:
    for b in run_all.BENCHMARKS:
        quick, full = b.json_path(full=False), b.json_path(full=True)
        assert quick is not None and quick.parts[:2] == ("build", "bench")
        assert "benchmarks/data" not in " ".join(b.quick)
        assert full is None or full.parts[:2] == ("benchmarks", "data")


def test_runner_fails_on_a_missed_target(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    rc = run_all.run_all([_fake(tmp_path)], full=True, summary=summary, cwd=tmp_path)
    assert rc == 1                          # measured 2.0 > target 1.0
    out = json.loads(summary.read_text())
    assert out["passed"] is False
    assert out["benchmarks"][0]["missed"] == ["score"]
    assert out["benchmarks"][0]["key_figure"] == "score 2 s"


def test_runner_passes_with_an_override_and_rejects_unknown_names(tmp_path: Path) -> None:
    bench = _fake(tmp_path)
    assert run_all.run_all([bench], full=True, targets=["fake.score=3"], cwd=tmp_path) == 0
    with pytest.raises(SystemExit, match=r"NAME\.KEY=VALUE"):
        run_all.run_all([bench], full=True, targets=["other.score=3"], cwd=tmp_path)


def test_targets_resolve_and_check() -> None:
    targets = {"p99_ms": Target("<=", 1.0, "ms", "p99"), "rps": Target(">=", 300.0, "1/s", "")}
    assert resolve(targets, ["p99_ms=0.5"])["p99_ms"].value == 0.5
    assert targets["p99_ms"].value == 1.0   # not changed in place
    with pytest.raises(SystemExit, match="KEY one of p99_ms, rps"):
        resolve(targets, ["p50_ms=1"])
    rows = check(targets, {"p99_ms": 0.9, "rps": None}, {"no errors": True})
    assert [r["ok"] for r in rows] == [True, False, True]   # None (not measured) fails
    assert not passed(rows)


def test_vllm_runs_csv_matches_calibration_md() -> None:
    ref = BENCHMARKS / "data" / "reference"
    text = (ref / "calibration.md").read_text()
    s3 = text[text.index("## 3."):text.index("## 4.")]
    with (ref / "vllm_runs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14
    for r in rows:
        assert r["source_url"].startswith("https://github.com/LambdaLabsML/vllm-benchmark")
        assert r["source_url"].split("/")[-1] in s3
        # calibration.md rounds to whole tok/s above 1,000 (3,032.04 -> "3,032").
        tput = float(r["tput_tok_s"])
        shown = f"{tput:,.0f}" if tput >= 1000 else f"{tput:g}"
        assert re.search(rf"(?<![\d,.]){re.escape(shown)}(?![\d])", s3), (r["name"], shown)


# -- benchmarks/cpu_e2e.py: what decides its verdict, and what --refit reads back ------------
def _e2e_row(err: float, *, ok: int = 10, requests: int = 10) -> dict[str, object]:
    return {"rate_rps": 1.0, "shape": "gsm8k", "ok": ok, "requests": requests,
            "served_p95_err": err, "served_mean_err": 0.0}


def test_cpu_e2e_judges_only_the_held_out_rows() -> None:
    from cpu_e2e import TARGET, misses

    # The first row is the calibration window: its error (fitted on) never fails the run.
    assert misses([_e2e_row(0.9), _e2e_row(TARGET), _e2e_row(-TARGET)]) == []
    missed = misses([_e2e_row(0.0), _e2e_row(-0.3), _e2e_row(float("nan"))])
    assert [m.split()[-1] for m in missed] == ["-30.0%", "+nan%"]   # NaN is a miss, not a pass
    # A failed request fails the run wherever it is.
    assert misses([_e2e_row(0.0, ok=9), _e2e_row(0.0)]) == ["1 req/s gsm8k: 9 of 10 ok"]


def test_cpu_e2e_prepared_round_trip_and_mix_trace(tmp_path: Path) -> None:
    import numpy as np
    from cpu_e2e import Prepared, mix_trace

    from profiling import EngineConfig, generate_trace, load_trace

    prep = Prepared(tmp_path, {"m": "/x"}, "g.yaml", "m.yaml", "s.yaml", "hw", "db", "plan",
                    {"compute": 0.5}, {"name": "vllm", "max_num_seqs": 32})
    prep.save()
    back = Prepared.load(tmp_path)
    assert back == prep and back.engine_config() == EngineConfig(max_num_seqs=32)
    mix = load_trace(mix_trace(prep))
    base = generate_trace("gsm8k", rate_rps=1.0, num_requests=2000, seed=7)
    # GSM8K's prompts unchanged, each output doubled, capped at 1,024 tokens.
    assert np.array_equal(mix.input_tokens, base.input_tokens)
    assert np.array_equal(mix.output_tokens, np.minimum(2 * base.output_tokens, 1024))


def test_router_bench_replica_counts_goals_and_its_own_processes() -> None:
    import os
    import subprocess

    from router import GOAL_HOP_P50_MS, GOAL_RPS_PER_REPLICA, descendants, goals, router_counts

    assert router_counts("1,2,4") == [1, 2, 4]
    assert router_counts("4, 1") == [4, 1]
    for bad in ("0,2", "two", "", "1,-1"):
        with pytest.raises(SystemExit, match="use positive integers"):
            router_counts(bad)
    g = goals([1, 4])
    assert list(g) == ["hop_p50_ms_r1", "rps_per_replica_r1", "hop_p50_ms_r4",
                       "rps_per_replica_r4"]
    assert (g["hop_p50_ms_r4"].op, g["hop_p50_ms_r4"].value) == ("<=", GOAL_HOP_P50_MS)
    assert GOAL_HOP_P50_MS == 1.0
    assert (g["rps_per_replica_r1"].op, g["rps_per_replica_r1"].value) == (">=", 1000.0)
    rows = check(g, {"hop_p50_ms_r1": 0.9, "rps_per_replica_r1": GOAL_RPS_PER_REPLICA,
                     "hop_p50_ms_r4": 1.5, "rps_per_replica_r4": 999.0})
    assert [r["ok"] for r in rows] == [True, True, False, False]
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                              "marker-router-bench-test"])
    try:
        assert descendants("marker-router-bench-test") == [child.pid]
        assert descendants("marker-that-runs-nowhere") == []
    finally:
        child.kill()
        child.wait()
