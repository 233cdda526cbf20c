"""The replan job chooses its plan through the same pipeline as `boute plan` (issue 26).

A request-log window of the small two-type scenario is written as the replan job writes it
(`_window_problems`: the window's trace, the plan's scenario with that trace and rate, the GPU
stock capped by the live cluster); `boute plan` on that scenario file and DB and the replan
job's proposal must be the same plan, headroom check included, for the same goal. Before the
pipeline the replan job searched on its own and never re-simulated its plan.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import placement
from app.main import Stack
from app.replan import ReplanOptions, RunningState, _goal_of, _propose, _window_problems
from boute.cli import main
from profiling import generate_trace, load_scenario
from tests.tuning.conftest import SMALL
from tuning import Goal, Group, Plan, Routing, WindowSLO

NODES = [{"GPU": 8.0, "gpu_type_H100": 8.0}, {"GPU": 4.0, "gpu_type_RTX-4090": 4.0}]


def test_replan_and_boute_plan_choose_the_same_plan_on_the_same_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(placement, "live_nodes", lambda: NODES)
    spec = yaml.safe_load(SMALL)
    scenario = load_scenario(_write(tmp_path / "small.yaml", SMALL))
    goal = Goal("min-cost", 87.0, 8.0)
    running = Plan(Routing(0.3), (Group("llama-3.1-8b", "RTX-4090", 1, 1, 2, 1.0),
                                  Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0)),
                   scenario={"name": "small", "spec": scenario.model_dump(mode="json")},
                   goal=goal)
    state = RunningState(running, Stack(log_dir=str(tmp_path / "log")), None, "127.0.0.1",
                         8000, "HeadOnly")
    # the window: 240 requests of the scenario's shape at 12 req/s (the log's traffic)
    window = generate_trace(spec["workload"]["shape"], rate_rps=12.0, num_requests=240, seed=7)
    options = ReplanOptions(work_dir=str(tmp_path / "replan"), resim_seeds=1)
    assert _goal_of(running, options) == goal
    problems = _window_problems(state, options, {"default": window}, str(tmp_path / "log"))
    proposed = _propose(problems, goal, options, window.rate_rps)

    out = tmp_path / "plan.json"
    assert main(["--json", "plan", "--scenario", str(problems.scenario_path),
                 "--db", str(problems.work / "perfdb.parquet"), "--objective", "min-cost",
                 "--quality", "87", "--p95", "8", "--resim-seeds", "1", "--out", str(out),
                 "--plot", ""]) == 0
    planned = json.loads(capsys.readouterr().out)["plan"]
    mine = json.loads(json.dumps(proposed.to_dict()))
    for p in (mine, planned):       # auto's reason quotes the measured CPU ms of the DP probe
        assert p["search"].pop("reason").startswith("the certified answer is estimated")
    assert mine == planned
    # the proposal went through the headroom check, as `boute plan`'s does
    assert proposed.extra["headroom"]["seeds"] == [101]
    assert proposed.goal == goal and planned["search"]["goal"] == goal.to_dict(("default",))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_goal_round_trips_through_the_plan_and_names_bad_fields() -> None:
    goal = Goal("min-cost", None, 30.0, (88.0, 8.2), WindowSLO(0.95, 300.0))
    saved = goal.to_dict(("math", "chat"))
    assert saved == {"mode": "min-cost", "quality": None, "p95_s": 30.0,
                     "qualities": {"math": 88.0, "chat": 8.2},
                     "slo": {"attainment": 0.95, "window_s": 300.0}}
    # written by name, read back in the problem's workload order
    assert Goal.from_dict(saved, ("math", "chat")) == goal
    assert Goal.from_dict(json.loads(json.dumps(saved)), ("chat", "math")).qualities == (
        8.2, 88.0)
    from tuning import SearchError

    with pytest.raises(SearchError, match=r"goal.mode='cheap' is unknown; use one of pareto"):
        Goal.from_dict({"mode": "cheap"}, ("default",))
    with pytest.raises(SearchError, match=r"goal.p95_s='30' must be a number or null"):
        Goal.from_dict({"p95_s": "30"}, ("default",))
    with pytest.raises(SearchError, match=r"goal.qualities=\{'math': 88\} must map each "
                       r"workload \['math', 'chat'\]"):
        Goal.from_dict({"qualities": {"math": 88}}, ("math", "chat"))
    with pytest.raises(SearchError, match=r"goal.slo: attainment=1.5 must be a share"):
        Goal.from_dict({"slo": {"attainment": 1.5}}, ("default",))
