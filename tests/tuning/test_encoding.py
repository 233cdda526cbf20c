import dataclasses

import numpy as np
import pytest

from tuning import Problem
from tuning._encoding import AXIS_END, StructuredEncoding


def make_toy_problem(base: Problem, cap: list[list[float]] | None = None,
                     levels_s: tuple[float, ...] = (1.0, 2.0, 4.0)) -> Problem:
    """Two GPU types with hand-set capacities (20 req/s, the small scenario's rate).

    Types: A (2 GPUs, $1/GPU-h) and B (4 GPUs, $0.5/GPU-h). Configs, as (model, type, GPUs):
    c0 weak on A (1), c1 weak on B (1), c2 strong on A (1), c3 strong on B (TP2, 2 GPUs).
    Default capacities, req/s per replica at every level: c0 10, c1 4, c2 6, c3 3.
    """
    caps = cap or [[10.0] * 3, [4.0] * 3, [6.0] * 3, [3.0] * 3]
    gpus = np.array([1, 1, 1, 2])
    ctype = np.array([0, 1, 0, 1])
    price = np.array([1.0, 0.5])
    return dataclasses.replace(
        base, gpu_types=("A", "B"), stock=np.array([2, 4]), gpu_price=price,
        gpus_per_node=np.array([8, 8]), cfg_model=np.array([0, 0, 1, 1]), cfg_type=ctype,
        cfg_tp=np.array([1, 1, 1, 2]), cfg_pp=np.ones(4, dtype=np.int64), cfg_gpus=gpus,
        cfg_price=gpus * price[ctype], cfg_dbs=np.zeros((1, 4), dtype=np.int64),
        levels_s=np.array(levels_s), caps=np.array(caps)[None], _by_key={})


def z_of_share(s: float) -> float:
    """The z coordinate decoding to requested share s (s_lo = 0, inside the axis' ends)."""
    return (s + AXIS_END) / (1 + 2 * AXIS_END)


# Slots: (weak A, weak B, strong A, strong B). lambda = 20 req/s.
@pytest.mark.parametrize("share, budget, want_share, want_reps, want_cost", [
    # Share step: strong need 0.2*20 = 4 -> one c2 (6 req/s: score min(4,6)/$1 = 4 beats c3's
    # min(4,3)/$1 = 3); its slack is routed to it: s' = 6/20 = 0.3. Weak need 14: c0 (score
    # 10/$1 = 10 > c1's 4/$0.5 = 8) takes A's last GPU, then one c1 covers the last 4.
    # Cost 1 + 1 + 0.5 = 2.5 (without the share step: 16 req/s, c0 + 2 c1, $3.0).
    (0.2, None, 0.3, [1, 1, 1, 0], 2.5),
    # Stock repair: s = 1 takes 2 c2 + 2 c3 = 18 req/s (s' = 0.9) and leaves no GPU for the
    # weak 2 req/s. Requested shares up to 15/20 = 0.75 fit (2 c2 + 1 c3 = 15 req/s, weak 5
    # on 2 c1 with B's 2 GPUs left); above, the second c3 takes B. Cost 2 + 1 + 2*0.5 = 4.
    (1.0, None, 0.75, [0, 2, 2, 1], 4.0),
    # Budget repair ($3.5/h): the 0.75 plan costs $4; shares up to 12/20 = 0.6 (2 c2, weak 8 on
    # 2 c1) cost 2 + 1 = $3.
    (1.0, 3.5, 0.6, [0, 2, 2, 0], 3.0),
])
def test_decode_routes_the_slack_and_repairs_onto_the_boundary(
        small_problem: Problem, share: float, budget: float | None, want_share: float,
        want_reps: list[int], want_cost: float) -> None:
    pr = make_toy_problem(small_problem)
    assert pr.rate_rps == 20
    enc = StructuredEncoding(pr, budget_per_hour=budget)
    plans = enc.decode(np.array([[z_of_share(share), 0.5]]))
    assert plans.strong_share[0] == pytest.approx(want_share)
    assert plans.replicas[0].tolist() == want_reps
    used = plans.replicas[0] > 0
    assert plans.config[0][used].tolist() == [c for c, r in zip([0, 1, 2, 3], want_reps,
                                                                strict=True) if r > 0]
    assert float((plans.replicas[0] * pr.cfg_price[np.maximum(plans.config[0], 0)]).sum()) == (
        pytest.approx(want_cost))


def test_decode_keeps_a_plan_nothing_can_repair(small_problem: Problem) -> None:
    # Budget $1.5/h: even weak-only (s = 0: 2 c0 = $2) is over it, so the plan of the asked
    # share is kept as is (0.2 -> the $2.5 plan of the first case above).
    enc = StructuredEncoding(make_toy_problem(small_problem), budget_per_hour=1.5)
    plans = enc.decode(np.array([[z_of_share(0.2), 0.5]]))
    assert plans.strong_share[0] == pytest.approx(0.3)
    assert plans.replicas[0].tolist() == [1, 1, 1, 0]


def test_top_level_is_where_the_strong_only_plan_first_fits(small_problem: Problem) -> None:
    # Capacities at levels 1, 2, 4 s: c2 2, 6, 10; c3 1, 3, 5 (linear in log x between). The
    # whole stock serves 2 c2 + 2 c3 = 6, 18, 30 req/s: 20 is reached at w = 2/12 of the way
    # from 2 s to 4 s in log x, i.e. x = 2 * 2**(1/6) = 2.2449 s.
    caps = [[10.0] * 3, [4.0] * 3, [2.0, 6.0, 10.0], [1.0, 3.0, 5.0]]
    enc = StructuredEncoding(make_toy_problem(small_problem, caps))
    assert enc.top_level_s() == pytest.approx(2 * 2 ** (1 / 6), rel=1e-9)
    # With A down to 1 GPU and B to 2, the stock serves at most 10 + 5 = 15 < 20 req/s at the
    # ceiling (4 s): the ceiling is returned.
    short = dataclasses.replace(enc.problem, stock=np.array([1, 2]))
    assert StructuredEncoding(short).top_level_s() == pytest.approx(4.0)
