"""Certificates: how far from optimal a ladder's answer can be, from the level program's bounds.

Every answer beyond the pair gets a `Certificate` (`certify`):

* **pareto**: the hypervolume HV_found of the front found (normalized, `tuning._front`) and an
  upper bound HV_bound of the true front's, from the level program's dual bounds B(x)
  (`tuning._bound`: the staircase of the points (x_{i-1}, B(x_i))); the gap is
  ``(HV_bound - HV_found) / HV_bound``;
* **min-cost**: the cheapest admissible plan found, C_found, and a lower bound C_bound of the
  cheapest plan's $/h (the level program at the target P95 with the quality floors); the gap
  is ``(C_found - C_bound) / C_bound``.

The answer is *exact* when the gap is at most `EXACT_GAP`. The bound's own plans (the level
program's incumbents: exact plans with one workload; with several, routings whose exact
same-mix deployment `tuning._polish` finds) join the answer, so that a front can close.

`front_bound` picks levels as `tuning._exact.exact_front` does: it starts at the ceiling (a
bound for every level at once) and bisects, in log x, the interval (a, b] whose share of the
gap ``dy * (q_n(B(b)) - q_n(F(a)))`` is largest (dy its normalized log-latency width, F the
best quality found at P95 <= a), until the gap is at most `EXACT_GAP`, `MAX_LEVEL_RUNS` levels
are solved or the deadline passes. Any set of solved levels containing the ceiling gives a
valid bound.

Deadlines count CPU seconds of this process (`tuning._deadline.CpuDeadline`: a loaded machine
does not cut the work short), capped at `tuning._deadline.WALL_CAP_FACTOR` times as many wall
seconds; each level program's HiGHS limit (wall clock, all HiGHS knows) is the wall time left
to that cap, at least `LEVEL_MIN_LIMIT_S`.

`exact_level_search` is `auto`'s exact solver for one workload beyond the pair (K models,
with or without length classes), where the level program is the plan space itself: the answer
is the bound's own plans, and it is exact once the gap closes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._bound import LEVEL_TIME_LIMIT_S, MIP_REL_GAP, LevelSolution, level_program
from ._certificate import EXACT_GAP, Certificate, FrontBound, SolvedLevel
from ._deadline import CpuDeadline
from ._evaluator import PlanArrays, evaluate_arrays
from ._front import hypervolume
from ._problem import X_MIN_S, Problem

if TYPE_CHECKING:
    from ._run import Goal, SearchResult

__all__ = ["CERTIFY_BUDGET_S", "EXACT_GAP", "Certificate", "FrontBound", "SolvedLevel",
           "certify", "exact_level_search", "front_bound", "min_cost_bound"]

FloatArray = npt.NDArray[np.float64]

MAX_LEVEL_RUNS = 200
FLOOR_NUDGE = 1e-7
"""Quality added to the floors when the min-cost incumbent misses one by HiGHS's tolerance."""
CERTIFY_BUDGET_S = 5.0
"""CPU seconds a search spends on its certificate after the search itself (`CpuDeadline`)."""
LEVEL_MIN_LIMIT_S = 0.5
"""Least HiGHS time limit of one level program under a deadline (the ceiling must solve)."""


def _first_level_s(problem: Problem) -> float:
    """The first level at which any config has capacity (below it no plan serves)."""
    ok = (problem.caps.max(axis=0) > 0).any(axis=0)
    return float(problem.levels_s[int(np.argmax(ok))]) if ok.any() else problem.ceiling_s


def _staircase_hv(problem: Problem, x0: float, xs: FloatArray, bs: FloatArray) -> float:
    """HV of the points (x_{i-1}, B(x_i)) with x_{-1} = x0 (infeasible levels dropped)."""
    prev = np.concatenate([[x0], xs[:-1]])
    ok = np.isfinite(bs)
    return hypervolume(problem, prev[ok], bs[ok])


def _best_found(p95: FloatArray, quality: FloatArray, x: float) -> float:
    ok = p95 <= x * (1 + 1e-12)
    return float(quality[ok].max()) if ok.any() else -np.inf


