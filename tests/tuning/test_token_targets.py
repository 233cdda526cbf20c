"""TTFT / TPOT P95 targets (issue 28 item 1): goal round trip, rate caps, solvers, goodput.

The hand-built perf DB below has two configs of one model (llama-3.1-8b), at prices set by
the scenario, and every number the tests expect follows from its rows:

* A: H100 tp1, $2/h. Rates 1, 2, 3, 4 req/s (5: saturated) with end-to-end P95 1, 1.5, 2, 3 s,
  TTFT P95 0.2, 0.4, 0.8, 1.6 s, TPOT P95 0.020, 0.025, 0.030, 0.050 s.
* B: RTX-4090 tp1, $3/h. Rates 2, 4, 5, 6.5 req/s with end-to-end P95 1, 1.5, 2, 3 s,
  TTFT P95 0.10, 0.15, 0.20, 0.30 s, TPOT P95 0.010 s.

Load 7 req/s, min-cost at P95 <= 3 s: A carries 4 req/s per replica, B 6.5.

* No token target: 2 x A ($4/h, 8 req/s) is the cheapest (1 x B, $3/h, carries 6.5 < 7).
* TTFT <= 0.6 s: A's cap is interp(0.6; 0.4 -> 2, 0.8 -> 3) = 2.5 req/s, B's stays 6.5.
  $4: 2 x A = 5 < 7; $5: A + B = 9 >= 7 (3 x A = 7.5 costs $6): 1 x A + 1 x B.
* TTFT <= 0.15 s: A never meets it (0.2 s at its lowest rate): cap 0; B's is 4 req/s, so
  2 x B ($6/h, 8 req/s).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from profiling import PERFDB_SCHEMA, QUANTILES, Catalog, PerfDB, SimResult, load_scenario
from tuning import (
    Goal,
    InfeasiblePlanError,
    Plan,
    Problem,
    SearchError,
    evaluate_plan,
    load_problem,
    plan_from_arrays,
    search,
)
from tuning._headroom import GroupCheck, Held, _token_fields, verdicts

SCENARIO = """
name: tokens
gpus:
  H100: {count: 4, price_per_hour: 2.0}
  RTX-4090: {count: 4, price_per_hour: 3.0}
