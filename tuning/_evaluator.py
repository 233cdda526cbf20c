"""The evaluator: plans -> planning P95, system P95 and mean latency, quality, $/hour.

Vectorized over a batch of plans held as arrays (`PlanArrays`): strong share ``s`` ``(B,)``,
and G group slots per plan, each a config index ``c`` (``-1`` = empty) with ``r`` replicas.

For plan b and model m with load ``lambda_m`` (see `tuning._problem`):

* capacity curve ``C_m(x_k) = sum_{g of m} r_g cap[c_g, k]`` over the latency levels;
* ``x_m* = min {x : C_m(x) >= lambda_m}``, linear in ``log x`` between levels (0 when the
  model gets no load; +inf when even the ceiling is not enough: the model is saturated);
* planning P95 = ``max_m x_m*``;
* the split (optimized): group g receives ``r_g cap_{c_g}(x_m*)`` req/s, i.e. its share of
  model m is ``r_g cap_{c_g}(x_m*) / lambda_m``. This water-filling minimizes the largest group
  P95, exactly: at any lower level the groups cannot absorb ``lambda_m``;
* system latency distribution: the mixture of the groups' DB distributions at their rates with
  weights ``lambda_g / lambda``, from which `system_p95_s` (`mixture_quantile`) and `mean_s`;
* capacity: the largest total rate ``alpha * lambda`` (same routing) with every group's P95 <=
  L (the target, or the ceiling): ``alpha = min_m C_m(L) / lambda_m``.

Constraints: budget, GPU stock per type, TP within a node, memory fit (the config is in the DB)
and no saturation. `explain` names each violated constraint and by how much.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import BouteError
from profiling import mixture_quantile

from ._plan import Group, Plan, Predicted, Routing
from ._problem import STRONG, WEAK, Problem

__all__ = ["BatchMetrics", "InfeasiblePlanError", "PlanArrays", "evaluate_arrays",
           "evaluate_plan", "explain", "plan_from_arrays", "plan_to_arrays"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

BUDGET_TOL = 1e-6


class InfeasiblePlanError(BouteError, ValueError):
    """A plan breaks a constraint; `violations` lists each one with its amount."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("infeasible plan: " + "; ".join(violations))
        self.violations = violations


@dataclass(frozen=True)
class PlanArrays:
    """A batch of B plans with G group slots each (``config == -1``: empty slot)."""

    strong_share: FloatArray   # (B,)
    config: IntArray           # (B, G)
    replicas: IntArray         # (B, G)

    def __len__(self) -> int:
        return len(self.strong_share)


@dataclass(frozen=True)
class BatchMetrics:
    """Metrics of a batch of plans (``(B,)`` arrays unless noted)."""

    p95_s: FloatArray          # planning P95 (+inf when saturated)
    model_p95_s: FloatArray    # (B, 2) x_m* of (weak, strong)
    quality: FloatArray
    cost_per_hour: FloatArray
    gpus_used: IntArray        # (B, T)
    capacity_rps: FloatArray
    within_budget: BoolArray
    within_stock: BoolArray
    unsaturated: BoolArray

    @property
    def feasible(self) -> BoolArray:
        """All constraints hold."""
        return self.within_budget & self.within_stock & self.unsaturated


