"""Searchers behind one interface: `search(problem, Goal, solver=...)` -> `SearchResult`.

* ``mobo``: BoTorch multi-objective BO (qLogNEHVI with an outcome constraint) over the
  structured encoding (`tuning._encoding`), a Sobol start and batches of q proposals;
  ``encoding="raw"`` runs the same loop without the structure (the ablation);
* ``random``: uniform random integer plans (config and replica count per (model, GPU type));
* ``exact``: the knapsack DP (`tuning._exact`).

Goals (`Goal.mode`):

* ``pareto``: maximize quality, minimize planning P95, under the budget (outcomes:
  normalized quality, normalized log-latency, budget slack);
* ``min-cost``: cheapest plan with quality >= Q and P95 <= L, budget ignored (the paper's
  Table 3) (outcomes: -cost, log-latency; constraint P95 <= L);
* ``max-throughput``: largest capacity (every group P95 <= L, or the ceiling) with quality >= Q
  under the budget (outcomes: capacity, quality; constraint budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from boute.errors import BouteError

from ._encoding import RawEncoding, StructuredEncoding
from ._evaluator import BatchMetrics, PlanArrays, evaluate_arrays
from ._exact import exact_front, exact_max_throughput, exact_min_cost
from ._front import hypervolume, normalized, pareto_mask
from ._problem import Problem

__all__ = ["Goal", "SearchResult", "concat_plans", "search"]

FloatArray = npt.NDArray[np.float64]
Mode = Literal["pareto", "min-cost", "max-throughput"]
SOLVERS = ("mobo", "exact", "random")
MODES = ("pareto", "min-cost", "max-throughput")


class SearchError(BouteError, ValueError):
    """A search request cannot be satisfied as asked."""


@dataclass(frozen=True)
class Goal:
    """What to optimize: a mode with optional quality and P95 targets."""

    mode: Mode = "pareto"
    quality: float | None = None
    p95_s: float | None = None


@dataclass
class SearchResult:
    """Every plan a searcher evaluated, their metrics, the chosen plan and the effort."""

    solver: str
    goal: Goal
    plans: PlanArrays
    metrics: BatchMetrics
    seconds: float
    trace: list[tuple[int, float, float]] = field(default_factory=list)  # (evals, s, value)
    exact_runs: int = 0

    @property
    def evaluations(self) -> int:
        """Plans evaluated (DP runs for the exact solver)."""
        return self.exact_runs or len(self.plans)

    def admissible(self, problem: Problem) -> npt.NDArray[np.bool_]:
        """Plans meeting the goal's constraints."""
        m, g = self.metrics, self.goal
        ok = m.within_stock & m.unsaturated & (m.p95_s <= problem.ceiling_s)
        if g.mode != "min-cost":
            ok &= m.within_budget
        if g.quality is not None:
            ok &= m.quality >= g.quality - 1e-9
        if g.p95_s is not None and g.mode != "max-throughput":
            ok &= m.p95_s <= g.p95_s + 1e-9
        return np.asarray(ok)

    def front_mask(self, problem: Problem) -> npt.NDArray[np.bool_]:
        """Admissible plans on the (quality, P95) Pareto front (budget always applies)."""
        ok = self.metrics.within_stock & self.metrics.unsaturated & self.metrics.within_budget
        ok &= self.metrics.p95_s <= problem.ceiling_s
        mask = np.zeros(len(ok), dtype=bool)
        idx = np.flatnonzero(ok)
        mask[idx[pareto_mask(self.metrics.p95_s[idx], self.metrics.quality[idx])]] = True
        return mask

    def hypervolume(self, problem: Problem) -> float:
        """Hypervolume of the front (normalized objectives)."""
        f = self.front_mask(problem)
        return hypervolume(problem, self.metrics.p95_s[f], self.metrics.quality[f])

    def best(self, problem: Problem) -> int | None:
        """Index of the chosen plan, or None when no plan meets the goal."""
        ok = np.flatnonzero(self.admissible(problem))
        if len(ok) == 0:
            return None
        m, mode = self.metrics, self.goal.mode
        if mode == "min-cost":
            key = np.lexsort((m.p95_s[ok], m.cost_per_hour[ok]))
        elif mode == "max-throughput":
            key = np.lexsort((m.cost_per_hour[ok], -m.capacity_rps[ok]))
        elif self.goal.quality is not None:
            key = np.lexsort((m.cost_per_hour[ok], m.p95_s[ok]))
        elif self.goal.p95_s is not None:
            key = np.lexsort((m.cost_per_hour[ok], -m.quality[ok]))
        else:   # the knee: best sum of normalized objectives
            y = normalized(problem, m.p95_s[ok], m.quality[ok]).sum(axis=1)
            key = np.lexsort((m.cost_per_hour[ok], -y))
        return int(ok[key[0]])