models: [llama-3.1-8b]
task: gsm8k
workload: {shape: gsm8k, rate_rps: 7}
budget_per_hour: 100
"""

INF = math.inf
# (gpu, rate, e2e P95, TTFT P95, TPOT P95, saturated)
ROWS = [("H100", 1.0, 1.0, 0.2, 0.020, False), ("H100", 2.0, 1.5, 0.4, 0.025, False),
        ("H100", 3.0, 2.0, 0.8, 0.030, False), ("H100", 4.0, 3.0, 1.6, 0.050, False),
        ("H100", 5.0, INF, INF, INF, True),
        ("RTX-4090", 2.0, 1.0, 0.10, 0.010, False), ("RTX-4090", 4.0, 1.5, 0.15, 0.010, False),
        ("RTX-4090", 5.0, 2.0, 0.20, 0.010, False), ("RTX-4090", 6.5, 3.0, 0.30, 0.010, False)]


def _db() -> PerfDB:
    """The DB of the module docstring; latency quantiles scale with the P95 (x q / 0.95)."""
    cols: dict[str, list[object]] = {f.name: [] for f in PERFDB_SCHEMA}
    for gpu, rate, p95, ttft, tpot, sat in ROWS:
        row = {"model": "llama-3.1-8b", "gpu": gpu, "tp": 1, "pp": 1, "num_gpus": 1,
               "price_per_hour": 1.0, "rate_rps": rate, "capacity_rps": 6.6 if gpu != "H100"
               else 4.9, "saturated": sat, "latency_mean_s": p95 / 2,
               "latency_quantiles_s": [p95 * q / 0.95 for q in QUANTILES],
               "latency_p50_s": p95 / 2, "latency_p95_s": p95, "latency_p99_s": p95 * 1.04,
               "ttft_p50_s": ttft / 2, "ttft_p95_s": ttft, "tpot_p50_s": tpot / 2,
               "tpot_p95_s": tpot, "throughput_rps": rate, "throughput_tok_s": rate * 100,
               "kv_capacity_tokens": 100_000}
        for k, v in row.items():
            cols[k].append(v)
    table = pa.table(cols, schema=PERFDB_SCHEMA).replace_schema_metadata(
        {"boute": json.dumps({"schema_version": 1, "quantiles": list(QUANTILES),
                              "scenario": "tokens"})})
    return PerfDB(table)


@pytest.fixture(scope="module")
def tokens(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Problem:
    path = Path(tmp_path_factory.mktemp("tok")) / "tokens.yaml"
    path.write_text(SCENARIO)
    return load_problem(load_scenario(path), _db(), catalog)


def _groups(problem: Problem, goal: Goal) -> tuple[dict[str, int], float]:
    res = search(problem, goal)
    b = res.best(problem.for_goal(goal))
    assert b is not None
    plan = plan_from_arrays(problem.for_goal(goal), res.plans, res.metrics, b)
    assert plan.predicted is not None
    return {g.gpu: g.replicas for g in plan.groups}, plan.predicted.cost_per_hour


def test_rate_caps_by_hand(tokens: Problem) -> None:
    a = tokens.config(0, tokens.gpu_types.index("H100"), 1, 1)
    b = tokens.config(0, tokens.gpu_types.index("RTX-4090"), 1, 1)
    caps = tokens.token_caps
    assert caps(0.6, None)[0, a] == pytest.approx(2.5)        # between 0.4 -> 2 and 0.8 -> 3
    assert caps(0.6, None)[0, b] == pytest.approx(6.5)        # every unsaturated row meets it
    assert caps(0.15, None)[0, a] == 0.0                      # misses even at 1 req/s
    assert caps(0.15, None)[0, b] == pytest.approx(4.0)
    assert caps(None, 0.03)[0, a] == pytest.approx(3.0)       # TPOT 0.030 s at 3 req/s
    assert caps(0.6, 0.03)[0, a] == pytest.approx(2.5)        # both: the lower cap
    assert caps(5.0, None)[0, a] == pytest.approx(4.0)        # never the saturated row
    assert np.isinf(caps(None, None)).all()
    clipped = tokens.with_token_targets(0.6, None)
    assert clipped.cap_at(3.0)[a] == pytest.approx(2.5)
    assert clipped.cap_at(1.0)[a] == pytest.approx(tokens.cap_at(1.0)[a])   # below the cap
    assert tokens.with_token_targets(None, None) is tokens
    assert clipped.with_token_targets(0.6, None) is clipped


def test_the_ttft_cap_moves_the_cheapest_plan(tokens: Problem) -> None:
    assert _groups(tokens, Goal("min-cost", None, 3.0)) == ({"H100": 2}, 4.0)
    assert _groups(tokens, Goal("min-cost", None, 3.0, ttft_p95_s=0.6)) == (
        {"H100": 1, "RTX-4090": 1}, 5.0)
    assert _groups(tokens, Goal("min-cost", None, 3.0, ttft_p95_s=0.15)) == (
        {"RTX-4090": 2}, 6.0)


def test_ttft_alone_and_predicted_token_p95(tokens: Problem) -> None:
    """TTFT alone (no end-to-end target): max-throughput under the budget, every group's
    predicted TTFT P95 (DB, at its rate) within 0.6 s."""
    goal = Goal("max-throughput", None, None, ttft_p95_s=0.6)
    pr = tokens.for_goal(goal)
    res = search(tokens, goal)
    b = res.best(pr)
    assert b is not None
    plan = plan_from_arrays(pr, res.plans, res.metrics, b)
    assert plan.predicted is not None and plan.predicted.ttft_p95_s is not None
    assert plan.predicted.ttft_p95_s <= 0.6 + 1e-9
    assert plan.predicted.tpot_p95_s is None                  # no TPOT target: not reported
    # capacity counts the cap: 4 x A at 2.5 + 4 x B at 6.5 req/s, the whole stock
    assert plan.predicted.capacity_rps == pytest.approx(4 * 2.5 + 4 * 6.5)


def test_a_plan_past_the_cap_is_named_saturated(tokens: Problem) -> None:
    goal = Goal("min-cost", None, 3.0)
    res = search(tokens, goal)
    b = res.best(tokens)
    assert b is not None
    cheap = plan_from_arrays(tokens, res.plans, res.metrics, b)        # 2 x A
    assert evaluate_plan(tokens, cheap).predicted is not None
    with pytest.raises(InfeasiblePlanError, match=r"TTFT P95 <= 0.6 s \(short by 2.00 req/s\)"):
        evaluate_plan(tokens.with_token_targets(0.6, None), cheap)     # 2 x 2.5 < 7


def test_goal_round_trip_and_old_files_unchanged() -> None:
    goal = Goal("min-cost", 87.0, 8.0, ttft_p95_s=1.0, tpot_p95_s=0.05)
    d = goal.to_dict(("default",))
    assert d["ttft_p95_s"] == 1.0 and d["tpot_p95_s"] == 0.05
    assert Goal.from_dict(json.loads(json.dumps(d)), ("default",)) == goal
    # no token target: the keys written before this change, and nothing else
    assert Goal("min-cost", 87.0, 8.0).to_dict(("default",)) == {
        "mode": "min-cost", "quality": 87.0, "p95_s": 8.0}
    ttft_only = Goal(ttft_p95_s=1.0).to_dict(("default",))
    assert "tpot_p95_s" not in ttft_only


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, "1", True])
def test_bad_token_targets_are_named(bad: object) -> None:
    with pytest.raises(SearchError, match=r"ttft_p95_s=.* must be a positive finite number"):
        Goal(ttft_p95_s=bad)  # type: ignore[arg-type]
    with pytest.raises(SearchError, match=r"search.goal.tpot_p95_s=.*must be"):
        Goal.from_dict({"mode": "pareto", "tpot_p95_s": bad}, ("default",), "search.goal")


def test_plan_json_keeps_token_predictions_only_when_set(tokens: Problem) -> None:
    goal = Goal("min-cost", None, 3.0, ttft_p95_s=0.6)
    pr = tokens.for_goal(goal)
    res = search(tokens, goal)
    b = res.best(pr)
    assert b is not None
    plan = plan_from_arrays(pr, res.plans, res.metrics, b)
    assert plan.predicted is not None
    from dataclasses import replace

    plan = replace(plan.with_predicted(replace(plan.predicted, goodput=0.97)), goal=goal)
    back = Plan.from_dict(json.loads(plan.to_json()))
    assert back.goal == goal and back.predicted == plan.predicted
    assert back.predicted is not None and back.predicted.goodput == 0.97
    old = json.loads(plan.to_json())
    for k in ("ttft_p95_s", "tpot_p95_s", "goodput"):
        old["predicted"].pop(k, None)
    assert set(Plan.from_dict(old).to_dict()["predicted"]) == {
        "p95_s", "system_p95_s", "mean_s", "quality", "cost_per_hour", "throughput_rps",
        "capacity_rps"}


def test_token_fields_and_goodput_by_hand() -> None:
    # Four requests of five finished: latency, TTFT, TPOT (the third: a one-token answer).
    res = SimResult(ttft_s=np.array([0.5, 1.5, 0.2, 0.9]),
                    tpot_s=np.array([0.04, 0.02, np.nan, 0.08]),
                    latency_s=np.array([5.0, 6.0, 0.3, 9.5]), duration_s=10.0,
                    output_tokens=10, completed=4, offered=5, saturated=False, preemptions=0,
                    offered_rate_rps=0.5)
    f = _token_fields(res, 5, 1.0, 0.05, 9.0)
    # meets all: request 1 (0.5 s, 0.04 s, 5 s) and 3 (no TPOT); 2 misses TTFT, 4 TPOT and
    # latency, the unfinished fifth fails: 2 of 5
    assert f["goodput"] == pytest.approx(0.4)
    assert f["tpot_p95_s"] == pytest.approx(np.quantile([0.04, 0.02, 0.08], 0.95))
    assert _token_fields(res, 5, None, None, None)["goodput"] == pytest.approx(0.8)


def test_group_checks_judge_tokens_and_weigh_goodput_by_load() -> None:
    def check(group: str, seed: int, ttft: float, good: float, load: float) -> GroupCheck:
        return GroupCheck(group, seed, 1.0, 2.0, 3.0, False, ttft_p95_s=ttft,
                          tpot_p95_s=math.nan, ttft_target_s=1.0, goodput=good,
                          load_rps=load)

    checks = [check("a", 1, 0.8, 0.9, 3.0), check("a", 2, 0.9, 0.7, 3.0),
              check("b", 1, 1.25, 0.5, 1.0)]
    assert checks[0].holds and not checks[2].holds          # 1.25 s TTFT > 1 s, P95 2 < 3 s
    judged = verdicts(checks)
    assert judged["a"].holds and judged["a"].token_over == pytest.approx(0.9)
    assert not judged["b"].holds and judged["b"].token_over == pytest.approx(1.25)
    held = Held(None, None, checks, 1)  # type: ignore[arg-type]
    # (3 x mean(0.9, 0.7) + 1 x 0.5) / 4
    assert held.goodput == pytest.approx(0.725)
    tok = held.summary()["tokens"]
    assert tok["worst_ttft_p95_s"] == 1.25 and tok["worst_tpot_p95_s"] is None  # type: ignore[index]
    # without token targets: no goodput, no tokens block (outputs as before)
    plain = Held(None, None, [GroupCheck("a", 1, 1.0, 2.0, 3.0, False)], 1)  # type: ignore[arg-type]
    assert plain.goodput is None and "tokens" not in plain.summary()


def _worst_ttft(problem: Problem, goal: Goal, solver: str, **kw: object) -> tuple[float, float]:
    """The chosen plan's worst predicted TTFT P95 and its $/h (`problem` clipped to `goal`)."""
    pr = problem.for_goal(goal)
    res = search(problem, goal, solver=solver, **kw)  # type: ignore[arg-type]
    b = res.best(pr)
    assert b is not None
    # (a huge TTFT target clips nothing, but makes the evaluator report the TTFT P95)
    view = pr if pr.ttft_p95_s is not None else pr.with_token_targets(1e9, None)
    plan = plan_from_arrays(view, res.plans, res.metrics, b)
    assert plan.predicted is not None and plan.predicted.ttft_p95_s is not None
    return plan.predicted.ttft_p95_s, plan.predicted.cost_per_hour