def _with_plan(problem: Problem, sol: LevelSolution, budget: float | None
               ) -> PlanArrays | None:
    """The incumbent, or (several workloads) the exact deployment of its routing."""
    if sol.plan is None:
        return None
    m = evaluate_arrays(problem, sol.plan, sol.level_s)
    if (m.p95_s[0] <= sol.level_s * (1 + 1e-9) and m.within_stock[0]
            and (budget is None or m.within_budget[0])):
        return sol.plan
    from ._polish import exact_deployment

    assert sol.plan.shares is not None
    return exact_deployment(problem, sol.plan.shares[0], sol.level_s, budget)


def front_bound(problem: Problem, found: tuple[FloatArray, FloatArray] | None = None, *,
                deadline: CpuDeadline | None = None, max_runs: int = MAX_LEVEL_RUNS,
                warm: FrontBound | None = None) -> FrontBound:
    """The staircase bound of the (quality, P95) front under the budget (module docstring).

    Args:
        problem: the planning problem.
        found: (P95, quality) of the admissible plans already known (a search's front).
        deadline: CPU seconds of this process, capped in wall seconds, after which no more
            levels are solved (the ceiling always is).
        max_runs: most level programs.
        warm: the front of a problem whose plan space contains this one's (the same problem
            with capacities at least as high: `tuning._run.Warm.covers`). Each of its exact
            levels whose plan is still admissible here at that level and still reaches the
            bound (up to HiGHS's `MIP_REL_GAP`) is taken as solved: the bound is valid here
            (a subset's optimum is at most the superset's) and the plan reaches it, so a new
            solve could only return the same value. The others are solved as needed.

    """
    start = time.perf_counter()
    q_lo, q_hi = problem.quality_range()
    span = (q_hi - q_lo) or 1.0
    y_span = float(np.log(problem.ceiling_s / X_MIN_S))
    x0 = _first_level_s(problem)
    p95 = np.empty(0) if found is None else np.asarray(found[0], dtype=np.float64)
    qual = np.empty(0) if found is None else np.asarray(found[1], dtype=np.float64)
    solved: dict[float, float] = {}
    records: list[SolvedLevel] = []
    plans: list[PlanArrays] = []
    exact_program = True

    def solve(x: float) -> None:
        nonlocal p95, qual, exact_program
        limit_s = (LEVEL_TIME_LIMIT_S if deadline is None else
                   min(LEVEL_TIME_LIMIT_S, max(LEVEL_MIN_LIMIT_S, deadline.wall_left_s())))
        sol = level_program(problem, x, mode="pareto", budget_per_hour=problem.budget,
                            time_limit_s=limit_s)
        solved[x] = sol.bound
        exact_program &= sol.exact
        plan = _with_plan(problem, sol, problem.budget)
        records.append(SolvedLevel(x, sol.bound, plan if plan is sol.plan else None,
                                   sol.exact))
        if plan is not None:
            plans.append(plan)
            m = evaluate_arrays(problem, plan)
            if m.feasible[0] and m.p95_s[0] <= problem.ceiling_s:
                p95, qual = np.append(p95, m.p95_s[0]), np.append(qual, m.quality[0])

    def hv_found() -> float:
        return hypervolume(problem, p95, qual) if len(p95) else 0.0

    reused = 0
    for rec in (warm.solved if warm is not None else ()):
        if _still_tight(problem, rec):
            assert rec.plan is not None
            solved[rec.level_s] = rec.bound
            records.append(rec)
            plans.append(rec.plan)
            m = evaluate_arrays(problem, rec.plan)
            p95, qual = np.append(p95, m.p95_s[0]), np.append(qual, m.quality[0])
            reused += 1
    if problem.ceiling_s not in solved:
        solve(problem.ceiling_s)
    complete = True
    while len(solved) < max_runs:
        xs = np.array(sorted(solved))
        bs = np.array([solved[x] for x in xs])
        hv_up = _staircase_hv(problem, x0, xs, bs)
        if hv_up <= 0 or (hv_up - hv_found()) / hv_up <= EXACT_GAP:
            break
        if deadline is not None and deadline.passed():
            complete = False
            break
        lefts = np.concatenate([[x0], xs[:-1]])
        contrib = np.array([
            np.log(b / a) / y_span * max(0.0, (bb - max(_best_found(p95, qual, a), q_lo))
                                         / span) if np.isfinite(bb) and b > a else 0.0
            for a, b, bb in zip(lefts, xs, bs, strict=True)])
        k = int(np.argmax(contrib))
        a, b = float(lefts[k]), float(xs[k])
        if contrib[k] <= 0 or b / a <= 1 + 1e-4:      # no more to gain, or a point-wide gap
            break
        solve(float(np.sqrt(a * b)))
    xs = np.array(sorted(solved))
    bs = np.array([solved[x] for x in xs])
    from ._run import concat_plans

    return FrontBound(xs, bs, _staircase_hv(problem, x0, xs, bs),
                      concat_plans(plans) if plans else None, exact_program, complete,
                      time.perf_counter() - start, tuple(records), reused)


