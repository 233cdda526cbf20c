"""The paper's experiments as numbers: main results, Tables 1 and 3, characterization.

Computed at a fixed budget, with the paper's own figures to set beside them (`PAPER`). Pure:
no printing, no plots (`boute reproduce` renders them).

Notation (see `tuning._problem`): a *plan space* S is BOute's space restricted by a filter on
the (GPU type, weak GPUs, strong GPUs) options of the exact DP (`tuning._exact.TypeFilter`),
optionally with every query on the strong model (``s = 1``). The systems compared are the
paper's baselines (`tuning._baselines`) and BOute:

* Stand-Alone-Homo: s = 1, H100 only; Stand-Alone-Hetero: s = 1, any GPUs;
* RouteLLM-uniform: each GPU type split evenly between the models;
* BOute-Homo: one GPU type (the best one; each type is solved, the best kept);
* BOute: the whole space.

**Main results** at quality target Q and the scenario's budget B (all systems alike):

* ``P95*(S, Q) = min {planning P95 of p : p in S, quality(p) >= Q, cost(p) <= B}``. Feasibility
  at a latency level x is monotone in x (every capacity ``cap_c(x)`` is non-decreasing), so
  P95* is found by bisection on ``log x``: first over the problem's level grid, then
  `BISECT_STEPS` halvings inside the bracketing grid interval (relative precision
  ``(x_{k+1}/x_k)^(2^-BISECT_STEPS)``, about 4e-8). At the feasible end the DP's cheapest state
  serving a share ``>= s_Q`` is the plan; its routing is the smallest such share. Its mean
  latency (`Predicted.mean_s`) is reported beside it. Since every baseline's space is inside
  BOute's, ``P95*(BOute) <= P95*(baseline)`` up to that precision.
* Throughput: ``max {capacity(p) : p in S, quality(p) >= Q, cost(p) <= B}``, where capacity is
  the largest total rate (same routing) at which every group keeps P95 <= L(Q)
  (`tuning._exact.exact_max_throughput`); L(Q) is the scenario's P95 target for Q,
  interpolated linearly in Q between the scenario's targets. BOute's value is what
  ``search(Goal("max-throughput", Q, L))`` returns (``boute plan --objective max-throughput``).
* Ratios to BOute: ``P95(baseline) / P95(BOute)``, ``mean(baseline) / mean(BOute)``,
  ``throughput(BOute) / throughput(baseline)``; > 1 means BOute is better.

**Tables 3 and 1** are `boute compare`'s (`compare_targets`): the cheapest $/hour meeting
(Q, P95 target) per system without the budget, and BOute's plan per target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import BouteError

from ._baselines import BASELINES, baseline_min_cost, ladder_baseline_min_cost
from ._evaluator import PlanArrays, evaluate_arrays, plan_from_arrays
from ._exact import (
    LevelStates,
    TypeFilter,
    _share_range,
    exact_max_throughput,
    solve_level,
)
from ._pipeline import PlanOptions, choose_plan
from ._plan import Plan
from ._problem import Problem
from ._run import Goal, SearchResult, StopRule

__all__ = [
    "BISECT_STEPS", "CHARACTERIZATION", "PAPER", "SYSTEMS", "MainRow", "SystemPoint",
    "TargetComparison", "allocation", "budget_share", "characterization", "compare_targets",
    "headline", "main_results", "min_p95_plan", "quality_grid", "violations",
]

SYSTEMS = (*BASELINES, "BOute")
BISECT_STEPS = 20
"""Halvings of ``log x`` inside the bracketing grid interval (see the module docstring)."""

CHARACTERIZATION = (
    ("70B alone, homogeneous GPUs", "Stand-Alone-Homo"),
    ("routing, uniform GPU split", "RouteLLM-uniform"),
    ("routing, best homogeneous allocation", "BOute-Homo"),
    ("routing, heterogeneous allocation", "BOute"),
)
"""The paper's motivating example, step by step, and the system of ours that is each step."""