def concat_plans(parts: list[PlanArrays]) -> PlanArrays:
    """Stack batches (slot counts must match)."""
    return PlanArrays(np.concatenate([p.strong_share for p in parts]),
                      np.concatenate([p.config for p in parts]),
                      np.concatenate([p.replicas for p in parts]))


def _s_lo(problem: Problem, goal: Goal) -> float:
    return 0.0 if goal.quality is None else problem.quality.min_share_for(goal.quality)


def _outcomes(problem: Problem, goal: Goal, m: BatchMetrics) -> FloatArray:
    """(N, 3): two objectives to maximize and a constraint slack (feasible when >= 0)."""
    y = normalized(problem, m.p95_s, m.quality)
    stock_pen = np.where(m.within_stock & m.unsaturated, 0.0, -1.0)
    if goal.mode == "pareto":
        slack = (problem.budget - m.cost_per_hour) / problem.budget
        return np.stack([y[:, 0], y[:, 1], np.maximum(slack + stock_pen, -2.0)], axis=1)
    if goal.mode == "min-cost":
        ref = float((problem.stock * problem.gpu_price).sum())
        level = goal.p95_s if goal.p95_s is not None else problem.ceiling_s
        with np.errstate(invalid="ignore"):
            slack = np.clip((level - m.p95_s) / level, -2.0, 1.0)
        return np.stack([1.0 - m.cost_per_hour / ref, y[:, 1], slack + stock_pen], axis=1)
    slack = (problem.budget - m.cost_per_hour) / problem.budget
    return np.stack([m.capacity_rps / (4 * problem.rate_rps), y[:, 0],
                     np.maximum(slack + stock_pen, -2.0)], axis=1)


def _progress_value(problem: Problem, result: SearchResult) -> float:
    """Pareto: hypervolume; min-cost: -cost of the best; max-throughput: best capacity."""
    if result.goal.mode == "pareto":
        return result.hypervolume(problem)
    b = result.best(problem)
    if b is None:
        return -np.inf
    if result.goal.mode == "min-cost":
        return -float(result.metrics.cost_per_hour[b])
    return float(result.metrics.capacity_rps[b])


def _concat_metrics(a: BatchMetrics, b: BatchMetrics) -> BatchMetrics:
    return BatchMetrics(**{k: np.concatenate([getattr(a, k), getattr(b, k)])
                           for k in BatchMetrics.__dataclass_fields__})


Callback = Callable[[int, float, float], bool]   # (evaluations, seconds, value) -> stop?


class _Run:
    """Bookkeeping shared by the iterative searchers."""

    def __init__(self, problem: Problem, goal: Goal, solver: str, callback: Callback | None):
        self.problem, self.goal, self.solver, self.callback = problem, goal, solver, callback
        self.start = time.perf_counter()
        self.result: SearchResult | None = None
        self.stop = False

    def add(self, plans: PlanArrays) -> BatchMetrics:
        m = evaluate_arrays(self.problem, plans, self.goal.p95_s)
        if self.result is None:
            self.result = SearchResult(self.solver, self.goal, plans, m, 0.0)
        else:
            self.result.plans = concat_plans([self.result.plans, plans])
            self.result.metrics = _concat_metrics(self.result.metrics, m)
        elapsed = time.perf_counter() - self.start
        value = _progress_value(self.problem, self.result)
        self.result.trace.append((len(self.result.plans), elapsed, value))
        self.result.seconds = elapsed
        if self.callback is not None and self.callback(len(self.result.plans), elapsed, value):
            self.stop = True
        return m

    def done(self) -> SearchResult:
        assert self.result is not None
        self.result.seconds = time.perf_counter() - self.start
        return self.result