def test_exact_mobo_ladder_and_baselines_take_the_ttft_target(small_problem: Problem) -> None:
    """The pair (exact DP, MOBO), the general ladder path and the baselines, on a TTFT target
    20% under the unconstrained min-cost plan's worst group: each plan's groups all meet it,
    and the exact answer costs at least the unconstrained one (a tighter problem)."""
    from dataclasses import replace

    from tuning._baselines import baseline_min_cost
    from tuning._evaluator import evaluate_arrays

    free_ttft, free_cost = _worst_ttft(small_problem, Goal("min-cost", 87, 8.0), "exact")
    target = 0.8 * free_ttft
    goal = Goal("min-cost", 87, 8.0, ttft_p95_s=target)
    ttft, cost = _worst_ttft(small_problem, goal, "exact")
    assert ttft <= target * (1 + 1e-9) and cost >= free_cost
    ttft, _ = _worst_ttft(small_problem, goal, "mobo", max_evals=48)
    assert ttft <= target * (1 + 1e-9)
    ladder = replace(small_problem, pair_fast_path=False)
    ttft, _ = _worst_ttft(ladder, goal, "mobo", max_evals=48)
    assert ttft <= target * (1 + 1e-9)
    clipped = small_problem.for_goal(goal)
    for name in ("Stand-Alone-Hetero", "RouteLLM-uniform"):
        plans = baseline_min_cost(clipped, name, 87, 8.0)
        if plans is None:
            continue
        m = evaluate_arrays(clipped, plans, 8.0)
        plan = plan_from_arrays(clipped, plans, m, 0)
        assert plan.predicted is not None and plan.predicted.ttft_p95_s is not None
        assert bool(m.feasible[0]) and plan.predicted.ttft_p95_s <= target * (1 + 1e-9)