PAPER: dict[str, Any] = {
    "source": "BOute (Jiang, Fu, Yoneki; MLSys 2026), as summarized in "
              "benchmarks/data/reference/calibration.md section 0",
    "headline": {"p95_ratio_best": 2.57, "mean_ratio_best": 1.58, "throughput_ratio_best": 1.9,
                 "cost_reduction_mean": 0.38, "cost_reduction_range": (0.15, 0.61)},
    "characterization_p95_s": (25.6, 28.2, 20.5, 17.1),
    "budget_per_hour": 30.0,
    "rate_rps": 100.0,
    # Table 3: $/hour to meet (quality, P95 s), per system (SYSTEMS order).
    "table3": {
        "gsm8k": {(87.0, 8.0): (61.83, 56.24, 53.55, 38.41, 32.25),
                  (91.0, 12.0): (41.21, 37.50, 52.38, 36.07, 32.18)},
        "mtbench": {(8.1, 10.0): (79.93, 73.54, 55.90, 36.33, 30.98),
                    (8.5, 15.0): (53.29, 49.02, 44.00, 38.31, 31.23)},
    },
    # Table 1: share of queries to the 70B, and the allocation (where published).
    "table1": {
        "gsm8k": {87.0: (0.2655, "8B: 8xRTX-5090+5xRTX-4090; 70B: 6xH100"),
                  89.0: (0.5605, None),
                  91.0: (0.7006, "8B: 3xRTX-5090; 70B: 6xH100+4xRTX-PRO-6000")},
        "mtbench": {8.1: (0.1942, "8B: 8xRTX-5090+8xRTX-4090+1xRTX-PRO-6000; "
                                  "70B: 4xH100+2xRTX-PRO-6000"),
                    8.3: (0.3883, None), 8.5: (0.5825, None)},
    },
    # Table 2: seconds to converge, by number of GPU types (8 GPUs each).
    "table2_s": {3: 23.5, 4: 32.5, 5: 48.6, 6: 72.0},
    "table2_raw_s": (216.0, 534.0),        # "3.6-8.9 min" over 3-6 types
    "table2_no_db_s": (720.0, 1800.0),     # "12 to > 30 min"
}
"""The paper's published numbers that the report sets beside ours."""

Tick = Callable[[str], None]
FloatArray = npt.NDArray[np.float64]


_RAW = PlanOptions(check_seeds=())
"""The pipeline without the headroom check: the paper's tables compare the searchers' plans."""


def quality_grid(problem: Problem, points: int) -> list[tuple[float, float]]:
    """`points` quality targets from the scenario's lowest to its highest, each with L(Q).

    ``L(Q)`` interpolates the scenario's (quality, P95) targets linearly in quality.

    Raises:
        BouteError: the scenario has no targets, or `points` < 1.

    """
    targets = sorted((t.single_quality, t.p95_s) for t in problem.scenario.targets)
    if not targets:
        raise BouteError(f"scenario {problem.scenario.name!r} has no targets; add "
                         "`targets: [{quality: Q, p95_s: SECONDS}, ...]` to its YAML")
    if points < 1:
        raise BouteError(f"quality points={points} must be >= 1")
    qs = [t[0] for t in targets]
    grid = np.linspace(qs[0], qs[-1], points) if qs[-1] > qs[0] else np.array([qs[0]])
    return [(round(float(q), 6), float(np.interp(q, qs, [t[1] for t in targets])))
            for q in grid]


# -- plan spaces ---------------------------------------------------------------------------
def _spaces(problem: Problem, name: str) -> list[tuple[TypeFilter | None, bool]]:
    """The (filter, strong only) alternatives whose best is system `name`'s best."""
    home = problem.gpu_types.index("H100") if "H100" in problem.gpu_types else 0
    if name == "Stand-Alone-Homo":
        return [(lambda t, kw, ks: kw == 0 and (t == home or ks == 0), True)]
    if name == "Stand-Alone-Hetero":
        return [(lambda t, kw, ks: kw == 0, True)]
    if name == "RouteLLM-uniform":
        return [(lambda t, kw, ks: kw == ks, False)]
    if name == "BOute-Homo":
        def only(h: int) -> TypeFilter:
            return lambda t, kw, ks: t == h or kw + ks == 0
        return [(only(h), False) for h in range(len(problem.gpu_types))]
    if name == "BOute":
        return [(None, False)]
    raise BouteError(f"system {name!r} is unknown; use one of {', '.join(SYSTEMS)}")


