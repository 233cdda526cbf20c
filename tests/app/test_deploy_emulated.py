"""The user's path end to end with emulated engines: `boute plan` -> `boute deploy --local
--bench-s` (a local fake cluster carrying the plan's GPU types, the router, an open-loop
bench) -> measured versus predicted."""

import json
from pathlib import Path

import pytest

from boute.cli import main
from tests.app import SERVE_SMALL_SCENARIO, free_port


@pytest.mark.heavy
@pytest.mark.latency
def test_deploy_bench_matches_prediction(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    scenario, db, plan = tmp_path / "s.yaml", tmp_path / "db.parquet", tmp_path / "plan.json"
    scenario.write_text(SERVE_SMALL_SCENARIO)
    assert main(["plan", "--scenario", str(scenario), "--db", str(db), "--quality", "87",
                 "--solver", "exact", "--plot", "", "--out", str(plan)]) == 0
    capsys.readouterr()
    code = main(["--json", "deploy", str(plan), "--backend", "emulated", "--local",
                 "--scenario", str(scenario), "--db", str(db), "--rate", "6",
                 "--bench-s", "60", "--port", str(free_port())])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    bench, predicted = out["bench"], out["predicted"]
    assert bench["ok"] == bench["requests"] >= 300 and not bench["errors"]
    measured_p95 = bench["e2e_s"]["p95"]
    assert abs(measured_p95 - predicted["system_p95_s"]) <= 0.2 * predicted["system_p95_s"], (
        measured_p95, predicted)
    assert abs(bench["strong_share"] - predicted["strong_share"]) <= 0.05
    print(json.dumps({"measured_p95_s": measured_p95, **predicted}))
