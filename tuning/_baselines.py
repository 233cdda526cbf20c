"""The paper's baselines, each solved exactly in its own restricted plan space.

* Stand-Alone-Homo: every query to the strong model, H100 GPUs only (the first GPU type of the
  scenario when it has no H100);
* Stand-Alone-Hetero: every query to the strong model, any GPUs;
* RouteLLM-uniform: routing as BOute, but every GPU type is split evenly between the models
  (each model gets the same number of GPUs of each type);
* BOute-Homo: joint routing + deployment search restricted to a single GPU type (the best one).

Giving each baseline its exact optimum (the knapsack DP of `tuning._exact` with an option
filter) makes the comparison as favorable to the baselines as it can be.
"""

from __future__ import annotations

from ._evaluator import PlanArrays, evaluate_arrays
from ._exact import TypeFilter, exact_min_cost
from ._problem import Problem

__all__ = ["BASELINES", "baseline_min_cost"]

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