def min_p95_plan(problem: Problem, quality: float, allow: TypeFilter | None = None,
                 strong_only: bool = False) -> PlanArrays | None:
    """The plan of lowest planning P95 with quality >= `quality` under the budget, or None.

    Bisection on the latency level (see the module docstring); `allow` and `strong_only`
    restrict the plan space as in `tuning._exact.exact_min_cost`.
    """
    lam = problem.rate_rps
    s_q = 1.0 if strong_only else problem.quality.min_share_for(quality)

    def states(x: float) -> tuple[LevelStates, FloatArray, npt.NDArray[np.bool_]]:
        st = solve_level(problem, x, budget=problem.budget, clip=lam, allow=allow)
        lo, _, ok = _share_range(st, lam, s_q)
        return st, lo, ok

    levels = problem.levels_s
    if not states(float(levels[-1]))[2].any():
        return None
    lo_k, hi_k = -1, len(levels) - 1          # infeasible below lo_k + 1, feasible at hi_k
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if states(float(levels[mid]))[2].any():
            hi_k = mid
        else:
            lo_k = mid
    x_hi = float(levels[hi_k])
    if lo_k >= 0:
        a, b = np.log(levels[lo_k]), np.log(x_hi)
        for _ in range(BISECT_STEPS):
            m = 0.5 * (a + b)
            if states(float(np.exp(m)))[2].any():
                b = m
            else:
                a = m
        x_hi = float(np.exp(b))
    st, lo, ok = states(x_hi)
    idx = np.flatnonzero(ok)
    i = int(idx[np.argmin(st.cost[idx])])
    cfg, reps = st.plan(i)
    return PlanArrays(np.array([min(1.0, float(lo[i]))]), cfg[None], reps[None])


def _best_of(found: list[PlanArrays | None], key: Callable[[PlanArrays], float]
             ) -> PlanArrays | None:
    ok = [p for p in found if p is not None]
    return min(ok, key=key) if ok else None


# -- main results ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SystemPoint:
    """One system at one quality target under the budget.

    Attributes:
        p95_s: lowest planning P95 (every group meets it); None: no plan meets the target.
        system_p95_s: P95 of all requests of that plan (mixture over groups).
        mean_s: mean latency of that plan.
        cost_per_hour: its $/hour (<= the budget).
        strong_share: its share of queries to the strong model.
        gpus: its GPUs per model and type.
        throughput_rps: the highest capacity of any plan of the space under the budget with
            every group's P95 <= the throughput target; 0 when none.

    """

    p95_s: float | None
    system_p95_s: float | None
    mean_s: float | None
    cost_per_hour: float | None
    strong_share: float | None
    gpus: dict[str, dict[str, int]]
    throughput_rps: float


@dataclass(frozen=True)
class MainRow:
    """All systems at one quality target.

    ``plan_p95_s`` is what ``boute plan --quality Q`` (auto) finds, ``plan_solver`` which
    solver found it.
    """

    quality: float
    throughput_p95_s: float
    points: dict[str, SystemPoint]
    plan_p95_s: float | None
    plan_solver: str

    def ratio(self, metric: str, baseline: str) -> float | None:
        """Baseline / BOute for ``p95`` and ``mean``, BOute / baseline for ``throughput``."""
        b, o = self.points["BOute"], self.points[baseline]
        if metric == "throughput":
            return b.throughput_rps / o.throughput_rps if o.throughput_rps > 0 else None
        bv, ov = (b.p95_s, o.p95_s) if metric == "p95" else (b.mean_s, o.mean_s)
        return None if bv is None or ov is None or bv <= 0 else ov / bv


def _point(problem: Problem, name: str, quality: float, level_s: float,
           throughput: PlanArrays | None) -> SystemPoint:
    spaces = _spaces(problem, name)

    def p95_of(p: PlanArrays) -> float:
        return float(evaluate_arrays(problem, p).p95_s[0])

    best = _best_of([min_p95_plan(problem, quality, a, so) for a, so in spaces], p95_of)
    if throughput is None and name != "BOute":
        # strong-only spaces have no weak GPUs (kw == 0), so their plans route s = 1
        found = [exact_max_throughput(problem, quality, level_s, allow=a) for a, _ in spaces]
        throughput = _best_of(found, lambda p: -float(
            evaluate_arrays(problem, p, level_s).capacity_rps[0]))
    thr = 0.0 if throughput is None else float(
        evaluate_arrays(problem, throughput, level_s).capacity_rps[0])
    if best is None:
        return SystemPoint(None, None, None, None, None, {}, thr)
    m = evaluate_arrays(problem, best)
    plan = plan_from_arrays(problem, best, m, 0)
    pr = plan.predicted
    assert pr is not None
    return SystemPoint(pr.p95_s, pr.system_p95_s, pr.mean_s, pr.cost_per_hour,
                       plan.routing.strong_share, allocation(plan)["gpus"], thr)


