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
and no saturation. `explain` names each violated constraint and by how much. TTFT / TPOT
targets are in the capacity tables already (`Problem.with_token_targets`): a group past its
token rate cap counts as saturated, and `plan_from_arrays` then reports the worst group's TTFT
and TPOT P95 at its rate.

**Ladders** (K models, W workloads; `PlanArrays.shares` set): model m's load is
``lambda_m = sum_w s_{w,m} lambda_w`` and each of its groups serves the mix ``f_w =
s_{w,m} lambda_w / lambda_m``, so the capacity curves above use ``cap_mix`` (`Problem.mix_cap`)
instead of ``cap``; everything else is the same, over K models. Quality is per workload
(`workload_quality`, the workload's `profiling.CascadeQuality`); ``quality`` is that of the one
workload, or with several the lowest *normalized* quality ``(Q_w - Q_w^low) / (Q_w^high -
Q_w^low)`` (0: every query on the smallest model, 1: on the largest).

**Length classes** (`tuning._problem`): every "model" above is a *lane* (model, class) with
load ``sum_w s_{w,m} p_{w,class} lambda_w`` and its own groups; ``model_p95_s`` is then per
lane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import BouteError
from profiling import mixture_quantile

from ._plan import LENGTH_CLASSES, Group, LengthRouting, Plan, Predicted, Routing, WorkloadRouting
from ._problem import Problem

__all__ = ["BatchMetrics", "InfeasiblePlanError", "PlanArrays", "evaluate_arrays",
           "evaluate_plan", "explain", "ladder_arrays", "plan_from_arrays", "plan_to_arrays"]

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
    """A batch of B plans with G group slots each (``config == -1``: empty slot).

    ``shares`` ``(B, W, K)``: each workload's share per model (ladders); None for the pair,
    whose routing is ``strong_share``. For ladders ``strong_share`` is the share of all
    traffic on the largest model.
    """

    strong_share: FloatArray   # (B,)
    config: IntArray           # (B, G)
    replicas: IntArray         # (B, G)
    shares: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.strong_share)


def ladder_arrays(problem: Problem, shares: FloatArray, config: IntArray, replicas: IntArray
                  ) -> PlanArrays:
    """Plans of a ladder from their ``(B, W, K)`` shares (``strong_share`` derived)."""
    sh = np.asarray(shares, dtype=np.float64)
    top = (sh[:, :, -1] * problem.workload_rates).sum(axis=1) / problem.rate_rps
    return PlanArrays(top, np.asarray(config, dtype=np.int64),
                      np.asarray(replicas, dtype=np.int64), sh)


@dataclass(frozen=True)
class BatchMetrics:
    """Metrics of a batch of plans (``(B,)`` arrays unless noted)."""

    p95_s: FloatArray          # planning P95 (+inf when saturated)
    model_p95_s: FloatArray    # (B, L) x_l* of each lane: each model (weak, strong for the
    #                            pair), or each (model, length class)
    quality: FloatArray
    cost_per_hour: FloatArray
    gpus_used: IntArray        # (B, T)
    capacity_rps: FloatArray
    within_budget: BoolArray
    within_stock: BoolArray
    unsaturated: BoolArray
    workload_quality: FloatArray   # (B, W)

    @property
    def feasible(self) -> BoolArray:
        """All constraints hold."""
        return self.within_budget & self.within_stock & self.unsaturated


def _crossing(problem: Problem, curve: FloatArray, need: FloatArray) -> FloatArray:
    """Smallest x with ``curve(x) >= need``; curve is ``(..., K)`` on the latency levels."""
    k_count = curve.shape[-1]
    # (a need equal to a capacity up to rounding, e.g. the exact DP's boundary share, is met)
    k = (curve < need[..., None] * (1 - 1e-12)).sum(axis=-1)
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


def _at_level(problem: Problem, table: FloatArray, x_s: float) -> FloatArray:
    """A ``(..., L)`` capacity table at level `x_s`, as `Problem.cap_at` interpolates."""
    pos = float(np.interp(np.log(max(x_s, 1e-12)), np.log(problem.levels_s),
                          np.arange(len(problem.levels_s), dtype=np.float64), left=-1.0))
    if pos < 0:
        return np.zeros(table.shape[:-1])
    lo = min(int(np.floor(pos)), len(problem.levels_s) - 1)
    hi = min(lo + 1, len(problem.levels_s) - 1)
    w = min(max(pos - lo, 0.0), 1.0)
    return np.asarray((1 - w) * table[..., lo] + w * table[..., hi])


