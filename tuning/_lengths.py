"""Choosing the length-class threshold: plan with each candidate, keep what pays.

A scenario with ``length_classes`` (`profiling.LengthClasses`) names candidate thresholds
(``auto``: quantiles of prompt + max_tokens, `profiling.length_thresholds`). `choose` plans the
scenario without classes and with each candidate (`tuning.planning_problem`
``threshold_tokens``), each through `tuning._headroom.hold` (so each plan is checked on fresh
traffic), and keeps the best plan that holds by the goal's own order: the cheapest for
min-cost, the most capacity for max-throughput, else the lowest P95 then cost. Without
classes wins ties: classes are kept only where they pay. A threshold that cannot be planned
(a class with too few requests to measure, a goal the split cannot meet) is skipped, with its
reason in the tries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.errors import BouteError

from ._headroom import Held
from ._problem import Problem
from ._run import Goal

__all__ = ["LengthChoice", "choose"]


@dataclass(frozen=True)
class LengthChoice:
    """The outcome of `choose`: the chosen threshold's problem and search, and every try."""

    problem: Problem
    held: Held
    tries: list[dict[str, object]]

    def summary(self) -> dict[str, object]:
        """The JSON block of plan outputs."""
        return {"chosen_threshold_tokens": self.problem.threshold_tokens, "tries": self.tries}


def _rank(goal: Goal, held: Held) -> tuple[float, ...]:
    p = held.plan
    if p is None or p.predicted is None:
        return (float("inf"),)
    pr = p.predicted
    key: tuple[float, ...]
    if goal.mode == "min-cost":
        key = (pr.cost_per_hour, pr.p95_s)
    elif goal.mode == "max-throughput":
        key = (-pr.capacity_rps, pr.cost_per_hour)
    else:
        key = (pr.p95_s, pr.cost_per_hour)
    return (0.0 if held.holds else 1.0, *key)


def choose(thresholds: Sequence[int], build: Callable[[int | None], Problem],
           plan: Callable[[Problem], Held], goal: Goal) -> LengthChoice:
    """Plan without classes and with each of `thresholds`; keep the best (module docstring).

    Args:
        thresholds: candidate thresholds, tokens.
        build: ``threshold or None -> Problem``.
        plan: ``problem -> Held`` (search + headroom).
        goal: the goal (its order ranks the plans).

    """
    best: tuple[tuple[float, ...], Problem, Held] | None = None
    tries: list[dict[str, object]] = []
    for tau in (None, *thresholds):
        try:
            problem = build(tau)
            held = plan(problem)
        except BouteError as exc:
            if tau is None:
                raise
            # A threshold whose classes cannot be measured or planned is skipped, not fatal.
            tries.append({"threshold_tokens": tau, "short_share": None, "cost_per_hour": None,
                          "p95_s": None, "holds": None, "error": str(exc)})
            continue
        rank = _rank(goal, held)
        p = held.plan
        tries.append({
            "threshold_tokens": tau,
            "short_share": (None if problem.class_share is None else
                            {w: float(problem.class_share[i, 0])
                             for i, w in enumerate(problem.workloads)}),
            "cost_per_hour": None if p is None or p.predicted is None else
            p.predicted.cost_per_hour,
            "p95_s": None if p is None or p.predicted is None else p.predicted.p95_s,
            "holds": held.holds if held.checks else None})
        if best is None or rank < best[0]:
            best = (rank, problem, held)
    assert best is not None
    return LengthChoice(best[1], best[2], tries)
