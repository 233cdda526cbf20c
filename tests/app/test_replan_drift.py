"""The replan job's drift: a logged window against the plan's perf DB (`window_drift`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from app.replan import ReplanOptions, window_drift
from profiling import (
    Efficiency,
    EngineConfig,
    ReplicaModel,
    generate_trace,
    load_catalog,
    scale_efficiency,
)
from profiling.measure import synthetic_group
from tests.boute.test_calibrate_cli import T0, _write_log
from tests.conftest import TINY_SCENARIO, write_scenario
from tuning import Group, Plan, Routing, planning_problem

NAME = "llama-3.1-8b-H100-tp1pp1"


@pytest.fixture(scope="module")
def problem(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("drift")
    return planning_problem(str(write_scenario(work, TINY_SCENARIO)),
                            db=str(work / "db.parquet"), progress=False)


def _log(folder: Path, slow: bool) -> float:
    """A 300-request window of one H100 group at 5 req/s, by the offline model or a slower
    deployment (efficiency x0.7, overhead x3, 40 ms stack); the window's end."""
    cat = load_catalog()
    engine = EngineConfig()
    eff = Efficiency()
    if slow:
        engine = replace(engine, step_overhead_s=4.5e-3, frontend_latency_s=0.04)
        eff = scale_efficiency(eff, 0.7)
    truth = ReplicaModel(cat.model("llama-3.1-8b"), cat.gpu("H100"), 1, 1, engine, eff)
    trace = generate_trace("gsm8k", rate_rps=5.0, num_requests=300, seed=4)
    _write_log(folder, {NAME: synthetic_group(truth, trace, seed=4, start_unix_s=T0)})
    return T0 + float(trace.arrival_s[-1]) + 1.0


@pytest.mark.parametrize("slow", [False, True])
def test_drift_is_flagged_only_for_a_slower_deployment(problem, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       slow: bool) -> None:
    end = _log(tmp_path / "log", slow)
    plan = Plan(Routing(0.0), (Group("llama-3.1-8b", "H100", 1, 1, 1, 1.0),))
    report = window_drift(str(tmp_path / "log"), ReplanOptions(window_s=end - T0 + 1), end,
                          plan, problem)
    (g,) = report.groups
    assert g.group == NAME and g.requests == 300
    if slow:
        # the offline DB predicts ~40% under what the slower deployment served
        assert g.error_p95 < -0.25 and g.drifted is True and report.drifted
    else:
        # the DB's own model served it: the error is the DB's (rate grid, trace) only
        assert abs(g.error_p95) < 0.25 and g.drifted is False and not report.drifted
    assert report.to_dict()["groups"][0]["group"] == NAME


def test_recalibration_on_the_window_closes_the_gap(problem, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from app.replan import _recalibrate
    from profiling import load_served_calibration

    end = _log(tmp_path / "log", slow=True)
    plan = Plan(Routing(0.0), (Group("llama-3.1-8b", "H100", 1, 1, 1, 1.0),))
    options = ReplanOptions(window_s=end - T0 + 1, recalibrate_on_drift=True)
    state = SimpleNamespace(plan=plan, stack=SimpleNamespace(gpu_catalog=(), model_catalog=()))
    path = _recalibrate(str(tmp_path / "log"), options, end, state, tmp_path)  # type: ignore[arg-type]
    cal = load_served_calibration(path)
    assert cal.groups[0].frontend_latency_s == pytest.approx(0.04, rel=0.15)
    # the window's DB rebuilt on the corrected model: the same window no longer drifts
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    fixed = planning_problem(str(scenario), db=str(tmp_path / "db.parquet"), progress=False,
                             served_calibration=str(path))
    report = window_drift(str(tmp_path / "log"), options, end, plan, fixed)
    (g,) = report.groups
    assert abs(g.error_p95) < 0.25 and g.drifted is False, g
