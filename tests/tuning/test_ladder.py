"""Ladders: K models and several workloads, from the quality model to plan files."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.errors import ScenarioError
from profiling import CascadeQuality, Catalog, build_perfdb, default_quality_curve, load_scenario
from tuning import (
    Goal,
    Plan,
    PlanError,
    Problem,
    evaluate_arrays,
    evaluate_plan,
    exact_min_cost,
    load_problem,
    plan_from_arrays,
    search,
)
from tuning._evaluator import ladder_arrays
from tuning._ladder import LadderEncoding
from tuning._run import SearchError, make_encoding

LADDER = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")

SMALL3 = """
name: small3
gpus:
  H100: {count: 4}
  RTX-4090: {count: 4}
  H200: {count: 16}
models: [llama-3.1-8b, llama-3.1-70b, llama-3.1-405b]
task: gsm8k
workload: {shape: gsm8k, rate_rps: 20}
budget_per_hour: 200
profile: {num_rates: 8, num_requests: 200}
"""

SMALL_MIX = """
name: smallmix
gpus:
  H100: {count: 4}
  RTX-4090: {count: 4}
models: {weak: llama-3.1-8b, strong: llama-3.1-70b}
workloads:
  - {name: math, shape: gsm8k, rate_rps: 15, task: gsm8k}
  - {name: chat, shape: mtbench, rate_rps: 3, task: mtbench}
budget_per_hour: 40
p95_ceiling_s: 120
targets:
  - {quality: {math: 88, chat: 8.2}, p95_s: 40}
profile: {num_rates: 8, num_requests: 200}
"""


def _problem(tmp: Path, text: str, catalog: Catalog) -> Problem:
    path = tmp / "scenario.yaml"
    path.write_text(text)
    sc = load_scenario(path)
    dbs = [build_perfdb(sc.for_workload(w).profile_spec(), catalog, workers=2)
           for w in sc.workload_names]
    return load_problem(sc, dbs, catalog)


@pytest.fixture(scope="module")
def three(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Problem:
    return _problem(tmp_path_factory.mktemp("three"), SMALL3, catalog)


@pytest.fixture(scope="module")
def mixed(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Problem:
    return _problem(tmp_path_factory.mktemp("mixed"), SMALL_MIX, catalog)


# -- quality ----------------------------------------------------------------------------------
def test_published_cascade_by_hand() -> None:
    q = CascadeQuality.published("gsm8k", LADDER)
    # g(0.7006) = (91 - 84.5) / 10.6 on the gsm8k curve, so S_2 = 0.7006 alone gives 91.
    assert q(np.array([0.7006, 0.0])) == pytest.approx(91.0, abs=1e-9)
    # Everything on 70B+ and S_3 = 0.5605 (g = 4.5 / 10.6): 95.1 + 1.7 * 4.5 / 10.6.
    assert q(np.array([1.0, 0.5605])) == pytest.approx(95.1 + 1.7 * 4.5 / 10.6, abs=1e-9)
    assert (q.lowest, q.highest) == (84.5, 96.8)
    # shares (smallest first) are tails from the top: (0.3, 0.2, 0.5) -> S = (0.7, 0.5).
    assert q.of_shares(np.array([0.3, 0.2, 0.5])) == pytest.approx(float(q(np.array([0.7, 0.5]))))


def test_pair_cascade_is_the_pair_curve() -> None:
    curve = default_quality_curve("gsm8k")
    q = CascadeQuality.of_pair(curve, ("a", "b"))
    s = np.linspace(0, 1, 11)
    assert np.array_equal(q(s[:, None]), curve(s))
    assert q.thresholds_for(np.array([0.5]))[0] is not None


def test_records_cascade_by_hand() -> None:
    # Scores 0.9, 0.1, 0.5, 0.7; sorted hardest first: 0.9, 0.7, 0.5, 0.1.
    q = CascadeQuality.from_records(np.array([0.9, 0.1, 0.5, 0.7]),
                                   np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 0]]),
                                   ("a", "b", "c"))
    shares = np.array([[1, 0, 0], [0, 0, 1], [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    # (0.5, 0.25, 0.25): c answers 0.9 (1), b answers 0.7 (1), a answers 0.5 (0) and 0.1 (1).
    assert q.of_shares(shares) == pytest.approx([0.25, 0.75, 0.75, 0.75])
    assert q.thresholds_for(np.array([0.5, 0.25])) == (0.7, 0.9)


def test_records_file_and_missing_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "evals.parquet"
    pq.write_table(pa.table({"router_score": [0.9, 0.1], "quality_a": [0.0, 1.0],
                             "quality_b": [1.0, 1.0]}), path)
    q = CascadeQuality.from_file(path, ("a", "b"))
    assert q.of_shares(np.array([0.5, 0.5])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"quality_c"):
        CascadeQuality.from_file(path, ("a", "b", "c"))


def test_unknown_score_names_the_model_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"qwen-7b.*scores"):
        CascadeQuality.published("gsm8k", ("qwen-7b", "llama-3.1-70b"))
    with pytest.raises(ValueError, match=r"decrease"):
        CascadeQuality.published("gsm8k", ("llama-3.1-70b", "llama-3.1-8b", "llama-3.1-405b"))


# -- scenarios --------------------------------------------------------------------------------
@pytest.mark.parametrize(("patch", "message"), [
    ("models: [llama-3.1-8b, llama-3.1-8b]", r"names a model twice"),
    ("models: []", r"1 to 8"),
    ("task: gsm8k\nworkloads: [{name: a, rate_rps: 1}]", r"either workloads or task"),
    ("workloads: [{name: a, rate_rps: 1}, {name: b, rate_rps: 1}]\n"
     "targets: [{quality: 90, p95_s: 5}]", r"one number but there are 2 workloads"),
    ("workloads: [{name: a, rate_rps: 1}, {name: b, rate_rps: 1}]\n"
     "targets: [{quality: {a: 90}, p95_s: 5}]", r"one quality per workload"),
    ("workloads: [{name: a, rate_rps: 1}, {name: a, rate_rps: 1}]", r"repeat"),
])
def test_scenario_errors_name_the_field(tmp_path: Path, patch: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("gpus: {H100: {count: 8}}\n" + patch + "\n")
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


# -- evaluator --------------------------------------------------------------------------------
def test_ladder_evaluator_equals_pair_evaluator(small_problem: Problem) -> None:
    """The same plans through the ladder code path (shares) give the pair's metrics."""
    pr = small_problem
    found = exact_min_cost(pr, 87.0, 8.0)
    assert found is not None
    pair = evaluate_arrays(pr, found, 8.0)
    lad = replace(pr, pair_fast_path=False)
    s = found.strong_share
    arrays = ladder_arrays(lad, np.stack([1 - s, s], axis=1)[:, None, :], found.config,
                           found.replicas)
    got = evaluate_arrays(lad, arrays, 8.0)
    for key in ("p95_s", "cost_per_hour", "capacity_rps", "quality"):
        assert np.allclose(getattr(got, key), getattr(pair, key), rtol=1e-12), key
    assert np.array_equal(got.feasible, pair.feasible)


