import itertools
import json

import numpy as np
import pytest

from tuning import (
    BASELINES,
    Goal,
    InfeasiblePlanError,
    Plan,
    PlanArrays,
    PlanError,
    Problem,
    baseline_min_cost,
    evaluate_arrays,
    evaluate_plan,
    exact_front,
    exact_min_cost,
    plan_from_arrays,
    search,
)
from tuning._exact import solve_level


def test_capacity_table_inverts_the_db_p95(small_problem: Problem) -> None:
    pr = small_problem
    c = 0
    row = pr.cfg_db[c]
    p_idx = list(pr.db.quantile_levels).index(0.95)
    ok = ~pr.db.saturated[row]
    rate = pr.db.rates[row][ok][2]
    p95 = pr.db.quantiles[row, ok, p_idx][:3].max()
    # At the P95 the DB gives for that rate, the capacity is (about) that rate.
    assert pr.cap_at(p95)[c] == pytest.approx(rate, rel=0.05)
    assert pr.cap_at(0.001)[c] == 0.0


def test_evaluator_planning_p95_is_where_capacity_meets_load(small_problem: Problem) -> None:
    pr = small_problem
    weak = pr.config(0, pr.gpu_types.index("RTX-4090"), 1, 1)
    strong = pr.config(1, pr.gpu_types.index("H100"), 2, 1)
    plans = PlanArrays(np.array([0.5]), np.array([[weak, strong]]), np.array([[2, 1]]))
    m = evaluate_arrays(pr, plans)
    x_w, x_s = m.model_p95_s[0]
    # Definition: sum_g r_g cap_g(x_m*) = lambda_m.
    assert 2 * pr.cap_at(x_w)[weak] == pytest.approx(10.0, rel=1e-3)
    assert pr.cap_at(x_s)[strong] == pytest.approx(10.0, rel=1e-3)
    assert m.p95_s[0] == max(x_w, x_s)
    assert m.cost_per_hour[0] == pytest.approx(2 * 0.59 + 2 * 2.69)
    assert m.quality[0] == pytest.approx(np.interp(0.5, [0.2655, 0.5605], [87, 89]))
    plan = plan_from_arrays(pr, plans, m, 0)
    # The system P95 (mixture of the groups) never exceeds the P95 every group meets.
    assert plan.predicted is not None
    assert 0 < plan.predicted.system_p95_s <= plan.predicted.p95_s + 1e-6
    assert sum(g.share for g in plan.groups if g.model == "llama-3.1-8b") == pytest.approx(1)


def test_plan_json_round_trip_and_evaluate(small_problem: Problem, tmp_path) -> None:
    res = search(small_problem, Goal("min-cost", 87, 8), solver="exact")
    b = res.best(small_problem)
    assert b is not None
    plan = plan_from_arrays(small_problem, res.plans, res.metrics, b)
    path = plan.save(tmp_path / "plan.json")
    data = json.loads(path.read_text())
    assert set(data) >= {"routing", "groups", "predicted", "scenario"}
    assert set(data["groups"][0]) == {"model", "gpu", "tp", "pp", "replicas", "share"}
    again = evaluate_plan(small_problem, Plan.load(path))
    assert again.predicted == pytest.approx(plan.predicted) or (
        again.predicted.cost_per_hour == pytest.approx(plan.predicted.cost_per_hour))


def test_infeasible_plan_is_explained(small_problem: Problem) -> None:
    plan = Plan.from_dict({"routing": {"strong_share": 0.9}, "groups": [
        {"model": "llama-3.1-70b", "gpu": "H100", "tp": 2, "pp": 1, "replicas": 3},
        {"model": "llama-3.1-8b", "gpu": "RTX-4090", "tp": 1, "pp": 1, "replicas": 1}]})
    with pytest.raises(InfeasiblePlanError) as err:
        evaluate_plan(small_problem, plan)
    msg = str(err.value)
    assert "budget: $16.73/h exceeds $14.00/h by $2.73/h" in msg
    assert "GPU stock: 6 x H100 used but 4 on offer (short by 2)" in msg
    bad = Plan.from_dict({"routing": {"strong_share": 1.0}, "groups": [
        {"model": "llama-3.1-70b", "gpu": "RTX-4090", "tp": 1, "pp": 1, "replicas": 1}]})
    with pytest.raises(InfeasiblePlanError, match=r"memory fit: .*does not fit"):
        evaluate_plan(small_problem, bad)
    none = Plan.from_dict({"routing": {"strong_share": 0.5}, "groups": [
        {"model": "llama-3.1-8b", "gpu": "H100", "tp": 1, "pp": 1, "replicas": 1}]})
    with pytest.raises(InfeasiblePlanError, match=r"saturation: llama-3\.1-70b gets 10\.00 req/s"):
        evaluate_plan(small_problem, none)


@pytest.mark.parametrize("data, field", [
    ({"groups": []}, "routing.strong_share"),
    ({"routing": {"strong_share": 1.5}, "groups": [{}]}, "strong_share=1.5"),
    ({"routing": {"strong_share": 0.5}, "groups": [{"model": "m", "gpu": "g", "replicas": 0}]},
     "replicas=0"),
])
def test_plan_parse_errors_name_the_field(data, field) -> None:
    with pytest.raises(PlanError, match=field.replace("[", r"\[").replace(".", r"\.")):
        Plan.from_dict(data)


