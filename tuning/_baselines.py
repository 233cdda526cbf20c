"""The paper's baselines, each solved exactly in its own restricted plan space.

* Stand-Alone-Homo: every query to the strong model, H100 GPUs only (the first GPU type of the
  scenario when it has no H100);
* Stand-Alone-Hetero: every query to the strong model, any GPUs;
* RouteLLM-uniform: routing as BOute, but every GPU type is split evenly between the models
  (each model gets the same number of GPUs of each type);
* BOute-Homo: joint routing + deployment search restricted to a single GPU type (the best one).

Giving each baseline its exact optimum (the knapsack DP of `tuning._exact` with an option
filter) makes the comparison as favorable to the baselines as it can be.

Ladders (K models, several workloads; `ladder_baseline_min_cost`) have no exact solver; there:

* Stand-Alone-Homo / -Hetero: every query of every workload to the *largest* model, on the
  H100s only / on any GPUs: its one free coordinate, the latency level, is swept on a grid of
  `LEVEL_GRID` points of the min-cost band (`tuning._ladder.LadderEncoding` with fixed tails);
* BOute-Homo: the ladder's search (random points of its encoding, `HOMO_EVALS` per type) with
  the stock of one GPU type at a time, the cheapest;
* RouteLLM-uniform is not defined for K models (an even split of each GPU type among the
  models is not a plan space the ladder's decoder can express): reported as not applicable.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ._evaluator import PlanArrays, evaluate_arrays
from ._exact import TypeFilter, exact_min_cost
from ._problem import Problem

__all__ = ["BASELINES", "LADDER_NOT_APPLICABLE", "baseline_min_cost", "ladder_baseline_min_cost"]

LEVEL_GRID = 64
HOMO_EVALS = 512
LADDER_NOT_APPLICABLE = ("RouteLLM-uniform",)

BASELINES = ("Stand-Alone-Homo", "Stand-Alone-Hetero", "RouteLLM-uniform", "BOute-Homo")


def _homo_type(problem: Problem) -> int:
    return problem.gpu_types.index("H100") if "H100" in problem.gpu_types else 0


def _only_type(home: int) -> TypeFilter:
    def allow(t: int, kw: int, ks: int) -> bool:
        return t == home or kw + ks == 0
    return allow


def baseline_min_cost(problem: Problem, name: str, quality: float, p95_s: float
                      ) -> PlanArrays | None:
    """The cheapest plan of baseline `name` meeting (quality, P95), or None."""
    if name == "Stand-Alone-Homo":
        home = _homo_type(problem)
        return exact_min_cost(problem, quality, p95_s, strong_only=True,
                              allow=lambda t, kw, ks: kw == 0 and (t == home or ks == 0))
    if name == "Stand-Alone-Hetero":
        return exact_min_cost(problem, quality, p95_s, strong_only=True,
                              allow=lambda t, kw, ks: kw == 0)
    if name == "RouteLLM-uniform":
        return exact_min_cost(problem, quality, p95_s, allow=lambda t, kw, ks: kw == ks)
    if name == "BOute-Homo":
        best: PlanArrays | None = None
        best_cost = float("inf")
        for home in range(len(problem.gpu_types)):
            found = exact_min_cost(problem, quality, p95_s,
                                   allow=_only_type(home))
            if found is not None:
                cost = float(evaluate_arrays(problem, found).cost_per_hour[0])
                if cost < best_cost:
                    best, best_cost = found, cost
        return best
    raise ValueError(f"baseline {name!r} is unknown; use one of {', '.join(BASELINES)}")


def _one_type(problem: Problem, home: int) -> Problem:
    """`problem` with the stock of GPU type `home` only."""
    stock = np.where(np.arange(len(problem.gpu_types)) == home, problem.stock, 0)
    return replace(problem, stock=stock)


def ladder_baseline_min_cost(problem: Problem, name: str, qualities: tuple[float, ...],
                             p95_s: float, *, seed: int = 0) -> PlanArrays | None:
    """The cheapest plan of baseline `name` on a ladder problem (module docstring), or None.

    None also for a baseline that is not applicable (`LADDER_NOT_APPLICABLE`).
    """
    from ._ladder import LadderEncoding
    from ._run import Goal, concat_plans
    from ._search import search

    goal = Goal("min-cost", None, p95_s, qualities)
    if name in LADDER_NOT_APPLICABLE:
        return None
    if name in ("Stand-Alone-Homo", "Stand-Alone-Hetero"):
        pr = _one_type(problem, _homo_type(problem)) if name.endswith("Homo") else problem
        top = np.ones((len(pr.workloads), pr.num_models - 1))
        enc = LadderEncoding(pr, x_hi_s=p95_s, x_band=0.7, fixed_tails=top)
        plans = enc.decode(np.linspace(0.0, 1.0, LEVEL_GRID)[:, None])
        return _cheapest(pr, goal, plans)
    if name == "BOute-Homo":
        found = []
        for home in range(len(problem.gpu_types)):
            pr = _one_type(problem, home)
            res = search(pr, goal, solver="random", encoding="structured",
                         max_evals=HOMO_EVALS, seed=seed)
            b = res.best(pr)
            if b is not None:
                found.append(_row(res.plans, b))
        return _cheapest(problem, goal, concat_plans(found)) if found else None
    raise ValueError(f"baseline {name!r} is unknown; use one of {', '.join(BASELINES)}")


def _row(plans: PlanArrays, b: int) -> PlanArrays:
    return PlanArrays(plans.strong_share[b:b + 1], plans.config[b:b + 1],
                      plans.replicas[b:b + 1],
                      None if plans.shares is None else plans.shares[b:b + 1])


def _cheapest(problem: Problem, goal: object, plans: PlanArrays) -> PlanArrays | None:
    from ._run import Goal, SearchResult

    assert isinstance(goal, Goal)
    m = evaluate_arrays(problem, plans, goal.p95_s)
    b = SearchResult("baseline", goal, plans, m, 0.0).best(problem)
    return None if b is None else _row(plans, b)
