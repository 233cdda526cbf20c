"""Searchers behind one interface: `search(problem, Goal, solver=...)` -> `SearchResult`.

* ``auto`` (the default): ``exact`` when its DP is estimated to certify the answer within
  `tuning._auto.EXACT_BUDGET_S`; for one workload beyond the pair the level program
  (`tuning._certify.exact_level_search`, labelled ``exact``) when its front is estimated
  within `tuning._auto.LEVEL_BUDGET_S` CPU seconds; else ``mobo`` (`tuning._auto.choose_solver`);
  the result says which ran and why (`SearchResult.reason`);
* ``mobo``: BoTorch multi-objective BO (qLogNEHVI with an outcome constraint) over the
  structured encoding (`tuning._encoding`), a Sobol start and batches of q proposals;
  ``encoding="raw"`` runs the same loop without the structure (the ablation);
* ``random``: uniform random integer plans (config and replica count per (model, GPU type));
* ``exact``: the knapsack DP (`tuning._exact`).

Beyond the pair (K models, several workloads, length classes) a ``mobo`` answer (not a
fixed-effort one, ``max_evals``) carries a certificate: how far from optimal it can be, from
the level program's bounds, whose own plans join the answer (`tuning._certify`).

Goals (`Goal.mode`):

* ``pareto``: maximize quality, minimize planning P95, under the budget (outcomes:
  normalized quality, normalized log-latency, budget slack);
* ``min-cost``: cheapest plan with quality >= Q and P95 <= L, budget ignored (the paper's
  Table 3) (outcomes: -cost, log-latency; constraint P95 <= L);
* ``max-throughput``: largest capacity (every group P95 <= L, or the ceiling) with quality >= Q
  under the budget (outcomes: capacity, quality; constraint budget).

Every mode takes the goal's TTFT / TPOT P95 targets (`Goal.ttft_p95_s`, `Goal.tpot_p95_s`) as
per-config rate caps in the capacity tables (`Problem.with_token_targets`).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ._deadline import CpuDeadline
from ._evaluator import evaluate_arrays
from ._exact import exact_front, exact_max_throughput, exact_min_cost
from ._problem import Problem
from ._run import (
    MODES,
    SOLVERS,
    Callback,
    Goal,
    SearchError,
    SearchResult,
    SolverChoice,
    StopRule,
    Warm,
    _empty,
    _progress_value,
    _Run,
    concat_plans,
    floors,
    make_encoding,
)

__all__ = ["Goal", "SearchError", "SearchResult", "StopRule", "concat_plans", "exact_search",
           "search"]


def _random(problem: Problem, goal: Goal, *, rule: StopRule, seed: int, batch: int,
            callback: Callback | None, encoding: str = "raw") -> SearchResult:
    enc = make_encoding(problem, goal, encoding)
    rng = np.random.default_rng(seed)
    name = "random" if encoding == "raw" else f"random-{encoding}"
    run = _Run(problem, goal, name, callback, replace(rule, patience=None, ehvi_fraction=None))
    while not run.stop:
        n = rule.max_evals - (len(run.result.plans) if run.result else 0)
        run.add(enc.decode(rng.random((min(batch, n), enc.dim))))
    return run.done()


def _one_model_min_cost(problem: Problem, goal: Goal) -> SearchResult | None:
    """One model, min-cost: no routing to search, the exact deployment is the answer.

    None when no deployment within the stock meets the P95 (the caller searches instead, to
    report the closest plans).
    """
    from ._polish import exact_deployment

    assert goal.p95_s is not None
    start = time.perf_counter()
    shares = np.ones((len(problem.workloads), 1))
    plans = exact_deployment(problem, shares, goal.p95_s)
    if plans is None:
        return None
    res = SearchResult("exact", goal, plans, evaluate_arrays(problem, plans, goal.p95_s),
                       time.perf_counter() - start, exact_runs=1)
    res.stopped = "certified (the integer program's answer is exact)"
    res.reason = ("one model: no routing to search; the cheapest deployment meeting the P95 "
                  "is a small integer program, solved exactly")
    return res


def exact_search(problem: Problem, goal: Goal, deadline: CpuDeadline | None = None
                 ) -> SearchResult:
    """The exact solver alone; past `deadline` it raises `ExactBudgetExceeded`.

    On `problem` clipped to the goal's token targets (`Problem.for_goal`).
    """
    problem = problem.for_goal(goal)
    if problem.num_models == 1 and goal.mode == "min-cost" and goal.p95_s is not None:
        res = _one_model_min_cost(problem, goal)
        if res is None:
            raise SearchError(f"no deployment within the stock keeps P95 <= {goal.p95_s:g} s "
                              f"at {problem.rate_rps:g} req/s")
        return res
    if not problem.is_pair:
        what = (f"{problem.num_models} models and {len(problem.workloads)} workload(s)"
                if not problem.classes else
                f"length classes at {problem.threshold_tokens} tokens")
        raise SearchError("solver=exact covers two models and one workload without length "
                          f"classes (and one model at min-cost); this problem has {what}: "
                          "use --solver mobo (or auto)")
    start = time.perf_counter()
    if goal.mode == "pareto":
        front = exact_front(problem, deadline=deadline)
        plans, runs = front.plans, front.dp_runs
    elif goal.mode == "min-cost":
        if goal.quality is None or goal.p95_s is None:
            raise SearchError("min-cost needs --quality and --p95")
        found = exact_min_cost(problem, goal.quality, goal.p95_s, deadline=deadline)
        plans, runs = found if found is not None else _empty(problem), 1
    else:
        found = exact_max_throughput(problem, goal.quality if goal.quality is not None
                                     else float(problem.quality(0.0)), goal.p95_s,
                                     deadline=deadline)
        plans, runs = found if found is not None else _empty(problem), 1
    m = evaluate_arrays(problem, plans, goal.p95_s)
    res = SearchResult("exact", goal, plans, m, time.perf_counter() - start, exact_runs=runs,
                       stopped="certified (the DP's answer is exact)")
    res.trace.append((runs, res.seconds, _progress_value(problem, res)))
    return res


def search(
    problem: Problem,
    goal: Goal,
    *,
    solver: str = "auto",
    seed: int = 0,
    max_evals: int | None = None,
    stop: StopRule | None = None,
    encoding: str | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    certificate: bool = True,
    warm: Warm | None = None,
) -> SearchResult:
    """Run one searcher on a problem (see the module docstring).

    Args:
        problem: the planning problem.
        goal: what to optimize.
        solver: ``auto``, ``mobo``, ``exact`` or ``random``.
        seed: of the Sobol start / random draws.
        max_evals: shorthand for ``StopRule.fixed(max_evals)``: exactly that many plans.
        stop: when mobo / random stop (default `StopRule()`: the acquisition's expected
            hypervolume improvement below 1e-3 of the hypervolume for 3 BO steps, or 60 s);
            ignored with `max_evals`.
        encoding: ``structured`` or ``raw``; default: structured for mobo, raw for random
            (uniform integer plans: every plan of the space reachable).
        callback: ``(evaluations, seconds, value) -> stop?`` after each batch.
        progress: draw a progress bar on stderr.
        certificate: beyond the pair, certify a mobo answer (`tuning._certify`, at most
            `tuning._certify.CERTIFY_BUDGET_S` more CPU seconds of this process, capped at
            `tuning._deadline.WALL_CAP_FACTOR` times as many wall seconds); False: the search
            alone.
        warm: the previous search's `SearchResult.warm` when `problem` is its problem with
            lower capacities (the headroom check's re-plan after a derate): when it covers
            `problem` (`Warm.covers`), ``auto`` keeps that search's solver choice (no second
            probe) and the level program starts from its still-tight levels
            (`tuning._certify.front_bound`); otherwise ignored.

    A goal with TTFT / TPOT targets is searched on `problem` clipped to them
    (`Problem.for_goal`): the result's metrics are that problem's, and so must be its plans'
    (`plan_from_arrays`).

    Raises:
        SearchError: unknown solver or mode, or a goal missing the targets it needs.

    """
    problem = problem.for_goal(goal)
    if solver not in SOLVERS:
        raise SearchError(f"solver={solver!r} is unknown; use one of {', '.join(SOLVERS)}")
    if goal.mode not in MODES:
        raise SearchError(f"objective={goal.mode!r} is unknown; use one of {', '.join(MODES)}")
    if goal.mode == "min-cost" and ((goal.quality is None and goal.qualities is None
                                     and problem.num_models > 1) or goal.p95_s is None):
        raise SearchError("objective=min-cost needs both --quality and --p95"
                          if problem.num_models > 1 else "objective=min-cost needs --p95")
    if problem.is_pair and goal.qualities is not None:
        goal = replace(goal, quality=goal.qualities[0], qualities=None)
    if goal.quality is not None and problem.is_pair:
        problem.quality.min_share_for(goal.quality)       # raises if unreachable
    if not problem.is_pair:
        floors(problem, goal)                             # raises if unreachable
    rule = StopRule.fixed(max_evals) if max_evals is not None else (stop or StopRule())
    if rule.max_evals < 1:
        raise SearchError(f"max_evals={rule.max_evals} must be >= 1")
    reason = ""
    picked: SolverChoice | None = None        # auto's choice, kept for a re-plan
    if solver == "auto" and problem.num_models == 1 and goal.mode == "min-cost":
        one = _one_model_min_cost(problem, goal)
        if one is not None:
            return one
    if solver == "auto":
        from ._auto import ExactBudgetExceeded, choose_solver, exact_deadline

        prior = warm if warm is not None and warm.covers(problem) else None
        choice = (prior.choice if prior is not None and prior.choice is not None else
                  choose_solver(problem, goal, level=max_evals is None))
        reason = choice.reason
        if choice.solver == "level":
            from ._auto import level_deadline
            from ._certify import exact_level_search

            level = exact_level_search(problem, goal, deadline=level_deadline(),
                                       warm=None if prior is None else prior.front)
            if level is not None:
                level.reason = reason
                level.warm = Warm(problem, choice, None if level.warm is None
                                  else level.warm.front)
                return level
            reason = (f"{reason}, but it did not close the gap to the bound within its "
                      "deadline; mobo instead")
        if choice.solver == "exact":
            try:
                res = exact_search(problem, goal, deadline=exact_deadline())
                res.reason = reason
                res.warm = Warm(problem, choice)
                return res
            except ExactBudgetExceeded as exc:
                reason = f"{reason}, but {exc}; mobo instead"
        picked = SolverChoice("mobo", reason, None)      # a re-plan goes to mobo at once
        solver = "mobo"
    if solver == "exact":
        res = exact_search(problem, goal)
        res.reason = "asked for (--solver exact)"
        return res
    if solver == "random":
        res = _random(problem, goal, rule=rule, seed=seed, batch=32, callback=callback,
                      encoding=encoding or "raw")
        res.reason = "asked for (--solver random)"
        return res
    from ._mobo import run_mobo

    res = run_mobo(problem, goal, seed=seed, stop=rule, encoding=encoding or "structured",
                   callback=callback, progress=progress)
    res.reason = reason or "asked for (--solver mobo)"
    if picked is not None:
        res.warm = Warm(problem, picked)
    res = _polished(problem, goal, res)
    if problem.is_pair or max_evals is not None or not certificate:
        return res
    from ._certify import CERTIFY_BUDGET_S, certify

    return certify(problem, res, deadline=CpuDeadline.after(CERTIFY_BUDGET_S))


def _polished(problem: Problem, goal: Goal, res: SearchResult) -> SearchResult:
    """Min-cost ladders: the cheapest routings found get an exact deployment (`tuning._polish`).

    The candidates are the plans meeting the quality targets, admissible ones first, cheapest
    first; the polished plans are evaluated and added to the result, so `best` picks them
    only when they are cheaper.
    """
    if goal.mode != "min-cost" or problem.is_pair or goal.p95_s is None:
        return res
    from ._polish import polish_candidates
    from ._run import _concat_metrics, concat_plans

    m = res.metrics
    idx = np.flatnonzero(res.meets_quality())
    adm = res.admissible(problem)[idx]
    order = idx[np.lexsort((m.cost_per_hour[idx], ~adm))]
    extra = polish_candidates(problem, res.plans, order, goal.p95_s)
    if not extra:
        return res
    plans = concat_plans(extra)
    res.plans = concat_plans([res.plans, plans])
    res.metrics = _concat_metrics(res.metrics, evaluate_arrays(problem, plans, goal.p95_s))
    return res