def _brute_force_min_cost(pr: Problem, quality: float, p95: float) -> float:
    """Every plan with one group per (model, type), evaluated, cheapest admissible."""
    s_min = pr.quality.min_share_for(quality)
    slots = []
    for m, t in itertools.product((0, 1), range(len(pr.gpu_types))):
        opts = [(-1, 0)] + [(int(c), r) for c in pr.configs_of(m, t)
                            for r in range(1, pr.stock[t] // pr.cfg_gpus[c] + 1)]
        slots.append(opts)
    best = np.inf
    shares = np.linspace(s_min, 1.0, 41)
    for combo in itertools.product(*slots):
        cfg = np.array([c for c, _ in combo])
        reps = np.array([r for _, r in combo])
        plans = PlanArrays(shares, np.tile(cfg, (len(shares), 1)), np.tile(reps, (len(shares), 1)))
        m = evaluate_arrays(pr, plans)
        ok = m.within_stock & (m.p95_s <= p95 + 1e-9)
        if ok.any():
            best = min(best, float(m.cost_per_hour[ok].min()))
    return best


def test_exact_min_cost_matches_brute_force(small_problem: Problem) -> None:
    found = exact_min_cost(small_problem, 87, 8)
    assert found is not None
    cost = float(evaluate_arrays(small_problem, found).cost_per_hour[0])
    assert cost == pytest.approx(_brute_force_min_cost(small_problem, 87, 8))


def test_exact_front_dominates_every_sampled_plan(small_problem: Problem) -> None:
    pr = small_problem
    front = exact_front(pr)
    lo, hi = front.hv_bounds(pr)
    assert 0 < lo <= hi <= lo * 1.01
    # No random feasible plan beats the front: at its P95, its share <= s_max(P95).
    rnd = search(pr, Goal(), solver="random", seed=1, max_evals=3000)
    ok = rnd.metrics.feasible & (rnd.metrics.p95_s < pr.ceiling_s)
    assert ok.sum() > 20
    for i in np.flatnonzero(ok):
        k = np.searchsorted(front.levels_s, rnd.metrics.p95_s[i])
        assert rnd.plans.strong_share[i] <= front.s_max[min(k, len(front.levels_s) - 1)] + 1e-9
    # Every DP state is reachable: its plan really has these capacities.
    st = solve_level(pr, 6.0, budget=pr.budget, clip=np.inf)
    cfg, reps = st.plan(0)
    caps = pr.cap_at(6.0)
    got = [(reps * caps[cfg.clip(0)] * (cfg >= 0) * (pr.cfg_model[cfg.clip(0)] == m)).sum()
           for m in (0, 1)]
    assert got == pytest.approx([st.cw[0], st.cs[0]])


def test_mobo_reaches_the_exact_front(small_problem: Problem) -> None:
    pr = small_problem
    lo, _hi = exact_front(pr).hv_bounds(pr)
    res = search(pr, Goal(), solver="mobo", seed=0, max_evals=264)
    assert res.hypervolume(pr) >= 0.99 * lo
    exact = search(pr, Goal("min-cost", 87, 8), solver="exact")
    mobo = search(pr, Goal("min-cost", 87, 8), solver="mobo", max_evals=264)
    e, b = exact.best(pr), mobo.best(pr)
    assert e is not None and b is not None
    assert mobo.metrics.cost_per_hour[b] <= exact.metrics.cost_per_hour[e] * 1.01


def test_baselines_never_beat_the_joint_optimum(small_problem: Problem) -> None:
    pr = small_problem
    best = exact_min_cost(pr, 87, 8)
    assert best is not None
    joint = float(evaluate_arrays(pr, best).cost_per_hour[0])
    for name in BASELINES:
        found = baseline_min_cost(pr, name, 87, 8)
        if found is not None:
            m = evaluate_arrays(pr, found)
            assert m.cost_per_hour[0] >= joint - 1e-9, name
            if name.startswith("Stand-Alone"):
                assert found.strong_share[0] == 1.0


def test_max_throughput_mobo_matches_exact(small_problem: Problem) -> None:
    pr = small_problem
    goal = Goal("max-throughput", quality=87, p95_s=8)
    exact = search(pr, goal, solver="exact")
    mobo = search(pr, goal, solver="mobo", max_evals=256)
    e, b = exact.best(pr), mobo.best(pr)
    assert e is not None and b is not None
    # Both within the budget and the quality; MOBO within 2% of the exact capacity.
    for res, i in ((exact, e), (mobo, b)):
        assert res.metrics.cost_per_hour[i] <= pr.budget + 1e-9
        assert res.metrics.quality[i] >= 87 - 1e-9
    assert mobo.metrics.capacity_rps[b] >= 0.98 * exact.metrics.capacity_rps[e]
    assert mobo.metrics.capacity_rps[b] <= exact.metrics.capacity_rps[e] + 1e-6


def test_gp_training_subset_keeps_the_front() -> None:
    from tuning._mobo import leading_layers, training_subset

    # Outcomes (o0, o1, slack): the front of the feasible rows is rows 0 and 1; row 2 is
    # dominated by row 1; row 3 is infeasible although it would dominate everything.
    y = np.array([[1.0, 0.0, 0.1], [0.5, 0.5, 0.0], [0.4, 0.4, 0.2], [2.0, 2.0, -0.5]])
    assert leading_layers(y, 10).tolist() == [0, 1, 2]
    assert sorted(leading_layers(y, 2).tolist()) == [0, 1]
    assert training_subset(y, 10, 0).tolist() == [0, 1, 2, 3]
    big = np.random.default_rng(0).random((500, 3)) - [0, 0, 0.5]
    keep = training_subset(big, 96, 0)
    assert len(keep) == 96 == len(set(keep.tolist()))
    assert set(leading_layers(big, 48).tolist()) <= set(keep.tolist())
