"""The paper's experiments (`tuning.paper`): the fixed-budget P95 optimum is exact."""

from __future__ import annotations

import numpy as np


def test_min_p95_plan_is_optimal() -> None:
    """No BOute plan meets Q = 89 under the budget 0.1% faster than the bisection's answer."""
    from tuning import evaluate_arrays, planning_problem
    from tuning._exact import _share_range, solve_level
    from tuning.paper import min_p95_plan

    problem = planning_problem("paper-gsm8k")
    plan = min_p95_plan(problem, 89.0)
    assert plan is not None
    p95 = float(evaluate_arrays(problem, plan).p95_s[0])
    s_q = problem.quality.min_share_for(89.0)

    def feasible(x: float) -> bool:
        st = solve_level(problem, x, budget=problem.budget, clip=problem.rate_rps)
        return bool(_share_range(st, problem.rate_rps, s_q)[2].any())

    assert feasible(p95 * (1 + 1e-9)) and not feasible(p95 * (1 - 1e-3))
    assert float(plan.strong_share[0]) >= s_q - 1e-12
    assert np.isfinite(p95)