@pytest.mark.parametrize("flag", ["--ttft-p95", "--tpot-p95"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_bad_cli_targets_name_the_flag(flag: str, value: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from boute.cli import main

    assert main(["plan", "--scenario", "paper-gsm8k", "--db", str(tmp_path / "none.parquet"),
                 flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag}={value}" in err and "must be a positive number of seconds" in err


def test_plan_cli_reports_token_p95_and_goodput(small_problem: Problem, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from boute.cli import main
    from tests.tuning.conftest import SMALL

    yaml, db, out = tmp_path / "small.yaml", tmp_path / "db.parquet", tmp_path / "plan.json"
    yaml.write_text(SMALL)
    small_problem.db.save(db)
    args = ["--scenario", str(yaml), "--db", str(db)]
    assert main(["--json", "plan", *args, "--objective", "min-cost", "--quality", "87",
                 "--p95", "8", "--ttft-p95", "0.05", "--tpot-p95", "0.05", "--solver",
                 "exact", "--resim-seeds", "1", "--out", str(out), "--plot", ""]) == 0
    res = json.loads(capsys.readouterr().out)
    pred = res["plan"]["predicted"]
    assert pred["ttft_p95_s"] <= 0.05 + 1e-9 and pred["tpot_p95_s"] <= 0.05 + 1e-9
    assert 0.0 <= pred["goodput"] <= 1.0
    assert res["headroom"]["tokens"]["goodput"] == pred["goodput"]
    goal = res["plan"]["search"]["goal"]
    assert goal["ttft_p95_s"] == 0.05 and goal["tpot_p95_s"] == 0.05
    # evaluate holds the plan to its own goal's token targets
    assert main(["--json", "evaluate", str(out), *args]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["predicted"]["ttft_p95_s"] == pytest.approx(pred["ttft_p95_s"])
    # human output: one line of token P95s and goodput, one of the headroom's tokens
    assert main(["plan", *args, "--objective", "min-cost", "--quality", "87", "--p95", "8",
                 "--ttft-p95", "0.05", "--solver", "exact", "--resim-seeds", "1",
                 "--out", str(out), "--plot", ""]) == 0
    text = capsys.readouterr().out
    assert "TTFT P95 (worst group)" in text and "goodput" in text
    assert "tokens (worst group, worst fresh trace): TTFT P95" in text


def test_a_token_miss_on_fresh_traffic_derates_the_config(
        tokens: Problem, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 1: the A group's fresh TTFT P95 is 1.25x its 0.6 s target (its P95 within 3 s):
    A's capacity is scaled by DERATE (the generic step for a group that misses with its P95
    within target) x 1 / 1.25 = 0.98 x 0.8 = 0.784, its latency left alone. With A's cap
    2.5 x 0.784 = 1.96 req/s, A + B still carries 1.96 + 6.5 = 8.46 >= 7 req/s at $5/h, the
    cheapest (A now takes less of the load); round 2 holds."""
    import tuning._headroom as headroom

    calls: list[int] = []

    def fake(problem: Problem, plan: Plan, catalog: Catalog, **kw: object) -> list[GroupCheck]:
        calls.append(1)
        miss = len(calls) == 1
        return [GroupCheck(g.name, 101, 1.0, 2.0, 3.0, False,
                           ttft_p95_s=0.75 if miss and g.gpu == "H100" else 0.3,
                           ttft_target_s=0.6, goodput=0.9, load_rps=1.0) for g in plan.groups]

    monkeypatch.setattr(headroom, "resimulate", fake)
    goal = Goal("min-cost", None, 3.0, ttft_p95_s=0.6)
    held = headroom.hold(tokens, goal, lambda p: search(p, goal), catalog)
    assert held.rounds == 2 and held.holds
    assert held.derated == {"llama-3.1-8b-H100-tp1pp1": {"capacity": 0.784, "latency": 1.0}}
    assert held.plan is not None
    assert {g.gpu: g.replicas for g in held.plan.groups} == {"H100": 1, "RTX-4090": 1}


def test_compare_holds_every_system_to_the_token_targets(
        small_problem: Problem, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from boute.cli import main
    from tests.tuning.conftest import SMALL

    yaml, db = tmp_path / "small.yaml", tmp_path / "db.parquet"
    yaml.write_text(SMALL)
    small_problem.db.save(db)
    args = ["--json", "compare", "--scenario", str(yaml), "--db", str(db), "--solver", "exact",
            "--targets", "87:8"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "token_targets" not in plain                  # no flag: the output as before
    free = plain["targets"][0]["cost_per_hour"]
    assert main([*args, "--ttft-p95", "0.05"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["token_targets"] == {"ttft_p95_s": 0.05, "tpot_p95_s": None}
    capped = res["targets"][0]["cost_per_hour"]
    for name, cost in capped.items():       # a tighter problem: never cheaper
        if cost is not None and free[name] is not None:
            assert cost >= free[name] - 1e-9, name