def test_mix_capacity_is_harmonic(mixed: Problem) -> None:
    """x* of a model serving two workloads solves r / (f1 / c1(x) + f2 / c2(x)) = lambda."""
    pr = mixed
    c = pr.config(1, pr.gpu_types.index("H100"), 4, 1)
    assert c >= 0
    shares = np.array([[[0.5, 0.5], [0.4, 0.6]]])          # 70B: 7.5 math + 1.8 chat req/s
    cfg = np.full((1, pr.num_slots), -1)
    reps = np.zeros((1, pr.num_slots), dtype=np.int64)
    cfg[0, 0], reps[0, 0] = pr.config(0, pr.gpu_types.index("RTX-4090"), 1, 1), 4
    cfg[0, 2 + 0], reps[0, 2] = c, 1
    m = evaluate_arrays(pr, ladder_arrays(pr, shares, cfg, reps))
    x = float(m.model_p95_s[0, 1])
    assert 0 < x < math.inf
    lam = np.array([7.5, 1.8])
    f = lam / lam.sum()
    logx = np.log(pr.levels_s)
    c_w = [np.exp(np.interp(np.log(x), logx, np.log(np.maximum(pr.caps[w, c], 1e-300))))
           for w in range(2)]
    lin = [np.interp(np.log(x), logx, pr.caps[w, c]) for w in range(2)]
    mix = 1.0 / (f[0] / lin[0] + f[1] / lin[1])
    # The evaluator interpolates the mixed table (not each workload's): equal at the levels,
    # close between them.
    assert mix == pytest.approx(lam.sum(), rel=0.02)
    assert all(v > 0 for v in c_w)
    assert m.workload_quality.shape == (1, 2)
    assert m.workload_quality[0, 0] == pytest.approx(float(default_quality_curve("gsm8k")(0.5)))


