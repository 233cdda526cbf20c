"""Request classes by length (issue 17 item 4): class DBs, lanes, the exact deployment, choice.

A small one-model scenario (Llama-3.1-8B on 2 H100 + 4 RTX-4090, 200-request DBs) keeps every
perf DB a few seconds to build; they live in a module-scoped temporary folder.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.errors import ScenarioError
from profiling import length_thresholds, load_scenario
from tuning import Goal, Plan, evaluate_plan, planning_problem
from tuning._evaluator import PlanArrays, evaluate_arrays, ladder_arrays, plan_from_arrays
from tuning._lengths import choose
from tuning._polish import exact_deployment

SCENARIO = """\
name: lengths-small
gpus:
  H100: {count: 2}
  RTX-4090: {count: 4}
models: [llama-3.1-8b]
task: gsm8k
workload: {shape: gsm8k, rate_rps: 40}
budget_per_hour: 40
length_classes: {threshold_tokens: [150, 170]}
profile: {num_requests: 200, num_rates: 8}
"""
TAU = 160


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lengths")
    (out / "s.yaml").write_text(SCENARIO)
    return out


@pytest.fixture(scope="module")
def problems(folder: Path):
    args = {"db": str(folder / "db.parquet"), "progress": False}
    whole = planning_problem(str(folder / "s.yaml"), **args)
    split = planning_problem(str(folder / "s.yaml"), threshold_tokens=TAU, **args)
    return whole, split


def test_thresholds_and_class_traces(folder: Path) -> None:
    sc = load_scenario(folder / "s.yaml")
    assert length_thresholds(sc) == (150, 170)
    auto = sc.model_copy(update={"length_classes": sc.length_classes.model_copy(
        update={"threshold_tokens": 123})})
    assert length_thresholds(auto) == (123,)
    base = sc.profile_spec().base_trace()
    short = sc.profile_spec((0, TAU)).base_trace()
    long = sc.profile_spec((TAU, 2**62)).base_trace()
    assert np.all(short.input_tokens + short.output_tokens <= TAU)
    assert np.all(long.input_tokens + long.output_tokens > TAU)
    # Each class is measured on as many requests as the whole workload, at 1 req/s.
    assert len(short) == len(long) == len(base) == 200
    assert short.rate_rps == pytest.approx(1.0) and long.rate_rps == pytest.approx(1.0)


def test_the_split_problem_has_a_lane_per_class(problems) -> None:
    whole, split = problems
    base = whole.scenario.profile_spec().base_trace()
    p_short = float(np.mean(base.input_tokens + base.output_tokens <= TAU))
    assert split.class_share[0] == pytest.approx([p_short, 1 - p_short])
    assert split.num_lanes == 2 and whole.num_lanes == 1
    assert split.num_configs == 2 * whole.num_configs
    assert np.array_equal(whole.cfg_lane, whole.cfg_model)
    # Short requests are served faster: at every level a short-class replica sustains at
    # least the rate of a replica serving the whole mix, a long-class one at most.
    for c in range(whole.num_configs):
        key = (0, int(whole.cfg_type[c]), int(whole.cfg_tp[c]), int(whole.cfg_pp[c]))
        cs, cl = split.config(*key, 0), split.config(*key, 1)
        mid = len(whole.levels_s) // 2
        assert split.caps[0, cs, mid:].min() >= 0
        assert split.caps[0, cs, -1] >= whole.caps[0, c, -1] >= split.caps[0, cl, -1]


def test_a_lane_meets_its_level_on_its_own_load(problems) -> None:
    """P95 of a lane = the level where its groups' capacity equals its load (hand-inverted)."""
    _, pr = problems
    t = pr.gpu_types.index("H100")
    cs, cl = pr.config(0, t, 1, 1, 0), pr.config(0, pr.gpu_types.index("RTX-4090"), 1, 1, 1)
    cfg = np.full((1, pr.num_slots), -1)
    reps = np.zeros((1, pr.num_slots), dtype=np.int64)
    cfg[0, 0 * len(pr.gpu_types) + t], reps[0, t] = cs, 1
    j = 1 * len(pr.gpu_types) + int(pr.cfg_type[cl])
    cfg[0, j], reps[0, j] = cl, 4
    plans = ladder_arrays(pr, np.array([[[1.0]]]), cfg, reps)
    m = evaluate_arrays(pr, plans, 12.0)
    logx = np.log(pr.levels_s)
    for lane, c, r in ((0, cs, 1), (1, cl, 4)):
        load = pr.rate_rps * pr.class_share[0, lane]
        curve = r * pr.caps[0, c]
        k = int(np.argmax(curve >= load))
        x = np.exp(np.interp(load, curve[k - 1:k + 1], logx[k - 1:k + 1]))
        assert m.model_p95_s[0, lane] == pytest.approx(x, rel=1e-9)
    assert m.p95_s[0] == pytest.approx(m.model_p95_s[0].max())
    assert m.cost_per_hour[0] == pytest.approx(pr.cfg_price[cs] + 4 * pr.cfg_price[cl])