def _ladder_loads(problem: Problem, plans: PlanArrays, model: IntArray, safe: IntArray
                  ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Lane loads ``(B, L)``, per-slot mix capacity ``(B, G, levels)``, workload quality.

    `model`: ``(B, G)`` lane of each slot.
    """
    assert plans.shares is not None
    wl = problem.lane_loads(plans.shares)                             # (B, W, L)
    loads = wl.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(loads[:, None, :] > 0, wl / loads[:, None, :], 0.0)   # (B, W, K)
    if len(problem.workloads) == 1:
        slot_cap = problem.caps[0][safe]
    else:
        f = np.take_along_axis(frac, model[:, None, :], axis=2)        # (B, W, G)
        inv = np.zeros((*safe.shape, len(problem.levels_s)))
        with np.errstate(divide="ignore", invalid="ignore"):
            for w in range(len(problem.workloads)):
                fw = f[:, w, :, None]
                inv = inv + np.where(fw > 0, fw / problem.caps[w][safe], 0.0)
            slot_cap = np.where(np.isfinite(inv) & (inv > 0), 1.0 / inv, 0.0)
    wq = np.stack([c.of_shares(plans.shares[:, w, :]) for w, c in enumerate(problem.cascades)],
                  axis=1)
    return loads, slot_cap, wq


def _summary_quality(problem: Problem, wq: FloatArray) -> FloatArray:
    """One workload: its quality; several: the lowest normalized quality."""
    if wq.shape[1] == 1:
        return np.asarray(wq[:, 0])
    lo = np.array([c.lowest for c in problem.cascades])
    hi = np.array([c.highest for c in problem.cascades])
    return np.asarray(((wq - lo) / np.where(hi > lo, hi - lo, 1.0)).min(axis=1))


def evaluate_arrays(
    problem: Problem, plans: PlanArrays, p95_target_s: float | None = None
) -> BatchMetrics:
    """Planning metrics of a batch of plans, vectorized (see the module docstring)."""
    cfg = np.asarray(plans.config, dtype=np.int64)
    reps = np.where(cfg >= 0, np.asarray(plans.replicas, dtype=np.int64), 0)
    safe = np.maximum(cfg, 0)
    s = np.asarray(plans.strong_share, dtype=np.float64)
    model = problem.cfg_lane[safe]
    level = problem.ceiling_s if p95_target_s is None else p95_target_s
    if plans.shares is None:
        loads = problem.loads(s)                                      # (B, 2)
        caps = reps[..., None] * problem.cap[safe]                    # (B, G, L)
        cap_l = reps * problem.cap_at(level)[safe]
        quality = problem.quality(s)
        wq = quality[:, None]
    else:
        loads, slot_cap, wq = _ladder_loads(problem, plans, model, safe)
        caps = reps[..., None] * slot_cap
        cap_l = reps * _at_level(problem, slot_cap, level)
        quality = _summary_quality(problem, wq)
    cost = (reps * problem.cfg_price[safe]).sum(axis=1)
    n_types = len(problem.gpu_types)
    gpus = reps * problem.cfg_gpus[safe]
    used = np.zeros((len(s), n_types), dtype=np.int64)
    for t in range(n_types):
        used[:, t] = (gpus * (problem.cfg_type[safe] == t)).sum(axis=1)
    ms = range(problem.num_lanes)
    curves = np.stack([(caps * (model == m)[..., None]).sum(axis=1) for m in ms],
                      axis=1)                                         # (B, K, L)
    x = _crossing(problem, curves, loads)                             # (B, K)
    p95 = x.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.stack([np.where(loads[:, m] > 0, (cap_l * (model == m)).sum(axis=1)
                                   / loads[:, m], np.inf) for m in ms], axis=1)
    capacity = alpha.min(axis=1) * problem.rate_rps
    return BatchMetrics(
        p95_s=p95, model_p95_s=x, quality=quality, cost_per_hour=cost,
        gpus_used=used, capacity_rps=np.where(np.isfinite(capacity), capacity, 0.0),
        within_budget=cost <= problem.budget + BUDGET_TOL,
        within_stock=np.all(used <= problem.stock, axis=1),
        unsaturated=np.isfinite(p95), workload_quality=wq)


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
        if (g.length_class is None) != (not problem.classes):
            errors.append(f"{where}: " + (
                f"names no length class but the problem splits requests at "
                f"{problem.threshold_tokens} tokens; plan it again with `boute plan`"
                if g.length_class is None else
                f"length_class={g.length_class!r} but the problem has no length classes "
                "(evaluate it with the plan's routing.length_classes threshold)"))
            continue
        k = 0 if g.length_class is None else LENGTH_CLASSES.index(g.length_class)
        if g.tp > problem.gpus_per_node[t]:
            errors.append(f"{where}: TP must stay inside a node: tp={g.tp} > "
                          f"{problem.gpus_per_node[t]} GPUs per {g.gpu} node (exceeds by "
                          f"{g.tp - problem.gpus_per_node[t]})")
            continue
        c = problem.config(problem.models.index(g.model), t, g.tp, g.pp, k)
        if c < 0:
            reason = infeasible.get((g.model, g.gpu, g.tp, g.pp),
                                    "the perf DB has no rows for it")
            errors.append(f"{where}: memory fit: {reason}")
            continue
        cfgs.append(c)
        reps.append(g.replicas)
    if errors:
        raise InfeasiblePlanError(errors)
    config, replicas = np.array([cfgs], dtype=np.int64), np.array([reps], dtype=np.int64)
    if problem.is_pair and not plan.routing.is_ladder:
        return PlanArrays(np.array([plan.routing.strong_share]), config, replicas)
    return ladder_arrays(problem, _plan_shares(problem, plan)[None], config, replicas)


def _plan_shares(problem: Problem, plan: Plan) -> FloatArray:
    """``(W, K)`` shares of a plan for this problem (a pair plan's from its strong share).

    Raises:
        InfeasiblePlanError: the plan's models or workloads are not the scenario's.

    """
    rt = plan.routing
    if not rt.is_ladder:
        if problem.num_models != 2 or len(problem.workloads) != 1:
            raise InfeasiblePlanError([
                f"routing: the plan routes a pair (strong_share) but the scenario has "
                f"{problem.num_models} models and {len(problem.workloads)} workload(s); "
                "plan it again with `boute plan`"])
        return np.array([rt.per_workload(problem.workloads)[0].shares])
    errors = []
    if tuple(rt.models) != problem.models:
        errors.append(f"routing.models={list(rt.models)} is not the scenario's ladder "
                      f"{list(problem.models)}")
    names = [w.name for w in rt.workloads]
    if sorted(names) != sorted(problem.workloads):
        errors.append(f"routing.workloads {names} are not the scenario's "
                      f"{list(problem.workloads)}")
    if errors:
        raise InfeasiblePlanError(errors)
    by_name = {w.name: w for w in rt.workloads}
    return np.array([by_name[w].shares for w in problem.workloads], dtype=np.float64)


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
    view = _with_shares(plans, b)
    assert view.shares is not None
    loads = problem.lane_loads(view.shares)[0].sum(axis=0)
    for m in range(problem.num_lanes):
        if not np.isfinite(metrics.model_p95_s[b, m]):
            cfg, reps = plans.config[b], plans.replicas[b]
            ok = (cfg >= 0) & (problem.cfg_lane[np.maximum(cfg, 0)] == m)
            top = float((reps[ok] * _slot_caps(problem, view)[ok, -1]).sum())
            out.append(f"saturation: {problem.lane_name(m)} gets {loads[m]:.2f} req/s but its "
                       f"groups serve at most {top:.2f} req/s with P95 <= "
                       f"{problem.ceiling_s:g} s{_token_text(problem)} (short by "
                       f"{loads[m] - top:.2f} req/s)")
    return out


def _token_text(problem: Problem) -> str:
    """``, TTFT P95 <= T s, TPOT P95 <= U s`` for the targets the problem is clipped to."""
    return "".join(f", {name} P95 <= {v:g} s" for name, v in (
        ("TTFT", problem.ttft_p95_s), ("TPOT", problem.tpot_p95_s)) if v is not None)


def _slot_caps(problem: Problem, one: PlanArrays) -> FloatArray:
    """``(G, L)`` capacity table of each slot of plan `one` (`_with_shares`), for its lane's mix."""
    cfg = np.maximum(one.config[0], 0)
    _, slot_cap, _ = _ladder_loads(problem, one, problem.cfg_lane[cfg][None], cfg[None])
    return np.asarray(slot_cap[0])


def _detail(problem: Problem, plans: PlanArrays, metrics: BatchMetrics, b: int
            ) -> tuple[list[float], float, float, tuple[float, float]]:
    """Group shares within their lane, system P95, mean latency, worst TTFT / TPOT P95 of `b`.

    One code path for every shape: a pair's plan is the ladder's with shares
    ``(1 - s, s)`` of its one workload. Within a lane, groups take load in proportion to
    their capacity at the lane's P95 ``x_m*`` (``lambda_i ∝ r_i cap_i(x_m*)``), so each
    replica serves ``min(cap_i(x_m*), lambda_i / r_i)`` req/s; of that, workload w's requests
    run as its DB's do at the same utilization of the group's mix capacity
    (``u cap_w(x_m*)``, the harmonic model of `tuning._problem`). The system P95 is the
    mixture quantile of every (group, workload) latency distribution weighted by its
    request share; the mean is the weighted mean. With token targets
    (`Problem.with_token_targets`) the highest TTFT and TPOT P95 of any (group, workload) at
    the same rates (``(nan, nan)`` without).
    """
    view = _with_shares(plans, b)
    cfg, reps = view.config[0], view.replicas[0]
    assert view.shares is not None
    wl = problem.lane_loads(view.shares)[0]                              # (W, L)
    loads = wl.sum(axis=0)
    slot = _slot_caps(problem, view)
    one = len(problem.workloads) == 1
    shares = [0.0] * len(cfg)
    quants, means, weights = [], [], []
    tokens = problem.ttft_p95_s is not None or problem.tpot_p95_s is not None
    ttft: list[float] = []
    tpot: list[float] = []
    for m in range(problem.num_lanes):
        idx = [i for i, c in enumerate(cfg) if c >= 0 and problem.cfg_lane[c] == m]
        if not idx or loads[m] <= 0:
            continue
        x = float(metrics.model_p95_s[b, m])
        per = np.array([_at_level(problem, slot[i], x) for i in idx])
        # Per-replica rates are the capacities at x_m* (their sum is lambda_m up to rounding;
        # renormalizing could push a group a hair past its last unsaturated DB row).
        lam = per * reps[idx]
        lam = lam / lam.sum() if lam.sum() > 0 else np.full(len(idx), 1.0 / len(idx))
        for j, i in enumerate(idx):
            shares[i] = float(lam[j])
            if lam[j] <= 0:
                continue
            # (a group with no capacity even at x_m* runs idle: its unloaded latency counts)
            served = min(float(per[j]), float(lam[j] * loads[m] / reps[i]))
            for w in range(len(problem.workloads)):
                if wl[w, m] <= 0:
                    continue
                # one workload: its capacity is the group's (served as it is)
                rate = served if one or served <= 0 else served / float(per[j]) * float(
                    _at_level(problem, problem.caps[w][cfg[i]], x))
                q, mean, _ = problem.stream_db(w, cfg[i]).lookup(
                    np.array([problem.cfg_dbs[w, cfg[i]]]), np.array([rate]))
                quants.append(q[0])
                means.append(float(mean[0]))
                if tokens:
                    tt, tp = problem.stream_db(w, cfg[i]).token_p95(
                        np.array([problem.cfg_dbs[w, cfg[i]]]), np.array([rate]))
                    ttft.append(float(tt[0]))
                    tpot.append(float(tp[0]))
                weights.append(lam[j] * wl[w, m] / problem.rate_rps)
    worst = (max(ttft, default=math.nan), max((v for v in tpot if not math.isnan(v)),
                                               default=math.nan))
    if not weights:
        return shares, 0.0, 0.0, worst
    wts = np.asarray(weights)
    p95 = float(mixture_quantile(np.asarray(quants)[None], wts[None],
                                 list(problem.db.quantile_levels), 0.95)[0])
    return shares, p95, float((wts * np.asarray(means)).sum() / wts.sum()), worst


def _with_shares(plans: PlanArrays, b: int) -> PlanArrays:
    """Plan `b` alone, with its shares ``(1, W, K)`` (a pair's: ``(1 - s, s)``)."""
    s = plans.strong_share[b:b + 1]
    shares = (np.stack([1.0 - s, s], axis=-1)[:, None, :] if plans.shares is None
              else plans.shares[b:b + 1])
    return PlanArrays(s, plans.config[b:b + 1], plans.replicas[b:b + 1], shares)


def plan_from_arrays(problem: Problem, plans: PlanArrays, metrics: BatchMetrics, b: int,
                     extra: dict[str, object] | None = None) -> Plan:
    """Plan `b` of a batch as a `Plan` with predicted metrics and optimized shares."""
    shares, sys_p95, mean, (ttft, tpot) = _detail(problem, plans, metrics, b)
    groups = []
    for i, c in enumerate(plans.config[b]):
        if c < 0 or plans.replicas[b, i] <= 0:
            continue
        groups.append(Group(problem.models[problem.cfg_model[c]],
                            problem.gpu_types[problem.cfg_type[c]], int(problem.cfg_tp[c]),
                            int(problem.cfg_pp[c]), int(plans.replicas[b, i]),
                            round(shares[i], 6), _class_name(problem, c)))
    s = float(plans.strong_share[b])
    feasible = bool(metrics.feasible[b])
    if plans.shares is None:
        routing = Routing(s, problem.quality.threshold_for(s))
    else:
        routing = Routing(s, math.nan, models=problem.models, workloads=tuple(
            WorkloadRouting(name, tuple(float(v) for v in plans.shares[b, w]),
                            problem.cascades[w].thresholds_for(
                                np.cumsum(plans.shares[b, w, ::-1])[::-1][1:]),
                            float(problem.workload_rates[w]),
                            float(metrics.workload_quality[b, w]))
            for w, name in enumerate(problem.workloads)), length_classes=_length_routing(problem))
    predicted = Predicted(
        p95_s=float(metrics.p95_s[b]), system_p95_s=sys_p95, mean_s=mean,
        quality=float(metrics.quality[b]), cost_per_hour=float(metrics.cost_per_hour[b]),
        throughput_rps=problem.rate_rps if feasible else 0.0,
        capacity_rps=float(metrics.capacity_rps[b]),
        ttft_p95_s=None if problem.ttft_p95_s is None else ttft,
        tpot_p95_s=None if problem.tpot_p95_s is None else tpot)
    return Plan(routing, tuple(groups), predicted, scenario_summary(problem), dict(extra or {}))


def _class_name(problem: Problem, c: int) -> str | None:
    """Length class of config c (None without classes)."""
    return None if problem.cfg_class is None else problem.classes[int(problem.cfg_class[c])]


def _length_routing(problem: Problem) -> LengthRouting | None:
    """The plan's length classes: threshold and each workload's class shares."""
    if problem.threshold_tokens is None or problem.class_share is None:
        return None
    return LengthRouting(problem.threshold_tokens, {
        name: (float(problem.class_share[w, 0]), float(problem.class_share[w, 1]))
        for w, name in enumerate(problem.workloads)})


def scenario_summary(problem: Problem) -> dict[str, object]:
    """The scenario block written into plan files."""
    sc = problem.scenario
    models: object = ({"weak": problem.models[0], "strong": problem.models[1]}
                      if problem.num_models == 2 else list(problem.models))
    return {"name": sc.name, "rate_rps": problem.rate_rps, "budget_per_hour": problem.budget,
            "task": sc.task, "models": models,
            "gpus": {g: {"count": int(n), "price_per_hour": float(p)} for g, n, p in
                     zip(problem.gpu_types, problem.stock, problem.gpu_price, strict=True)},
            # the whole scenario, so that replanning can re-optimize for new traffic
            "spec": sc.model_dump(mode="json", exclude=(
                {"workloads"} if sc.workloads is None else {"workload", "task"}) | (
                {"length_classes"} if sc.length_classes is None else set()))}


def evaluate_plan(problem: Problem, plan: Plan, p95_target_s: float | None = None) -> Plan:
    """Predicted metrics of any plan, with its groups' shares re-optimized.

    Token targets: pass ``problem.with_token_targets(...)`` (``boute evaluate`` uses the
    plan's own goal's).

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