def _still_tight(problem: Problem, rec: SolvedLevel) -> bool:
    """`rec`'s plan is admissible on `problem` at its level and reaches its bound there.

    Only exact levels whose incumbent is the level program's own plan (one workload: the
    program is the plan space) qualify.
    """
    if rec.plan is None or not rec.exact or not np.isfinite(rec.bound):
        return False
    m = evaluate_arrays(problem, rec.plan, rec.level_s)
    return bool(m.feasible[0] and m.within_stock[0] and m.within_budget[0]
                and m.p95_s[0] <= rec.level_s * (1 + 1e-9)
                and m.p95_s[0] <= problem.ceiling_s
                and m.quality[0] >= rec.bound - MIP_REL_GAP * max(1.0, abs(rec.bound)))


def min_cost_bound(problem: Problem, floors: tuple[float | None, ...], p95_s: float
                   ) -> tuple[LevelSolution, PlanArrays | None]:
    """The level program of min-cost at `p95_s`: a lower bound of $/h and its plan (or None).

    The plan must meet every floor exactly (`tuning._run.SearchResult.meets_quality` allows
    1e-9 less, callers do not): an incumbent a hair below one, within HiGHS's tolerance, is
    replaced by the incumbent of floors raised by `FLOOR_NUDGE`.
    """
    sol = level_program(problem, p95_s, mode="min-cost", floors=floors)
    plan = _with_plan(problem, sol, None)
    if plan is not None and not _meets(problem, plan, floors):
        raised = tuple(None if f is None else f + FLOOR_NUDGE for f in floors)
        plan = _with_plan(problem, level_program(problem, p95_s, mode="min-cost",
                                                 floors=raised), None)
        plan = plan if plan is not None and _meets(problem, plan, floors) else None
    return sol, plan


def _meets(problem: Problem, plan: PlanArrays, floors: tuple[float | None, ...]) -> bool:
    wq = evaluate_arrays(problem, plan).workload_quality[0]
    return all(f is None or q >= f for q, f in zip(wq, floors, strict=True))