def _random(problem: Problem, goal: Goal, *, max_evals: int, seed: int, batch: int,
            callback: Callback | None) -> SearchResult:
    enc = RawEncoding(problem, _s_lo(problem, goal))
    rng = np.random.default_rng(seed)
    run = _Run(problem, goal, "random", callback)
    while not run.stop and (run.result is None or len(run.result.plans) < max_evals):
        run.add(enc.decode(rng.random((batch, enc.dim))))
    return run.done()


def _exact(problem: Problem, goal: Goal) -> SearchResult:
    start = time.perf_counter()
    if goal.mode == "pareto":
        front = exact_front(problem)
        plans, runs = front.plans, front.dp_runs
    elif goal.mode == "min-cost":
        if goal.quality is None or goal.p95_s is None:
            raise SearchError("min-cost needs --quality and --p95")
        found = exact_min_cost(problem, goal.quality, goal.p95_s)
        plans, runs = found if found is not None else _empty(problem), 1
    else:
        found = exact_max_throughput(problem, goal.quality if goal.quality is not None
                                     else float(problem.quality(0.0)), goal.p95_s)
        plans, runs = found if found is not None else _empty(problem), 1
    m = evaluate_arrays(problem, plans, goal.p95_s)
    res = SearchResult("exact", goal, plans, m, time.perf_counter() - start, exact_runs=runs)
    res.trace.append((runs, res.seconds, _progress_value(problem, res)))
    return res


def _empty(problem: Problem) -> PlanArrays:
    n = 2 * len(problem.gpu_types)
    return PlanArrays(np.zeros(1), np.full((1, n), -1, dtype=np.int64),
                      np.zeros((1, n), dtype=np.int64))


def search(
    problem: Problem,
    goal: Goal,
    *,
    solver: str = "mobo",
    seed: int = 0,
    max_evals: int = 256,
    encoding: str = "structured",
    callback: Callback | None = None,
    progress: bool = False,
) -> SearchResult:
    """Run one searcher on a problem (see the module docstring).

    Raises:
        SearchError: unknown solver or mode, or a goal missing the targets it needs.

    """
    if solver not in SOLVERS:
        raise SearchError(f"solver={solver!r} is unknown; use one of {', '.join(SOLVERS)}")
    if goal.mode not in MODES:
        raise SearchError(f"objective={goal.mode!r} is unknown; use one of {', '.join(MODES)}")
    if goal.mode == "min-cost" and (goal.quality is None or goal.p95_s is None):
        raise SearchError("objective=min-cost needs both --quality and --p95")
    if goal.quality is not None:
        problem.quality.min_share_for(goal.quality)       # raises if unreachable
    if solver == "exact":
        return _exact(problem, goal)
    if solver == "random":
        return _random(problem, goal, max_evals=max_evals, seed=seed, batch=32,
                       callback=callback)
    from ._mobo import run_mobo

    return run_mobo(problem, goal, seed=seed, max_evals=max_evals, encoding=encoding,
                    callback=callback, progress=progress)


def _max_scale(problem: Problem, level_s: float) -> float:
    """Upper bound of the load scale of max-throughput.

    Every GPU in stock serving at the best per-GPU capacity any config reaches at the level,
    over the scenario's rate.
    """
    per_gpu = problem.cap_at(np.array([level_s]))[:, 0] / problem.cfg_gpus
    best = np.zeros(len(problem.gpu_types))
    np.maximum.at(best, problem.cfg_type, per_gpu)
    return float((best * problem.stock).sum() / problem.rate_rps)


def make_encoding(problem: Problem, goal: Goal, encoding: str = "structured"
                  ) -> StructuredEncoding | RawEncoding:
    """The encoding a goal is searched in."""
    s_lo = _s_lo(problem, goal)
    if encoding == "raw":
        return RawEncoding(problem, s_lo)
    if encoding != "structured":
        raise SearchError(f"encoding={encoding!r} is unknown; use structured or raw")
    if goal.mode == "min-cost":
        return StructuredEncoding(problem, s_lo, x_hi_s=goal.p95_s, x_band=0.7)
    if goal.mode == "max-throughput":
        level = goal.p95_s if goal.p95_s is not None else problem.ceiling_s
        return StructuredEncoding(problem, s_lo, x_hi_s=level,
                                  scale_range=(0.25, max(1.0, _max_scale(problem, level))),
                                  budget_per_hour=problem.budget)
    enc = StructuredEncoding(problem, s_lo, x_hi_s=goal.p95_s, budget_per_hour=problem.budget)
    return replace(enc, x_hi_s=enc.top_level_s())
