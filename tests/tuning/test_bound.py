"""The level program and its certificates (`tuning._bound`, `tuning._certify`)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from profiling import CascadeQuality, default_quality_curve
from tuning import Goal, Problem, evaluate_arrays, search
from tuning._bound import level_program, tail_pieces
from tuning._certify import certify, front_bound
from tuning._exact import _s_max, exact_min_cost, solve_level

from .test_encoding import make_toy_problem

LADDER = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")


def make_toy_ladder(base: Problem) -> Problem:
    """Three models on two types, 20 req/s, hand-set capacities equal at every level.

    Types: A (2 GPUs, $1/GPU-h), B (4 GPUs, $0.5/GPU-h). Configs (model, type, GPUs, req/s):
    c0 (8B, A, 1, 10), c1 (70B, A, 1, 6), c2 (405B, B, TP2, 5): $1/h each.
    Quality: the published gsm8k cascade 84.5 / 95.1 / 96.8 with the gsm8k curve as shape.
    """
    gpus = np.array([1, 1, 2])
    ctype = np.array([0, 0, 1])
    price = np.array([1.0, 0.5])
    caps = np.array([[10.0] * 3, [6.0] * 3, [5.0] * 3])
    return dataclasses.replace(
        base, models=LADDER, gpu_types=("A", "B"), stock=np.array([2, 4]), gpu_price=price,
        gpus_per_node=np.array([8, 8]), cfg_model=np.array([0, 1, 2]), cfg_type=ctype,
        cfg_tp=np.array([1, 1, 2]), cfg_pp=np.ones(3, dtype=np.int64), cfg_gpus=gpus,
        cfg_price=gpus * price[ctype], cfg_dbs=np.zeros((1, 3), dtype=np.int64),
        levels_s=np.array([1.0, 2.0, 4.0]), caps=caps[None], _by_key={},
        cascades=(CascadeQuality.published("gsm8k", LADDER),))


def make_toy_mix(base: Problem) -> Problem:
    """The pair toy (`make_toy_problem`) with two workloads: 15 req/s gsm8k, 5 req/s mtbench.

    Capacities (req/s per replica) on gsm8k as the pair toy (c0 10, c1 4, c2 6, c3 3); on
    mtbench c0 2, c1 4, c2 1, c3 3: type B is relatively better at chat.
    """
    pr = make_toy_problem(base)
    chat = np.array([[2.0] * 3, [4.0] * 3, [1.0] * 3, [3.0] * 3])
    curves = (default_quality_curve("gsm8k"), default_quality_curve("mtbench"))
    return dataclasses.replace(
        pr, workloads=("math", "chat"), workload_rates=np.array([15.0, 5.0]),
        caps=np.stack([pr.caps[0], chat]), cfg_dbs=np.zeros((2, 4), dtype=np.int64),
        cascades=tuple(CascadeQuality.of_pair(c, pr.models) for c in curves))


def test_tail_pieces_sum_to_the_cascade() -> None:
    q = CascadeQuality.published("gsm8k", LADDER)
    q0, pieces = tail_pieces(q)
    # h_2 = 10.6 g, h_3 = 1.7 g on the gsm8k knots; g(0.5605) = 4.5 / 10.6.
    assert q0 == 84.5
    assert np.interp(0.5605, pieces[0].xs, pieces[0].ys) == pytest.approx(4.5)
    assert np.interp(0.5605, pieces[1].xs, pieces[1].ys) == pytest.approx(1.7 * 4.5 / 10.6)
    assert all(p.exact for p in pieces)


# The pair: the level program is the pair DP's problem, so their answers agree.
@pytest.mark.parametrize("level_s", [1.0, 2.0, 4.0])
def test_pair_level_program_equals_the_dp(small_problem: Problem, level_s: float) -> None:
    st = solve_level(small_problem, level_s, budget=small_problem.budget,
                     clip=small_problem.rate_rps)
    s_max, _ = _s_max(st, small_problem.rate_rps)
    sol = level_program(small_problem, level_s, mode="pareto",
                        budget_per_hour=small_problem.budget)
    want = float(small_problem.quality(s_max)) if s_max >= 0 else -np.inf
    assert sol.exact
    assert sol.bound == pytest.approx(want, abs=1e-6)


def test_pair_min_cost_equals_the_dp(small_problem: Problem) -> None:
    plan = exact_min_cost(small_problem, 87.0, 8.0)
    assert plan is not None
    want = float(evaluate_arrays(small_problem, plan, 8.0).cost_per_hour[0])
    sol = level_program(small_problem, 8.0, mode="min-cost", floors=(87.0,))
    assert sol.bound == pytest.approx(want, abs=1e-6)
    assert sol.value == pytest.approx(want, abs=1e-6)


# Toy ladder (hand-computed). g = the gsm8k curve normalized: g(0.25) = 2.35405 / 10.6,
# g(0.5) = 4.08983 / 10.6, g(0.55) = 4.42881 / 10.6 (Q(0.55) = 87 + 2 * 0.2845 / 0.295).
# Budget $3/h buys three $1 replicas covering 20 req/s:
#   2 c2 + c0: S = (0.5, 0.5)  -> 84.5 + 4.08983 + 1.7 * 4.08983 / 10.6 = 89.24575
#   c2 + c1 + c0 (21 req/s): S = (11/20, 5/20) -> 84.5 + 4.42881 + 1.7 * 2.35405 / 10.6
#                            = 89.30635 (the best)
#   2 c0 + c2: S = (0.25, 0.25) -> 87.23159; 2 c0 + c1: S = (0.3, 0) -> 87.23390.
def test_toy_ladder_best_quality_by_hand(small_problem: Problem) -> None:
    pr = dataclasses.replace(make_toy_ladder(small_problem),
                             scenario=small_problem.scenario.model_copy(
                                 update={"budget_per_hour": 3.0}))
    sol = level_program(pr, 2.0, mode="pareto", budget_per_hour=3.0)
    assert sol.exact
    assert sol.bound == pytest.approx(89.30635, abs=1e-4)
    assert sol.plan is not None
    m = evaluate_arrays(pr, sol.plan, 2.0)
    assert m.quality[0] == pytest.approx(89.30635, abs=1e-4)
    assert m.cost_per_hour[0] == pytest.approx(3.0)
    assert sorted(sol.plan.replicas[0].tolist()) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("floor, want", [
    (84.5, 2.0),       # 2 c0: the only $2 plan covering 20 req/s
    (88.0, 3.0),       # 2 c2 + c0 (89.25) or c2 + c1 + c0 (89.31)
    (89.3, 3.0),       # c2 + c1 + c0 only
    (89.31, 4.0),      # above every $3 plan
])
def test_toy_ladder_min_cost_by_hand(small_problem: Problem, floor: float, want: float) -> None:
    sol = level_program(make_toy_ladder(small_problem), 2.0, mode="min-cost", floors=(floor,))
    assert sol.bound == pytest.approx(want, abs=1e-6)


def test_bound_is_above_every_plan_found(small_problem: Problem) -> None:
    """Two workloads (a relaxation): no plan the search finds beats the bound at its level."""
    pr = make_toy_mix(small_problem)
    res = search(pr, Goal(), solver="random", max_evals=300, seed=1,
                 encoding="structured")
    m = res.metrics
    ok = m.feasible & (m.p95_s <= pr.ceiling_s)
    assert ok.sum() > 10
    for x in (1.0, 2.0, 4.0):
        sol = level_program(pr, x, mode="pareto", budget_per_hour=pr.budget)
        at = ok & (m.p95_s <= x)
        assert not sol.exact
        if at.any():
            assert float(m.quality[at].max()) <= sol.bound + 1e-9
    fb = front_bound(pr)
    assert res.hypervolume(pr) <= fb.hv_bound + 1e-12


def test_min_cost_bound_is_below_every_plan_found(small_problem: Problem) -> None:
    pr = make_toy_mix(small_problem)
    goal = Goal("min-cost", p95_s=4.0, qualities=(86.0, 8.0))
    res = search(pr, goal, solver="random", max_evals=300, seed=2,
                 encoding="structured")
    adm = res.admissible(pr)
    sol = level_program(pr, 4.0, mode="min-cost", floors=(86.0, 8.0))
    assert adm.any()
    assert sol.bound <= float(res.metrics.cost_per_hour[adm].min()) + 1e-9


def test_certificate_of_a_ladder_is_exact(small_problem: Problem) -> None:
    """One workload: the level programs' plans join the answer and the front closes."""
    pr = make_toy_ladder(small_problem)
    res = certify(pr, search(pr, Goal(), solver="random", max_evals=50, seed=0,
                 encoding="structured"))
    cert = res.certificate
    assert cert is not None and cert.exact_program and cert.complete
    assert cert.exact and cert.gap <= 2e-3
    assert cert.found == pytest.approx(res.hypervolume(pr))
    assert cert.line().startswith("certified: exact")
    assert cert.to_dict()["exact"] is True


def test_highs_printf_noise_is_dropped_and_other_output_goes_to_stderr(
        capfd: pytest.CaptureFixture[str]) -> None:
    """HiGHS's unconditional repair-LP printf never reaches stdout (``--json``) nor stderr."""
    from tuning._bound import HIGHS_NOISE, _highs_stdout_filtered

    with _highs_stdout_filtered():
        os.write(1, HIGHS_NOISE + b"\n")
        os.write(1, b"something else\n")
        os.write(1, HIGHS_NOISE + b"\n")
    out, err = capfd.readouterr()
    assert out == "" and err == "something else\n"