def main_results(problem: Problem, grid: Sequence[tuple[float, float]], *,
                 tick: Tick | None = None) -> list[MainRow]:
    """Every system at every (quality, throughput P95 target) of `grid` (module docstring).

    Args:
        problem: the planning problem (its budget applies).
        grid: ``(quality, L)`` pairs (`quality_grid`).
        tick: called after each quality target (progress).

    """
    rows = []
    for q, level in grid:
        res = choose_plan(problem, Goal("pareto", q), _RAW).result
        b = res.best(problem)
        thr = choose_plan(problem, Goal("max-throughput", q, level), _RAW).result
        tb = thr.best(problem)
        boute_thr = None if tb is None else PlanArrays(
            thr.plans.strong_share[tb:tb + 1], thr.plans.config[tb:tb + 1],
            thr.plans.replicas[tb:tb + 1])
        points = {name: _point(problem, name, q, level, boute_thr if name == "BOute" else None)
                  for name in SYSTEMS}
        rows.append(MainRow(q, level, points,
                            None if b is None else float(res.metrics.p95_s[b]), res.solver))
        if tick is not None:
            tick(f"{problem.scenario.name} Q={q:g}")
    return rows


def headline(rows: Sequence[MainRow]) -> dict[str, dict[str, Any]]:
    """Per metric (p95, mean, throughput): best, mean and worst ratio to BOute.

    Over every (target, baseline) cell where both values exist; the best with its cell.
    """
    out: dict[str, dict[str, Any]] = {}
    for metric in ("p95", "mean", "throughput"):
        cells = [(r.ratio(metric, name), r.quality, name) for r in rows for name in BASELINES]
        vals = [(v, q, n) for v, q, n in cells if v is not None]
        if not vals:
            out[metric] = {"best": None, "mean": None, "worst": None}
            continue
        best = max(vals)
        out[metric] = {"best": best[0], "best_at": {"quality": best[1], "baseline": best[2]},
                       "mean": float(np.mean([v for v, _, _ in vals])),
                       "worst": min(v for v, _, _ in vals)}
    return out


def characterization(rows: Sequence[MainRow]) -> list[dict[str, Any]]:
    """The motivating example at every quality target: P95 of each step (`CHARACTERIZATION`)."""
    return [{"quality": r.quality,
             "steps": [{"step": step, "system": name, "p95_s": r.points[name].p95_s,
                        "mean_s": r.points[name].mean_s}
                       for step, name in CHARACTERIZATION]} for r in rows]


# -- Tables 3 and 1 (`boute compare`) --------------------------------------------------------
def allocation(plan: Plan) -> dict[str, Any]:
    """Table 1's row: strong load share and GPUs per model (``{"model": {"gpu": n}}``)."""
    gpus: dict[str, dict[str, int]] = {}
    for g in plan.groups:
        per = gpus.setdefault(g.model, {})
        per[g.gpu] = per.get(g.gpu, 0) + g.num_gpus
    return {"strong_share": plan.routing.strong_share, "gpus": gpus}


def budget_share(problem: Problem, plan: Plan) -> dict[str, float]:
    """Share of the plan's $/hour spent on each model: ``sum_g gpus_g price_g / cost``."""
    price = dict(zip(problem.gpu_types, problem.gpu_price.tolist(), strict=True))
    spend: dict[str, float] = {m: 0.0 for m in problem.models}
    for g in plan.groups:
        spend[g.model] += g.num_gpus * price[g.gpu]
    total = sum(spend.values())
    return {m: (v / total if total > 0 else 0.0) for m, v in spend.items()}