# -- search -----------------------------------------------------------------------------------
def test_ladder_search_finds_the_pair_optimum(small_problem: Problem) -> None:
    """On a pair problem, the ladder encoding's search lands within 5% of the exact DP."""
    pr = small_problem
    found = exact_min_cost(pr, 87.0, 8.0)
    assert found is not None
    best = float(evaluate_arrays(pr, found).cost_per_hour[0])
    lad = replace(pr, pair_fast_path=False)
    res = search(lad, Goal("min-cost", 87.0, 8.0), solver="random", max_evals=400, seed=0,
                 encoding="structured")
    b = res.best(lad)
    assert b is not None
    assert res.metrics.quality[b] >= 87.0 - 1e-9
    assert float(res.metrics.cost_per_hour[b]) <= best * 1.05


def test_floors_move_up_one_model_at_a_time(three: Problem) -> None:
    enc = make_encoding(three, Goal("min-cost", 91.0, 12.0))
    assert isinstance(enc, LadderEncoding)
    tails = enc.floored(np.zeros((1, 1, 2)))
    # The cheapest step first: S_2 to 0.7006 (91 on the pair's curve), no 405B.
    assert tails[0, 0] == pytest.approx([0.7006, 0.0], abs=1e-4)
    # 96 needs the 405B: S_2 goes all the way to 1 first, then S_3 rises until 96.
    high = make_encoding(three, Goal("min-cost", 96.0, 12.0))
    assert isinstance(high, LadderEncoding)
    top = high.floored(np.zeros((1, 1, 2)))[0, 0]
    assert top[0] == 1.0 and 0.5 < top[1] < 1.0
    assert three.cascades[0](top) == pytest.approx(96.0, abs=1e-4)


def test_three_models_reach_what_two_cannot(three: Problem) -> None:
    goal = Goal("min-cost", 96.0, 30.0)
    res = search(three, goal, solver="auto", seed=0, max_evals=160)
    assert res.solver == "mobo" and "exact DP covers two" in res.reason
    b = res.best(three)
    assert b is not None
    plan = plan_from_arrays(three, res.plans, res.metrics, b)
    w = plan.routing.workloads[0]
    assert w.quality >= 96.0 - 1e-9
    assert w.shares[2] > 0.5                      # 96 needs most queries on the 405B
    assert any(g.model == "llama-3.1-405b" for g in plan.groups)
    # The file round trip gives the same plan, and evaluate reproduces the cost.
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again.routing == plan.routing
    assert evaluate_plan(three, again).predicted.cost_per_hour == pytest.approx(  # type: ignore[union-attr]
        plan.predicted.cost_per_hour)                                            # type: ignore[union-attr]
    with pytest.raises(SearchError, match=r"above what"):
        search(three, Goal("min-cost", 97.0, 30.0), solver="mobo", max_evals=8)
    with pytest.raises(SearchError, match=r"two models and one workload"):
        search(three, goal, solver="exact")


def test_per_workload_floors_hold(mixed: Problem) -> None:
    goal = Goal("min-cost", None, 40.0, (88.0, 8.2))
    res = search(mixed, goal, solver="mobo", seed=0, max_evals=96)
    b = res.best(mixed)
    assert b is not None
    assert res.metrics.workload_quality[b, 0] >= 88.0 - 1e-9
    assert res.metrics.workload_quality[b, 1] >= 8.2 - 1e-9
    plan = plan_from_arrays(mixed, res.plans, res.metrics, b)
    assert [w.name for w in plan.routing.workloads] == ["math", "chat"]
    assert plan.scenario["spec"]["workloads"][0]["name"] == "math"
    assert evaluate_plan(mixed, Plan.from_dict(plan.to_dict())).predicted is not None


# -- plan files -------------------------------------------------------------------------------
def _ladder_plan(**routing: object) -> dict[str, object]:
    base: dict[str, object] = {
        "strong_share": 0.5, "models": ["a", "b", "c"],
        "workloads": [{"name": "default", "shares": {"a": 0.2, "b": 0.3, "c": 0.5},
                       "thresholds": [0.4, None]}]}
    base.update(routing)
    return {"routing": base, "groups": [{"model": "a", "gpu": "H100", "replicas": 1}]}


