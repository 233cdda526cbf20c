"""Plan files: the schema's one-line errors and the goal a plan keeps (`tuning._plan`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tuning import Goal, Group, Plan, PlanError, Routing, WindowSLO, WorkloadRouting

LADDER = Routing(0.5, models=("a", "b"), workloads=(
    WorkloadRouting("math", (0.4, 0.6), (0.3,), 2.0, 88.0),
    WorkloadRouting("chat", (0.7, 0.3), (math.nan,), 3.0, 8.0)))
GROUPS = (Group("a", "H100", 1, 1, 2, 1.0), Group("b", "H100", 4, 1, 1, 1.0))


def _plan(**change: Any) -> dict[str, Any]:
    """A valid pair plan's JSON object with `change`'s top-level keys replaced."""
    return {"routing": {"strong_share": 0.5},
            "groups": [{"model": "a", "gpu": "H100", "replicas": 1}], **change}


def test_the_goal_round_trips_through_a_file_by_workload_name(tmp_path: Path) -> None:
    goal = Goal("min-cost", None, 30.0, (88.0, 8.2), WindowSLO(0.95, 600.0))
    plan = Plan(LADDER, GROUPS, extra={"search": {"solver": "exact"}, "headroom": {"ok": 1}},
                goal=goal)
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    # written where it always was: last in search, qualities by workload name
    assert data["search"] == {"solver": "exact", "goal": {
        "mode": "min-cost", "quality": None, "p95_s": 30.0,
        "qualities": {"math": 88.0, "chat": 8.2},
        "slo": {"attainment": 0.95, "window_s": 600.0}}}
    assert list(data) == ["routing", "groups", "predicted", "scenario", "search", "headroom"]
    back = Plan.load(path)
    assert back.goal == goal
    assert back.extra == {"search": {"solver": "exact"}, "headroom": {"ok": 1}}
    assert back.save(tmp_path / "again.json").read_text() == path.read_text()   # byte for byte


def test_a_pair_plan_keeps_its_one_named_workload_goal(tmp_path: Path) -> None:
    # two models and one workload named in the scenario: a pair plan, qualities by that name
    spec = {"gpus": {"H100": {}}, "workloads": [{"name": "math", "task": "gsm8k"}]}
    goal = Goal("pareto", None, 8.0, (87.0,))
    plan = Plan(Routing(0.3), GROUPS, scenario={"name": "s", "spec": spec}, goal=goal)
    assert plan.to_dict()["search"]["goal"]["qualities"] == {"math": 87.0}
    assert Plan.load(plan.save(tmp_path / "p.json")).goal == goal
    plain = Plan(Routing(0.3), GROUPS, goal=Goal("max-throughput", 80.0, 9.0))
    assert Plan.from_dict(plain.to_dict()).goal == plain.goal
    assert Plan.from_dict(_plan()).goal is None and "search" not in _plan()


@pytest.mark.parametrize(("goal", "message"), [
    ({"mode": "cheap"}, r"search\.goal\.mode='cheap' is unknown; use one of pareto"),
    ([1], r"search\.goal=\[1\] must be an object"),
    ({"p95_s": "8"}, r"search\.goal\.p95_s='8' must be a number or null"),
    ({"qualities": {"chat": 8}}, r"search\.goal\.qualities=\{'chat': 8\} must map each "
                                 r"workload \['default'\]"),
    ({"qualities": {"default": "x"}}, r"search\.goal\.qualities\.default='x' must be a number"),
    ({"slo": {"attainment": 1.5}}, r"search\.goal\.slo: attainment=1\.5 must be a share"),
    ({"slo": {"attainment": 0.9, "window_s": None}},
     r"search\.goal\.slo\.window_s=None must be a number;"),
])
def test_a_malformed_goal_is_one_line_naming_search_goal(
        goal: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps(_plan(search={"solver": "exact", "goal": goal})))
    with pytest.raises(PlanError, match=rf"^plan '{path}': {message}") as err:
        Plan.load(path)
    assert "\n" not in str(err.value) and str(err.value).endswith("or drop search.goal")


@pytest.mark.parametrize(("change", "message"), [
    # path, value and rule; list items by index, map values by key
    ({"routing": {"strong_share": 0.5, "models": ["a", "b"], "workloads": [
        {"name": "w", "shares": {"a": 1, "b": 0}}, {"name": "v", "shares": {"a": 1, "b": "x"}}]}},
     "routing.workloads[1].shares.b='x' must be a finite number"),
    ({"groups": [{"model": "a", "gpu": "H100", "replicas": 1},
                 {"model": "b", "gpu": "H100", "tp": True, "replicas": 1}]},
     "groups[1].tp=True must be an integer in [1, 4096] (tensor parallelism)"),
    ({"groups": [{"gpu": "H100", "replicas": 1}]},
     "groups[0].model is missing; it must be a catalog name (the group's model)"),
    ({"groups": [{"model": "a", "gpu": "H100", "replicas": 512, "tp": 8, "pp": 2}]},
     "groups[0]: tp x pp x replicas = 8192 GPUs, more than the 4096 of one GPU type"),
    ({"routing": {"strong_share": 0.5, "threshold": float("nan")}},
     "routing.threshold=nan must be a finite number, or null: calibrated live"),
    ({"scenario": {"rate_rps": 0}}, "scenario.rate_rps=0 must be a positive number"),
    ({"scenario": {"spec": {"gpus": {}}}},
     "scenario.spec: gpus must list at least one GPU type; re-plan with `boute plan`"),
])
def test_schema_errors_are_one_line_with_path_value_and_rule(
        change: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as err:
        Plan.from_dict(_plan(**change), "plan 'x.json'")
    assert str(err.value).startswith(f"plan 'x.json': {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_keys_are_kept_and_predicted_is_read_leniently() -> None:
    data = _plan(scenario={"name": "s", "rate_rps": 2.0, "mine": [1]}, zeta=1, alpha={"b": 2},
                 predicted={"p95_s": "3", "quality": None})
    plan = Plan.from_dict(data)
    assert plan.extra == {"zeta": 1, "alpha": {"b": 2}} and list(plan.extra) == ["zeta", "alpha"]
    assert plan.scenario == {"name": "s", "rate_rps": 2.0, "mine": [1]}
    assert plan.predicted is not None and plan.predicted.p95_s == 3.0
    assert plan.predicted.quality == math.inf                 # null (or absent): inf
    assert Plan.from_dict(_plan(predicted=[1])).predicted is None
    assert Plan.from_dict(_plan(predicted={"p95_s": "fast"})).predicted is None


def test_a_pair_routing_reads_as_the_ladder_with_two_models() -> None:
    """`Routing.per_workload`: the pair is the ladder with K = 2, routing each workload alike."""
    (w,) = Routing(0.3, 0.62).per_workload(("default",))
    assert (w.name, w.shares, w.thresholds, w.tails) == ("default", (0.7, 0.3), (0.62,), (0.3,))
    ladder = Routing(0.2, models=("s", "m", "l"), workloads=(
        WorkloadRouting("math", (0.5, 0.3, 0.2), (0.1, 0.4)),))
    assert ladder.per_workload(("chat",)) == ladder.workloads