def _crossing(problem: Problem, curve: FloatArray, need: FloatArray) -> FloatArray:
    """Smallest x with ``curve(x) >= need``; curve is ``(..., K)`` on the latency levels."""
    k_count = curve.shape[-1]
    k = (curve < need[..., None]).sum(axis=-1)           # first level meeting the need
    logx = np.log(problem.levels_s)
    k_hi = np.minimum(k, k_count - 1)
    k_lo = np.maximum(k - 1, 0)
    c_hi = np.take_along_axis(curve, k_hi[..., None], -1)[..., 0]
    c_lo = np.take_along_axis(curve, k_lo[..., None], -1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(c_hi > c_lo, (need - c_lo) / (c_hi - c_lo), 1.0)
    x = np.exp(logx[k_lo] + np.clip(t, 0.0, 1.0) * (logx[k_hi] - logx[k_lo]))
    x = np.where(k == 0, problem.levels_s[0], x)
    x = np.where(k >= k_count, np.inf, x)
    return np.where(need <= 0, 0.0, x)


def evaluate_arrays(
    problem: Problem, plans: PlanArrays, p95_target_s: float | None = None
) -> BatchMetrics:
    """Planning metrics of a batch of plans, vectorized (see the module docstring)."""
    cfg = np.asarray(plans.config, dtype=np.int64)
    reps = np.where(cfg >= 0, np.asarray(plans.replicas, dtype=np.int64), 0)
    safe = np.maximum(cfg, 0)
    s = np.asarray(plans.strong_share, dtype=np.float64)
    loads = problem.loads(s)                                          # (B, 2)
    cost = (reps * problem.cfg_price[safe]).sum(axis=1)
    n_types = len(problem.gpu_types)
    gpus = reps * problem.cfg_gpus[safe]
    used = np.zeros((len(s), n_types), dtype=np.int64)
    for t in range(n_types):
        used[:, t] = (gpus * (problem.cfg_type[safe] == t)).sum(axis=1)
    caps = reps[..., None] * problem.cap[safe]                        # (B, G, K)
    model = problem.cfg_model[safe]
    curves = np.stack([(caps * (model == m)[..., None]).sum(axis=1) for m in (WEAK, STRONG)],
                      axis=1)                                         # (B, 2, K)
    x = _crossing(problem, curves, loads)                             # (B, 2)
    p95 = x.max(axis=1)
    level = problem.ceiling_s if p95_target_s is None else p95_target_s
    cap_l = reps * problem.cap_at(level)[safe]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.stack([np.where(loads[:, m] > 0, (cap_l * (model == m)).sum(axis=1)
                                   / loads[:, m], np.inf) for m in (WEAK, STRONG)], axis=1)
    capacity = alpha.min(axis=1) * problem.rate_rps
    return BatchMetrics(
        p95_s=p95, model_p95_s=x, quality=problem.quality(s), cost_per_hour=cost,
        gpus_used=used, capacity_rps=np.where(np.isfinite(capacity), capacity, 0.0),
        within_budget=cost <= problem.budget + BUDGET_TOL,
        within_stock=np.all(used <= problem.stock, axis=1),
        unsaturated=np.isfinite(p95))


# -- single plans ---------------------------------------------------------------------------
def plan_to_arrays(problem: Problem, plan: Plan) -> PlanArrays:
    """One plan as a batch of one.

    Raises:
        InfeasiblePlanError: a group names a model or GPU outside the scenario, puts TP across
            nodes, or uses a config that does not fit in memory.

    """
    errors: list[str] = []
    cfgs, reps = [], []
    infeasible = {(d["model"], d["gpu"], d["tp"], d["pp"]): d["reason"]
                  for d in problem.db.meta.get("infeasible", [])}
    for i, g in enumerate(plan.groups):
        where = f"groups[{i}] ({g.model} on {g.replicas}x {g.gpu} tp={g.tp} pp={g.pp})"
        if g.model not in problem.models:
            errors.append(f"{where}: model {g.model!r} is not in the scenario "
                          f"(models: {', '.join(problem.models)})")
            continue
        if g.gpu not in problem.gpu_types:
            errors.append(f"{where}: GPU type {g.gpu!r} is not on offer in the scenario "
                          f"({', '.join(problem.gpu_types)})")
            continue
        t = problem.gpu_types.index(g.gpu)
        if g.tp > problem.gpus_per_node[t]:
            errors.append(f"{where}: TP must stay inside a node: tp={g.tp} > "
                          f"{problem.gpus_per_node[t]} GPUs per {g.gpu} node (exceeds by "
                          f"{g.tp - problem.gpus_per_node[t]})")
            continue
        c = problem.config(problem.models.index(g.model), t, g.tp, g.pp)
        if c < 0:
            reason = infeasible.get((g.model, g.gpu, g.tp, g.pp),
                                    "the perf DB has no rows for it")
            errors.append(f"{where}: memory fit: {reason}")
            continue
        cfgs.append(c)
        reps.append(g.replicas)
    if errors:
        raise InfeasiblePlanError(errors)
    return PlanArrays(np.array([plan.routing.strong_share]), np.array([cfgs], dtype=np.int64),
                      np.array([reps], dtype=np.int64))


def explain(problem: Problem, plans: PlanArrays, metrics: BatchMetrics, b: int = 0) -> list[str]:
    """The violated constraints of plan `b`, each with its amount."""
    out = []
    if not metrics.within_budget[b]:
        cost = metrics.cost_per_hour[b]
        out.append(f"budget: ${cost:.2f}/h exceeds ${problem.budget:.2f}/h by "
                   f"${cost - problem.budget:.2f}/h")
    for t, name in enumerate(problem.gpu_types):
        used, have = int(metrics.gpus_used[b, t]), int(problem.stock[t])
        if used > have:
            out.append(f"GPU stock: {used} x {name} used but {have} on offer (short by "
                       f"{used - have})")
    loads = problem.loads(plans.strong_share[b])
    for m in (WEAK, STRONG):
        if not np.isfinite(metrics.model_p95_s[b, m]):
            cfg, reps = plans.config[b], plans.replicas[b]
            ok = (cfg >= 0) & (problem.cfg_model[np.maximum(cfg, 0)] == m)
            top = float((reps[ok] * problem.cap[cfg[ok], -1]).sum())
            out.append(f"saturation: {problem.models[m]} gets {loads[m]:.2f} req/s but its "
                       f"groups serve at most {top:.2f} req/s with P95 <= "
                       f"{problem.ceiling_s:g} s (short by {loads[m] - top:.2f} req/s)")
    return out


def _detail(problem: Problem, plans: PlanArrays, metrics: BatchMetrics, b: int
            ) -> tuple[list[float], float, float]:
    """Group shares within their model, system P95 and mean latency of plan `b`."""
    cfg, reps = plans.config[b], plans.replicas[b]
    loads = problem.loads(plans.strong_share[b])
    shares = [0.0] * len(cfg)
    rates, weights, rows = [], [], []
    for m in (WEAK, STRONG):
        idx = [i for i, c in enumerate(cfg) if c >= 0 and problem.cfg_model[c] == m]
        if not idx or loads[m] <= 0:
            continue
        per = problem.cap_at(metrics.model_p95_s[b, m])[cfg[idx]]
        # Per-replica rates are the capacities at x_m* (their sum is lambda_m up to rounding;
        # renormalizing could push a group a hair past its last unsaturated DB row).
        lam = per * reps[idx]
        lam = lam / lam.sum() if lam.sum() > 0 else np.full(len(idx), 1.0 / len(idx))
        for j, i in enumerate(idx):
            shares[i] = float(lam[j])
            if lam[j] > 0:
                rates.append(min(per[j], lam[j] * loads[m] / reps[i]))
                weights.append(lam[j] * loads[m] / problem.rate_rps)
                rows.append(problem.cfg_db[cfg[i]])
    if not rows:
        return shares, 0.0, 0.0
    quant, mean, _ = problem.db.lookup(np.asarray(rows), np.asarray(rates))
    w = np.asarray(weights)
    p95 = float(mixture_quantile(quant[None], w[None], list(problem.db.quantile_levels), 0.95)[0])
    return shares, p95, float((w * mean).sum() / w.sum())


def plan_from_arrays(problem: Problem, plans: PlanArrays, metrics: BatchMetrics, b: int,
                     extra: dict[str, object] | None = None) -> Plan:
    """Plan `b` of a batch as a `Plan` with predicted metrics and optimized shares."""
    shares, sys_p95, mean = _detail(problem, plans, metrics, b)
    groups = []
    for i, c in enumerate(plans.config[b]):
        if c < 0 or plans.replicas[b, i] <= 0:
            continue
        groups.append(Group(problem.models[problem.cfg_model[c]],
                            problem.gpu_types[problem.cfg_type[c]], int(problem.cfg_tp[c]),
                            int(problem.cfg_pp[c]), int(plans.replicas[b, i]),
                            round(shares[i], 6)))
    s = float(plans.strong_share[b])
    feasible = bool(metrics.feasible[b])
    predicted = Predicted(
        p95_s=float(metrics.p95_s[b]), system_p95_s=sys_p95, mean_s=mean,
        quality=float(metrics.quality[b]), cost_per_hour=float(metrics.cost_per_hour[b]),
        throughput_rps=problem.rate_rps if feasible else 0.0,
        capacity_rps=float(metrics.capacity_rps[b]))
    return Plan(Routing(s, problem.quality.threshold_for(s)), tuple(groups), predicted,
                scenario_summary(problem), dict(extra or {}))


def scenario_summary(problem: Problem) -> dict[str, object]:
    """The scenario block written into plan files."""
    sc = problem.scenario
    return {"name": sc.name, "rate_rps": problem.rate_rps, "budget_per_hour": problem.budget,
            "task": sc.task, "models": {"weak": problem.models[0], "strong": problem.models[1]},
            "gpus": {g: {"count": int(n), "price_per_hour": float(p)} for g, n, p in
                     zip(problem.gpu_types, problem.stock, problem.gpu_price, strict=True)},
            # the whole scenario, so that replanning can re-optimize for new traffic
            "spec": sc.model_dump(mode="json")}


def evaluate_plan(problem: Problem, plan: Plan, p95_target_s: float | None = None) -> Plan:
    """Predicted metrics of any plan, with its groups' shares re-optimized.

    Raises:
        InfeasiblePlanError: a constraint is violated (each one named, with its amount); a
            model that gets load but has no replica group is reported as saturated.

    """
    arrays = plan_to_arrays(problem, plan)
    metrics = evaluate_arrays(problem, arrays, p95_target_s)
    problems = explain(problem, arrays, metrics, 0)
    if problems:
        raise InfeasiblePlanError(problems)
    return plan_from_arrays(problem, arrays, metrics, 0, plan.extra)