@pytest.mark.parametrize(("routing", "message"), [
    ({"models": ["a"]}, r"routing.models"),
    ({"workloads": []}, r"routing.workloads"),
    ({"workloads": [{"name": "w", "shares": {"a": 0.5, "b": 0.6, "c": 0.0}}]}, r"sum to 1"),
    ({"workloads": [{"name": "w", "shares": {"a": 1.0}}]}, r"one share per model"),
    ({"workloads": [{"name": "w", "shares": {"a": 1, "b": 0, "c": 0}, "thresholds": [1]}]},
     r"2 router thresholds"),
])
def test_ladder_plan_errors(routing: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(_ladder_plan(**routing))


def test_ladder_plan_round_trip() -> None:
    plan = Plan.from_dict(_ladder_plan())
    w = plan.routing.workloads[0]
    assert w.shares == (0.2, 0.3, 0.5) and w.tails == pytest.approx((0.8, 0.5))
    assert math.isnan(w.thresholds[1])
    back = plan.to_dict()["routing"]
    assert back["workloads"][0]["shares"] == {"a": 0.2, "b": 0.3, "c": 0.5}
    assert back["workloads"][0]["thresholds"] == [0.4, None]
    # A pair plan keeps exactly the pair's three routing keys.
    pair = Plan.from_dict({"routing": {"strong_share": 0.3}, "groups": [
        {"model": "a", "gpu": "H100", "replicas": 1}]})
    assert list(pair.to_dict()["routing"]) == ["strong_share", "threshold", "router"]


# -- command line -----------------------------------------------------------------------------
def test_quality_flag_per_workload() -> None:
    from boute.plan_cli import parse_quality
    from common.errors import BouteError

    assert parse_quality("91", ("default",)) == (91.0, None)
    assert parse_quality("math=89,chat=8.3", ("math", "chat")) == (None, (89.0, 8.3))
    assert parse_quality(None, ("math", "chat")) == (None, None)
    with pytest.raises(BouteError, match=r"math=Q,chat=Q"):
        parse_quality("89", ("math", "chat"))
    with pytest.raises(BouteError, match=r"workloads are \['math', 'chat'\]"):
        parse_quality("math=89", ("math", "chat"))
    with pytest.raises(BouteError, match=r"must be a number"):
        parse_quality("math=x,chat=8", ("math", "chat"))


def test_plan_and_compare_a_two_workload_scenario(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from boute.cli import main

    scenario, db = tmp_path / "mix.yaml", tmp_path / "db.parquet"
    scenario.write_text(SMALL_MIX)
    plan = tmp_path / "plan.json"
    assert main(["--json", "plan", "--scenario", str(scenario), "--db", str(db),
                 "--objective", "min-cost", "--quality", "math=88,chat=8.2", "--p95", "40",
                 "--evals", "64", "--plot", "", "--out", str(plan)]) == 0
    out = json.loads(capsys.readouterr().out)
    workloads = {w["name"]: w for w in out["plan"]["routing"]["workloads"]}
    assert workloads["math"]["quality"] >= 88 and workloads["chat"]["quality"] >= 8.2
    assert out["plan"]["search"]["goal"]["qualities"] == {"math": 88.0, "chat": 8.2}
    assert out["headroom"]["holds"] and len(out["headroom"]["seeds"]) == 3
    # Each workload's perf DB sits beside --db.
    assert (tmp_path / "db-math.parquet").is_file() and (tmp_path / "db-chat.parquet").is_file()
    assert main(["--json", "evaluate", str(plan), "--scenario", str(scenario),
                 "--db", str(db)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["predicted"]["cost_per_hour"] == pytest.approx(
        out["plan"]["predicted"]["cost_per_hour"])
    assert main(["--json", "compare", "--scenario", str(scenario), "--db", str(db),
                 "--evals", "48"]) == 0
    table = json.loads(capsys.readouterr().out)
    col = table["targets"][0]
    assert col["quality"] == [88.0, 8.2] and table["not_applicable"] == ["RouteLLM-uniform"]
    costs = col["cost_per_hour"]
    assert costs["RouteLLM-uniform"] is None and costs["BOute"] is not None
    # Stand-Alone (every query on the 70B) is never cheaper than BOute's routed plan here.
    assert costs["Stand-Alone-Hetero"] is None or costs["Stand-Alone-Hetero"] >= costs["BOute"]
