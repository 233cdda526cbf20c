"""What every searcher shares: goals, the stopping rule, results and the evaluation loop.

`Goal` (`tuning._goal`) says what to optimize, `StopRule` when an iterative searcher stops,
`SearchResult` what it found; `_Run` evaluates batches of plans, keeps the best so far and
applies the rule; `make_encoding` is the search space of a goal (`tuning._encoding`).
`tuning._search` dispatches to the searchers (`tuning._mobo`, random, `tuning._exact`), which
build on this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._encoding import RawEncoding, StructuredEncoding
from ._evaluator import BatchMetrics, PlanArrays, evaluate_arrays, ladder_arrays
from ._front import hypervolume, normalized, pareto_mask
from ._goal import MODES, Goal, SearchError
from ._ladder import LadderEncoding
from ._problem import Problem

if TYPE_CHECKING:
    from ._certificate import Certificate, FrontBound

__all__ = [
    "FALLBACK_PATIENCE", "MODES", "SOLVERS", "Callback", "Goal", "SearchError", "SearchResult",
    "SolverChoice", "StopRule", "Warm",
    "concat_plans", "floors", "make_encoding", "plan_keys",
]

FloatArray = npt.NDArray[np.float64]
SOLVERS = ("auto", "mobo", "exact", "random")


FALLBACK_PATIENCE = 20
"""The patience of goals other than ``pareto`` under the default rule (`StopRule`): the
paper's "stable for 20 steps" (their progress value is a cost or a capacity, not a
hypervolume)."""


@dataclass(frozen=True)
class StopRule:
    """When an iterative searcher stops: the first of these.

    The acquisition rule (the default; `patience` None, `ehvi_fraction` set, goal ``pareto``):
    after BO step t, with

        EHVI_t = max_{x in C_t} exp(a(x))

    the best acquisition value of the step, where a(x) is qLogNEHVI of the single candidate x
    (the natural log of its expected hypervolume improvement, so exp(a) is back in the
    normalized (quality, log-latency) space of `SearchResult.hypervolume`, reference point
    the origin; the budget constraint weighs it by the probability of feasibility) and C_t
    the step's candidates that decode to a plan not evaluated yet (a known plan improves
    nothing: the evaluator is deterministic), and HV_t the hypervolume of the front observed
    when the step was proposed (EHVI_t = 0 when C_t is empty), the search stops once

        c_t * EHVI_t < ehvi_fraction * HV_t     for `ehvi_steps` consecutive BO steps,

    where c_t = min(1, sum R_s / sum EHVI_s) over the last `ehvi_window` BO steps s <= t, and
    R_s = HV_{s+1} - HV_s is the improvement step s actually brought: the GP's expectation
    discounted by how much of its recent expectations came true (c_t = 1 for a GP whose
    expectations come true; no stop before `ehvi_window` BO steps). The discount is needed:
    the raw EHVI_t stayed at 1e-3..3e-3 of HV on paper-gsm8k and 2e-2..3e-1 on ladder-gsm8k
    and mixed-gsm8k-mtbench through 30 BO steps while the steps added 1e-5..1e-3 of HV
    (the GP smooths over the decode's steps and expects gains where the plans change by
    little), so an undiscounted rule at 1e-3 never fired there.

    The maximum is over a discrete candidate set (fresh Sobol points plus perturbations of
    the front, `tuning._mobo.MoboState._candidates`), not the whole cube, and the
    expectation is the GP's: the rule says the model, corrected by its own recent record,
    sees nothing worth a `ehvi_fraction` share of the front, not that the front is optimal.
    Goals other than ``pareto`` use ``patience = FALLBACK_PATIENCE`` under this rule. Random
    search has no acquisition: only `max_evals` and `time_limit_s` stop it.

    Attributes:
        max_evals: plans evaluated.
        patience: batches (BO steps) after the start without an improvement of the progress
            value (hypervolume; -cost; capacity) by more than `rel_tol` of it: "stable for
            `patience` consecutive iterations", the paper's criterion. Given, it replaces
            the acquisition rule. None (the default): the acquisition rule.
        time_limit_s: wall-clock seconds of the search (checked after each batch), whatever
            else is set. None: no limit.
        rel_tol: relative improvement that counts (`patience`).
        ehvi_fraction: the acquisition rule's share of the current hypervolume. None: no
            acquisition rule (nor the fallback patience of other goals).
        ehvi_steps: consecutive BO steps below it.
        ehvi_window: BO steps of the discount c_t.

    """

    max_evals: int = 4096
    patience: int | None = None
    time_limit_s: float | None = 60.0
    rel_tol: float = 1e-4
    ehvi_fraction: float | None = 1e-3
    ehvi_steps: int = 3
    ehvi_window: int = 5

    def __post_init__(self) -> None:
        if self.ehvi_fraction is not None and not self.ehvi_fraction > 0:
            raise SearchError(f"StopRule: {self.ehvi_fraction=} must be > 0 (None: no "
                              "acquisition rule)")
        if self.ehvi_steps < 1 or self.ehvi_window < 1:
            raise SearchError(f"StopRule: {self.ehvi_steps=} and {self.ehvi_window=} must be "
                              ">= 1 BO step")

    @classmethod
    def fixed(cls, max_evals: int) -> StopRule:
        """Exactly `max_evals` evaluations (the benchmarks' equal-effort comparisons)."""
        return cls(max_evals=max_evals, patience=None, time_limit_s=None, ehvi_fraction=None)

    def effective_patience(self, mode: str) -> int | None:
        """The patience that applies to a goal of `mode` (see the class docstring)."""
        if self.patience is not None:
            return self.patience
        if self.ehvi_fraction is not None and mode != "pareto":
            return FALLBACK_PATIENCE
        return None

    def uses_acquisition(self, mode: str) -> bool:
        """Whether the acquisition rule applies to a goal of `mode`."""
        return self.patience is None and self.ehvi_fraction is not None and mode == "pareto"


@dataclass(frozen=True)
class SolverChoice:
    """The solver `auto` picked, the reason in words, and the exact DP's estimated seconds.

    (`tuning._auto.choose_solver` makes it; here so that `Warm` can carry one.)
    """

    solver: str
    reason: str
    estimate_s: float | None


@dataclass(frozen=True)
class Warm:
    """What a search leaves for a re-plan of its problem with lower capacities.

    The headroom check (`tuning._headroom.hold`) searches again after derating configs:
    every capacity of the derated problem is at most the searched one's, all else equal, so
    its plan space is a subset. A re-plan given this (`tuning.search`, ``warm=``) keeps
    `auto`'s solver choice (no second probe) and the level program's solved levels whose
    plans are still feasible and still reach their bound there (`tuning._certify.front_bound`).

    Attributes:
        problem: the problem searched.
        choice: `auto`'s choice on it (None: not `auto`).
        front: the level program's front on it (None: another solver ran).

    """

    problem: Problem
    choice: SolverChoice | None = None
    front: FrontBound | None = None

    def covers(self, problem: Problem) -> bool:
        """`problem` is `self.problem` with capacities at most its own, all else the same."""
        old = self.problem
        if problem is old:
            return True
        same = (problem.scenario is old.scenario and problem.models == old.models
                and problem.gpu_types == old.gpu_types and problem.workloads == old.workloads
                and problem.classes == old.classes
                and problem.threshold_tokens == old.threshold_tokens
                and problem.caps.shape == old.caps.shape)
        if not same:
            return False
        arrays = ("stock", "gpu_price", "cfg_model", "cfg_type", "cfg_tp", "cfg_pp",
                  "cfg_gpus", "cfg_price", "levels_s", "workload_rates")
        return (all(np.array_equal(getattr(problem, a), getattr(old, a)) for a in arrays)
                and bool(np.all(problem.caps <= old.caps)))


@dataclass
class SearchResult:
    """Every plan a searcher evaluated, their metrics, the chosen plan and the effort.

    ``reason`` says why this solver ran (``auto``'s choice) and ``stopped`` why it ended;
    ``step_seconds`` holds one ``{"fit_s", "acq_s", "decode_s"}`` per BO step,
    ``ehvi_ratio`` one c_t * EHVI_t / HV_t per BO step (`StopRule`; inf while HV_t is 0),
    and
    ``startup_s`` the seconds spent starting or connecting to Ray before the search's clock
    started (Ray Tune runs only), and ``certificate`` how far from optimal the answer can be
    (ladders, several workloads and length classes; `tuning._certify`), and ``warm`` what a
    re-plan of its problem with lower capacities may reuse (`Warm`; None: nothing).
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
    ehvi_ratio: list[float] = field(default_factory=list)
    startup_s: float | None = None
    certificate: Certificate | None = None
    warm: Warm | None = None

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
        ok &= self.meets_quality()
        if g.p95_s is not None and g.mode != "max-throughput":
            ok &= m.p95_s <= g.p95_s + 1e-9
        return np.asarray(ok)

    def meets_quality(self) -> npt.NDArray[np.bool_]:
        """Plans meeting the goal's quality floor(s) (all of them when it has none)."""
        m, g = self.metrics, self.goal
        ok = np.ones(len(m.quality), dtype=bool)
        if g.quality is not None:
            ok &= m.quality >= g.quality - 1e-9
        if g.qualities is not None:
            ok &= (m.workload_quality >= np.asarray(g.qualities) - 1e-9).all(axis=1)
        return ok

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
    shares = [p.shares for p in parts]
    return PlanArrays(np.concatenate([p.strong_share for p in parts]),
                      np.concatenate([p.config for p in parts]),
                      np.concatenate([p.replicas for p in parts]),
                      None if any(s is None for s in shares) else np.concatenate(
                          [s for s in shares if s is not None]))


def plan_keys(plans: PlanArrays) -> list[bytes]:
    """One hashable key per plan: equal keys, equal plans (so equal metrics).

    The routing (shares rounded to 12 decimals: decoding is deterministic, the rounding only
    absorbs float noise), then the config and replica count of every slot.
    """
    routing = np.round(plans.strong_share[:, None] if plans.shares is None
                       else plans.shares.reshape(len(plans), -1), 12)
    rows = np.concatenate([routing, plans.config.astype(np.float64),
                           plans.replicas.astype(np.float64)], axis=1)
    return [r.tobytes() for r in np.ascontiguousarray(rows)]


def floors(problem: Problem, goal: Goal) -> tuple[float | None, ...]:
    """Each workload's quality floor under `goal` (None: no floor).

    Raises:
        SearchError: a floor above what the workload reaches with every query on the largest
            model.

    """
    n_w = len(problem.workloads)
    if goal.qualities is not None:
        if len(goal.qualities) != n_w:
            raise SearchError(f"{len(goal.qualities)} quality targets for {n_w} workloads "
                              f"{list(problem.workloads)}; give one per workload")
        out: tuple[float | None, ...] = tuple(goal.qualities)
    elif goal.quality is not None and n_w == 1:
        out = (goal.quality,)
    elif goal.quality is not None:
        # The summary quality (lowest normalized) >= q: each workload's normalized >= q.
        out = tuple(c.lowest + goal.quality * (c.highest - c.lowest) for c in problem.cascades)
    else:
        out = tuple(None for _ in problem.workloads)
    for w, (q, c) in enumerate(zip(out, problem.cascades, strict=True)):
        if q is not None and q > c.highest + 1e-12:
            raise SearchError(f"quality={q:g} for workload {problem.workloads[w]!r} is above "
                              f"what {c.name!r} reaches ({c.highest:g} with every query on "
                              f"{problem.models[-1]})")
    return out


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

    Batches count toward ``patience`` once `warmup_evals` plans (the Sobol start) are in; the
    acquisition rule counts the batches that come with an expected hypervolume improvement
    (`add`'s ``ehvi``: the BO steps).
    """

    def __init__(self, problem: Problem, goal: Goal, solver: str, callback: Callback | None,
                 rule: StopRule | None = None, warmup_evals: int = 0):
        self.problem, self.goal, self.solver, self.callback = problem, goal, solver, callback
        self.rule = rule or StopRule()
        self.patience = self.rule.effective_patience(goal.mode)
        self.warmup_evals = warmup_evals
        self.start = time.perf_counter()
        self.result: SearchResult | None = None
        self.stop = False
        self.stopped = ""
        self.best = -np.inf
        self.stalled = 0
        self.low_ehvi = 0
        self.expected: list[float] = []      # EHVI_s of the BO steps so far
        self.realized: list[float] = []      # R_s

    def add(self, plans: PlanArrays, ehvi: float | None = None) -> BatchMetrics:
        """Evaluate a batch, record it, and apply the rule.

        Args:
            plans: the batch.
            ehvi: the step's best expected hypervolume improvement (EHVI_t of `StopRule`,
                not its log), or None for a batch no acquisition chose (Sobol, random).

        """
        hv_before = self.result.trace[-1][2] if self.result is not None else 0.0
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
        if ehvi is not None:
            self._acquisition(ehvi, hv_before, value)
        self._check(evals, elapsed, value)
        if self.callback is not None and self.callback(evals, elapsed, value):
            self.stop, self.stopped = True, self.stopped or "the caller's callback"
        return m

    def _acquisition(self, ehvi: float, hv: float, hv_after: float) -> None:
        """Count BO steps with c_t * EHVI_t < ehvi_fraction * HV_t (`StopRule`)."""
        assert self.result is not None
        rule = self.rule
        self.expected.append(ehvi)
        self.realized.append(max(0.0, hv_after - hv) if np.isfinite(hv_after) else 0.0)
        k = rule.ehvi_window
        exp_sum = sum(self.expected[-k:])
        c = min(1.0, sum(self.realized[-k:]) / exp_sum) if exp_sum > 0 else 1.0
        ratio = c * ehvi / hv if hv > 0 else float("inf")
        self.result.ehvi_ratio.append(ratio)
        low = (rule.ehvi_fraction is not None and ratio < rule.ehvi_fraction
               and len(self.expected) >= k)
        self.low_ehvi = self.low_ehvi + 1 if low else 0

    def _check(self, evals: int, elapsed: float, value: float) -> None:
        rule = self.rule
        improved = value > self.best + rule.rel_tol * max(abs(self.best), 1e-12)
        if np.isfinite(value) and (improved or not np.isfinite(self.best)):
            self.best = max(self.best, value)
        if evals > self.warmup_evals:
            self.stalled = 0 if improved else self.stalled + 1
        if evals >= rule.max_evals:
            self.stop, self.stopped = True, f"{evals} evaluations (the limit)"
        elif self.patience is not None and self.stalled >= self.patience:
            self.stop, self.stopped = True, (f"front stable for {self.stalled} steps "
                                             f"(patience {self.patience})")
        elif (rule.uses_acquisition(self.goal.mode) and self.low_ehvi >= rule.ehvi_steps
              and self.result is not None):
            last = self.result.ehvi_ratio[-1]
            self.stop, self.stopped = True, (
                f"expected hypervolume improvement (discounted by the share that came true) "
                f"below {rule.ehvi_fraction:g} of the hypervolume for {self.low_ehvi} BO "
                f"steps (last {last:.1e})")
        elif rule.time_limit_s is not None and elapsed >= rule.time_limit_s:
            self.stop, self.stopped = True, f"time limit {rule.time_limit_s:g} s"

    def done(self) -> SearchResult:
        assert self.result is not None
        self.result.seconds = time.perf_counter() - self.start
        self.result.stopped = self.stopped or "evaluation budget spent"
        return self.result


def _empty(problem: Problem) -> PlanArrays:
    n = problem.num_slots
    cfg, reps = np.full((1, n), -1, dtype=np.int64), np.zeros((1, n), dtype=np.int64)
    if problem.is_pair:
        return PlanArrays(np.zeros(1), cfg, reps)
    shares = np.zeros((1, len(problem.workloads), problem.num_models))
    shares[:, :, 0] = 1.0
    return ladder_arrays(problem, shares, cfg, reps)


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
                  ) -> StructuredEncoding | RawEncoding | LadderEncoding:
    """The encoding a goal is searched in (`LadderEncoding` for ladders)."""
    if not problem.is_pair:
        if encoding != "structured":
            raise SearchError(f"encoding={encoding!r}: ladders (more than two models or "
                              "workloads) are searched in the structured encoding only")
        return _ladder_encoding(problem, goal)
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


def _ladder_encoding(problem: Problem, goal: Goal) -> LadderEncoding:
    """`make_encoding` for a ladder: the same levels and bands as the pair's."""
    lo = floors(problem, goal)
    if goal.mode == "min-cost":
        return LadderEncoding(problem, lo, x_hi_s=goal.p95_s, x_band=0.7)
    if goal.mode == "max-throughput":
        level = goal.p95_s if goal.p95_s is not None else problem.ceiling_s
        return LadderEncoding(problem, lo, x_hi_s=level,
                              scale_range=(0.25, max(1.0, _max_scale(problem, level))),
                              budget_per_hour=problem.budget)
    return LadderEncoding(problem, lo, x_hi_s=goal.p95_s, budget_per_hour=problem.budget)