def test_the_exact_deployment_is_the_cheapest_by_enumeration(problems) -> None:
    _, pr = problems
    level = 8.0
    got = exact_deployment(pr, np.array([[1.0]]), level)
    assert got is not None
    best = np.inf
    cap = pr.cap_at(level)
    loads = pr.rate_rps * pr.class_share[0]
    per_lane = [np.flatnonzero(pr.cfg_lane == lane) for lane in range(2)]
    # One config per (lane, GPU type): enumerate a config (or none) per slot and replicas.
    slots = [[c for c in per_lane[lane] if pr.cfg_type[c] == t] for lane in range(2)
             for t in range(len(pr.gpu_types))]
    for pick in itertools.product(*[[None, *s] for s in slots]):
        chosen = [c for c in pick if c is not None]
        ranges = [range(1, int(pr.stock[pr.cfg_type[c]] // pr.cfg_gpus[c]) + 1) for c in chosen]
        for reps in itertools.product(*ranges):
            used = np.zeros(len(pr.gpu_types))
            served = np.zeros(2)
            for c, r in zip(chosen, reps, strict=True):
                used[pr.cfg_type[c]] += r * pr.cfg_gpus[c]
                served[pr.cfg_lane[c]] += r * cap[c]
            if np.all(used <= pr.stock) and np.all(served >= loads * (1 + 1e-6)):
                best = min(best, sum(r * pr.cfg_price[c] for c, r in zip(chosen, reps,
                                                                         strict=True)))
    m = evaluate_arrays(pr, got, level)
    assert np.isfinite(best)
    assert m.cost_per_hour[0] == pytest.approx(best) and m.p95_s[0] <= level + 1e-9


def test_a_split_plan_round_trips_through_json(problems, tmp_path: Path) -> None:
    _, pr = problems
    plans = exact_deployment(pr, np.array([[1.0]]), 8.0)
    assert plans is not None
    m = evaluate_arrays(pr, plans, 8.0)
    plan = plan_from_arrays(pr, plans, m, 0)
    data = json.loads(plan.to_json())
    assert data["routing"]["length_classes"]["threshold_tokens"] == TAU
    assert {g["length_class"] for g in data["groups"]} == {"short", "long"}
    again = evaluate_plan(pr, Plan.load(plan.save(tmp_path / "p.json")))
    assert again.predicted.cost_per_hour == pytest.approx(plan.predicted.cost_per_hour)
    assert again.predicted.p95_s == pytest.approx(plan.predicted.p95_s)
    # A plan without classes does not name them, and is refused by a split problem.
    whole_plan = Plan.from_dict({**data, "routing": {k: v for k, v in data["routing"].items()
                                                     if k != "length_classes"},
                                 "groups": [{k: v for k, v in g.items() if k != "length_class"}
                                            for g in data["groups"]]})
    assert "length_class" not in whole_plan.to_dict()["groups"][0]
    with pytest.raises(ValueError, match="names no length class"):
        evaluate_plan(pr, whole_plan)


def test_choose_keeps_the_cheapest_plan_that_holds_and_prefers_no_split() -> None:
    def held(cost: float | None, holds: bool = True) -> SimpleNamespace:
        plan = None if cost is None else SimpleNamespace(predicted=SimpleNamespace(
            cost_per_hour=cost, p95_s=10.0, capacity_rps=1.0))
        return SimpleNamespace(plan=plan, holds=holds, checks=[1])

    def problem(tau: int | None) -> SimpleNamespace:
        return SimpleNamespace(threshold_tokens=tau, workloads=("default",),
                               class_share=None if tau is None else np.array([[0.5, 0.5]]))

    goal = Goal("min-cost", 90.0, 12.0)
    costs = {None: held(40.0), 150: held(36.0, holds=False), 160: held(37.0), 170: held(None)}
    out = choose((150, 160, 170), problem, lambda p: costs[p.threshold_tokens], goal)
    assert out.problem.threshold_tokens == 160       # 150 is cheaper but does not hold
    assert [t["cost_per_hour"] for t in out.tries] == [40.0, 36.0, 37.0, None]
    costs[160] = held(40.0)
    assert choose((160,), problem, lambda p: costs[p.threshold_tokens],
                  goal).problem.threshold_tokens is None       # a tie: no split

    def unmeasurable(tau: int | None) -> SimpleNamespace:
        if tau == 150:
            raise ScenarioError("only 45 request(s) ... a length class needs 100")
        return problem(tau)

    out = choose((150, 160), unmeasurable, lambda p: costs[p.threshold_tokens], goal)
    assert out.tries[1]["error"].startswith("only 45") and out.tries[2]["cost_per_hour"] == 40


def test_plan_cli_picks_a_threshold_and_writes_it(folder: Path) -> None:
    import subprocess
    import sys

    out = folder / "plan.json"
    run = subprocess.run(
        [sys.executable, "-m", "boute.cli", "--json", "plan", "--scenario",
         str(folder / "s.yaml"), "--db", str(folder / "db.parquet"), "--p95", "8",
         "--objective", "min-cost", "--evals", "40", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    plan = json.loads(out.read_text())
    tries = plan["length_classes"]["tries"]
    assert [t["threshold_tokens"] for t in tries] == [None, 150, 170]
    chosen = plan["length_classes"]["chosen_threshold_tokens"]
    costs = {t["threshold_tokens"]: t["cost_per_hour"] for t in tries}
    assert plan["predicted"]["cost_per_hour"] == pytest.approx(costs[chosen])
    assert plan["predicted"]["cost_per_hour"] <= costs[None] + 1e-9
    assert plan["headroom"]["holds"]
    assert (plan["routing"].get("length_classes") is None) == (chosen is None)


def test_one_model_scenarios_plan_without_a_quality_target(problems) -> None:
    whole, _ = problems
    from tuning import search

    res = search(whole, Goal("min-cost", None, 8.0), solver="mobo", max_evals=40, seed=0,
                 progress=False)
    b = res.best(whole)
    assert b is not None and res.metrics.p95_s[b] <= 8.0 + 1e-9
    assert isinstance(res.plans, PlanArrays) and res.plans.shares.shape[1:] == (1, 1)
    # auto: one model has no routing to search; the exact deployment is the answer.
    exact = search(whole, Goal("min-cost", None, 8.0), solver="auto", progress=False)
    assert exact.solver == "exact" and len(exact.plans) == 1
    assert exact.metrics.cost_per_hour[0] <= res.metrics.cost_per_hour[b] + 1e-9
    assert exact.metrics.p95_s[0] <= 8.0 + 1e-9


def test_a_rare_class_is_drawn_until_it_can_be_measured() -> None:
    """Chat traffic has ~1% of requests under 179 tokens: 4x oversampling finds ~45."""
    sc = load_scenario("mixed-gsm8k-mtbench").for_workload("chat")
    short = sc.profile_spec((0, 179)).base_trace()
    assert len(short) >= 900 and np.all(short.input_tokens + short.output_tokens <= 179)
    four_x = sc.profile_spec().base_trace()          # (the first draw's share, for scale)
    assert np.mean(four_x.input_tokens + four_x.output_tokens <= 179) < 0.05
