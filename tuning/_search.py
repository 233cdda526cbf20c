"""Searchers behind one interface: `search(problem, Goal, solver=...)` -> `SearchResult`.

* ``auto`` (the default): ``exact`` when its DP is estimated to certify the answer within
  `tuning._auto.EXACT_BUDGET_S`, else ``mobo`` (`tuning._auto.choose_solver`); the result says
  which ran and why (`SearchResult.reason`);
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

__all__ = ["Goal", "SearchResult", "StopRule", "concat_plans", "search"]

FloatArray = npt.NDArray[np.float64]
Mode = Literal["pareto", "min-cost", "max-throughput"]
SOLVERS = ("auto", "mobo", "exact", "random")
MODES = ("pareto", "min-cost", "max-throughput")


class SearchError(BouteError, ValueError):
    """A search request cannot be satisfied as asked."""


@dataclass(frozen=True)
class Goal:
    """What to optimize: a mode with optional quality and P95 targets."""

    mode: Mode = "pareto"
    quality: float | None = None
    p95_s: float | None = None


@dataclass(frozen=True)
class StopRule:
    """When an iterative searcher stops: the first of these.

    Attributes:
        max_evals: plans evaluated.
        patience: batches (BO steps) after the start without an improvement of the progress
            value (hypervolume; -cost; capacity) by more than `rel_tol` of it: "stable for
            `patience` consecutive iterations", the paper's criterion. None: no such rule.
        time_limit_s: wall-clock seconds of the search (checked after each batch). None: no
            limit.
        rel_tol: relative improvement that counts.

    """

    max_evals: int = 4096
    patience: int | None = 20
    time_limit_s: float | None = 60.0
    rel_tol: float = 1e-4

    @classmethod
    def fixed(cls, max_evals: int) -> StopRule:
        """Exactly `max_evals` evaluations (the benchmarks' equal-effort comparisons)."""
        return cls(max_evals=max_evals, patience=None, time_limit_s=None)


@dataclass
class SearchResult:
    """Every plan a searcher evaluated, their metrics, the chosen plan and the effort.

    ``reason`` says why this solver ran (``auto``'s choice) and ``stopped`` why it ended;
    ``step_seconds`` holds one ``{"fit_s", "acq_s", "decode_s"}`` per BO step.
    """

    solver: str
    goal: Goal
    plans: PlanArrays
    metrics: BatchMetrics
    seconds: float
    trace: list[tuple[int, float, float]] = field(default_factory=list)  # (evals, s, value)
    exact_runs: int = 0
    reason: str = ""
    stopped: str = ""
    step_seconds: list[dict[str, float]] = field(default_factory=list)

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
    """Bookkeeping shared by the iterative searchers, and their `StopRule`.

    Batches count toward ``patience`` once `warmup_evals` plans (the Sobol start) are in.
    """

    def __init__(self, problem: Problem, goal: Goal, solver: str, callback: Callback | None,
                 rule: StopRule | None = None, warmup_evals: int = 0):
        self.problem, self.goal, self.solver, self.callback = problem, goal, solver, callback
        self.rule = rule or StopRule()
        self.warmup_evals = warmup_evals
        self.start = time.perf_counter()
        self.result: SearchResult | None = None
        self.stop = False
        self.stopped = ""
        self.best = -np.inf
        self.stalled = 0

    def add(self, plans: PlanArrays) -> BatchMetrics:
        m = evaluate_arrays(self.problem, plans, self.goal.p95_s)
        if self.result is None:
            self.result = SearchResult(self.solver, self.goal, plans, m, 0.0)
        else:
            self.result.plans = concat_plans([self.result.plans, plans])
            self.result.metrics = _concat_metrics(self.result.metrics, m)
        elapsed = time.perf_counter() - self.start
        value = _progress_value(self.problem, self.result)
        evals = len(self.result.plans)
        self.result.trace.append((evals, elapsed, value))
        self.result.seconds = elapsed
        self._check(evals, elapsed, value)
        if self.callback is not None and self.callback(evals, elapsed, value):
            self.stop, self.stopped = True, self.stopped or "the caller's callback"
        return m

    def _check(self, evals: int, elapsed: float, value: float) -> None:
        rule = self.rule
        improved = value > self.best + rule.rel_tol * max(abs(self.best), 1e-12)
        if np.isfinite(value) and (improved or not np.isfinite(self.best)):
            self.best = max(self.best, value)
        if evals > self.warmup_evals:
            self.stalled = 0 if improved else self.stalled + 1
        if evals >= rule.max_evals:
            self.stop, self.stopped = True, f"{evals} evaluations (the limit)"
        elif rule.patience is not None and self.stalled >= rule.patience:
            self.stop, self.stopped = True, (f"front stable for {self.stalled} steps "
                                             f"(patience {rule.patience})")
        elif rule.time_limit_s is not None and elapsed >= rule.time_limit_s:
            self.stop, self.stopped = True, f"time limit {rule.time_limit_s:g} s"

    def done(self) -> SearchResult:
        assert self.result is not None
        self.result.seconds = time.perf_counter() - self.start
        self.result.stopped = self.stopped or "evaluation budget spent"
        return self.result


def _random(problem: Problem, goal: Goal, *, rule: StopRule, seed: int, batch: int,
            callback: Callback | None, encoding: str = "raw") -> SearchResult:
    enc = make_encoding(problem, goal, encoding)
    rng = np.random.default_rng(seed)
    name = "random" if encoding == "raw" else f"random-{encoding}"
    run = _Run(problem, goal, name, callback, replace(rule, patience=None))
    while not run.stop:
        n = rule.max_evals - (len(run.result.plans) if run.result else 0)
        run.add(enc.decode(rng.random((min(batch, n), enc.dim))))
    return run.done()


def _exact(problem: Problem, goal: Goal, deadline: float | None = None) -> SearchResult:
    """The exact solver; past `deadline` (perf_counter) it raises `ExactBudgetExceeded`."""
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


def _empty(problem: Problem) -> PlanArrays:
    n = 2 * len(problem.gpu_types)
    return PlanArrays(np.zeros(1), np.full((1, n), -1, dtype=np.int64),
                      np.zeros((1, n), dtype=np.int64))


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
) -> SearchResult:
    """Run one searcher on a problem (see the module docstring).

    Args:
        problem: the planning problem.
        goal: what to optimize.
        solver: ``auto``, ``mobo``, ``exact`` or ``random``.
        seed: of the Sobol start / random draws.
        max_evals: shorthand for ``StopRule.fixed(max_evals)``: exactly that many plans.
        stop: when mobo / random stop (default `StopRule()`: stable for 20 steps, 60 s);
            ignored with `max_evals`.
        encoding: ``structured`` or ``raw``; default: structured for mobo, raw for random
            (uniform integer plans: every plan of the space reachable).
        callback: ``(evaluations, seconds, value) -> stop?`` after each batch.
        progress: draw a progress bar on stderr.

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
    rule = StopRule.fixed(max_evals) if max_evals is not None else (stop or StopRule())
    if rule.max_evals < 1:
        raise SearchError(f"max_evals={rule.max_evals} must be >= 1")
    reason = ""
    if solver == "auto":
        from ._auto import ExactBudgetExceeded, choose_solver, exact_deadline

        choice = choose_solver(problem, goal)
        reason = choice.reason
        if choice.solver == "exact":
            try:
                res = _exact(problem, goal, deadline=exact_deadline())
                res.reason = reason
                return res
            except ExactBudgetExceeded as exc:
                reason = f"{reason}, but {exc}; mobo instead"
        solver = "mobo"
    if solver == "exact":
        res = _exact(problem, goal)
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
    return res


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