@dataclass(frozen=True)
class TargetComparison:
    """Table 3's column and Table 1's row for one (quality, P95) target.

    ``cost_per_hour`` holds each baseline (exact in its space) and ``BOute`` (the search);
    ``reduction`` is ``1 - BOute / baseline``; ``plan`` is BOute's plan (None: none found).
    """

    quality: float | tuple[float, ...]
    p95_s: float
    cost_per_hour: dict[str, float | None]
    reduction: dict[str, float | None]
    plan: Plan | None
    result: SearchResult = field(repr=False)

    @property
    def allocation(self) -> dict[str, Any] | None:
        """`allocation` of BOute's plan, or None."""
        return None if self.plan is None else allocation(self.plan)


def compare_targets(problem: Problem,
                    targets: Sequence[tuple[float | tuple[float, ...], float]], *,
                    solver: str = "auto", seed: int = 0, stop: StopRule | None = None,
                    tick: Tick | None = None) -> list[TargetComparison]:
    """The cheapest $/hour per baseline and BOute for each (quality, P95 s) target.

    On a ladder a target's quality may be one per workload (a tuple, `Problem.workloads`
    order), and the baselines are `ladder_baseline_min_cost`'s.

    Baselines: `baseline_min_cost` (exact in their spaces); BOute: the planning pipeline
    (`choose_plan` with ``Goal("min-cost", Q, L)``) without the headroom check, as the paper
    compares the searchers' own plans. The budget does not apply (the paper's Table 3).

    Raises:
        QualityError: a target's quality is above what the strong model reaches.

    """
    columns = []
    for q, sec in targets:
        costs: dict[str, float | None] = {}
        if problem.is_pair:
            q1 = float(q[0]) if isinstance(q, tuple) else float(q)
            problem.quality.min_share_for(q1)
            goal = Goal("min-cost", q1, sec)
            for name in BASELINES:
                found = baseline_min_cost(problem, name, q1, sec)
                costs[name] = (None if found is None
                               else float(evaluate_arrays(problem, found).cost_per_hour[0]))
        else:
            qs = (q,) * len(problem.workloads) if isinstance(q, float | int) else tuple(q)
            goal = Goal("min-cost", None, sec, qs)
            for name in BASELINES:
                found = ladder_baseline_min_cost(problem, name, qs, sec, seed=seed)
                costs[name] = (None if found is None
                               else float(evaluate_arrays(problem, found).cost_per_hour[0]))
        res = choose_plan(problem, goal, PlanOptions(solver=solver, seed=seed, stop=stop,
                                                     check_seeds=())).result
        b = res.best(problem)
        costs["BOute"] = None if b is None else float(res.metrics.cost_per_hour[b])
        boute = costs["BOute"]
        reduction = {k: (None if v is None or boute is None else 1.0 - boute / v)
                     for k, v in costs.items() if k != "BOute"}
        plan = None if b is None else plan_from_arrays(problem, res.plans, res.metrics, b)
        columns.append(TargetComparison(q, sec, costs, reduction, plan, res))
        if tick is not None:
            tick(f"{problem.scenario.name} ({q}, {sec:g} s)")
    return columns


def violations(rows: Sequence[MainRow], columns: Sequence[TargetComparison],
               rel_tol: float = 1e-6) -> list[str]:
    """Where BOute is worse than a baseline on the objective it was solved for, in words.

    Checked: P95 (`MainRow`, lower is better), throughput (higher) and Table 3's cost
    (lower), each within `rel_tol` (the bisection's precision is ~4e-8). Mean latency is not
    an objective of any search and is not checked.
    """
    out = []
    for r in rows:
        b = r.points["BOute"]
        for name in BASELINES:
            o = r.points[name]
            if o.p95_s is not None and (b.p95_s is None or b.p95_s > o.p95_s * (1 + rel_tol)):
                out.append(f"Q={r.quality:g}: BOute P95 {b.p95_s} s > {name} {o.p95_s:.4f} s")
            if b.throughput_rps < o.throughput_rps * (1 - rel_tol):
                out.append(f"Q={r.quality:g}: BOute throughput {b.throughput_rps:.3f} < {name} "
                           f"{o.throughput_rps:.3f} req/s")
    for c in columns:
        boute = c.cost_per_hour["BOute"]
        for name in BASELINES:
            v = c.cost_per_hour[name]
            if v is not None and (boute is None or boute > v * (1 + rel_tol)):
                out.append(f"({c.quality:g}, {c.p95_s:g} s): BOute ${boute}/h > {name} "
                           f"${v:.2f}/h")
    return out