def certify(problem: Problem, result: SearchResult, *, deadline: CpuDeadline | None = None
            ) -> SearchResult:
    """Attach a `Certificate` to a ladder's search result, adding the bound's plans to it.

    Pareto and min-cost goals (max-throughput: the result as it is). The result is changed in
    place (plans, metrics, ``certificate``) and returned. `deadline` (CPU seconds, capped in
    wall seconds) stops the front's refinement; the bound stays valid.
    """
    from ._run import _concat_metrics, concat_plans, floors

    goal = result.goal
    start = time.perf_counter()
    if goal.mode == "pareto":
        f = result.front_mask(problem)
        fb = front_bound(problem, (result.metrics.p95_s[f], result.metrics.quality[f]),
                         deadline=deadline)
        extra, bound = fb.plans, fb.hv_bound
        exact_program, levels, complete = fb.exact_program, len(fb.levels_s), fb.complete
    elif goal.mode == "min-cost" and goal.p95_s is not None:
        sol, extra = min_cost_bound(problem, floors(problem, goal), goal.p95_s)
        bound, exact_program, levels, complete = sol.bound, sol.exact, 1, True
    else:
        return result
    if extra is not None:
        result.plans = concat_plans([result.plans, extra])
        result.metrics = _concat_metrics(result.metrics,
                                         evaluate_arrays(problem, extra, goal.p95_s))
    if goal.mode == "pareto":
        found = result.hypervolume(problem)
        gap = max(0.0, (bound - found) / bound) if bound > 0 else 0.0
    else:
        b = result.best(problem)
        found = np.inf if b is None else float(result.metrics.cost_per_hour[b])
        gap = (0.0 if not np.isfinite(bound) and b is None else
               max(0.0, (found - bound) / bound) if bound > 0 else 0.0)
    result.certificate = Certificate(goal.mode, found, bound, gap, exact_program, levels,
                                     time.perf_counter() - start, complete)
    return result


def exact_level_search(problem: Problem, goal: Goal, *, deadline: CpuDeadline | None = None,
                       warm: FrontBound | None = None) -> SearchResult | None:
    """One workload beyond the pair: the level program's answer, exact up to `EXACT_GAP`.

    With one workload the level program is the plan space at each level (`tuning._bound`), so
    its incumbents are the best plans there:

    * **pareto**: `front_bound` from no plans: the incumbents at the solved levels, levels
      bisected until ``(HV_bound - HV_found) / HV_bound <= EXACT_GAP``;
    * **min-cost**: `min_cost_bound` at the target P95: the cheapest plan meeting the floors,
      ``(C_found - C_bound) / C_bound <= EXACT_GAP``.

    `warm`: a pareto front of a problem containing this one (`front_bound`).

    The result carries its `Certificate` and is labelled ``exact``, and (pareto) its front
    as ``warm`` for a re-plan (`tuning._run.Warm`). None when it is not exact
    (the deadline stopped the refinement, HiGHS stopped a level at its time limit with a gap,
    no plan meets the goal, or another goal): the caller searches instead.
    """
    from ._run import SearchResult, Warm, _progress_value, floors

    start = time.perf_counter()
    fb: FrontBound | None = None
    if goal.mode == "pareto":
        fb = front_bound(problem, None, deadline=deadline, warm=warm)
        plans, bound, levels = fb.plans, fb.hv_bound, len(fb.levels_s)
        exact_program, complete = fb.exact_program, fb.complete
    elif goal.mode == "min-cost" and goal.p95_s is not None:
        sol, plans = min_cost_bound(problem, floors(problem, goal), goal.p95_s)
        bound, levels, exact_program, complete = sol.bound, 1, sol.exact, True
    else:
        return None
    if plans is None or not np.isfinite(bound):
        return None
    res = SearchResult("exact", goal, plans, evaluate_arrays(problem, plans, goal.p95_s),
                       time.perf_counter() - start, exact_runs=levels)
    if goal.mode == "pareto":
        found = res.hypervolume(problem)
        gap = max(0.0, (bound - found) / bound) if bound > 0 else 0.0
    else:
        b = res.best(problem)
        if b is None:
            return None
        found = float(res.metrics.cost_per_hour[b])
        gap = (max(0.0, (found - bound) / bound) if bound > 0 else
               0.0 if found <= 0 else np.inf)
    cert = Certificate(goal.mode, found, bound, gap, exact_program, levels, res.seconds,
                       complete)
    if not cert.exact:
        return None
    res.certificate = cert
    res.warm = Warm(problem, None, fb)
    again = (f", {fb.reused} of them from the last search (a re-plan)"
             if fb is not None and fb.reused else "")
    res.stopped = (f"certified (the level program's answer is exact: gap {100 * gap:.2f}% "
                   f"<= {100 * EXACT_GAP:g}%, {levels} level program(s){again})")
    res.trace.append((levels, res.seconds, _progress_value(problem, res)))
    return res
