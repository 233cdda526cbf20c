"""Exact reference solver: a knapsack DP over GPU types with dominance pruning.

Plan space: at most one replica group per (model, GPU type), any candidate config, any replica
count, any strong share ``s`` in [0, 1] (continuous). A plan meets planning P95 <= x at share s
iff ``C_w(x) >= (1 - s) lambda`` and ``C_s(x) >= s lambda`` (see `tuning._problem`).

For one latency level x, the DP runs over GPU types. A type's *options* are pairs (GPUs for the
weak model, GPUs for the strong model) within its stock; for each GPU count a model gets the
most capacity any (config, replicas) using exactly that many GPUs gives at x (more GPUs with no
more capacity are dropped). A DP *state* is (weak capacity, strong capacity, cost) with
capacities clipped at ``clip`` (more is never needed). After each type, states dominated by
another state (>= both capacities at <= cost) are removed, so the states left are exactly the
Pareto set of what the types so far can achieve. From the final states:

* feasible shares at x: state (cw, cs) serves every s in ``[1 - cw/lambda, cs/lambda]``, so the
  largest share with P95 <= x under the budget is ``s_max(x) = max {min(1, cs/lambda) : cw + cs
  >= lambda}``; the Pareto front of (quality, P95) is ``x -> Q(s_max(x))``, non-decreasing;
* min-cost for (quality >= Q, P95 <= L): the cheapest state with ``cs/lambda >= max(s_Q,
  1 - cw/lambda)`` at x = L, without the budget;
* max-throughput at level L: the state maximizing ``alpha`` such that the shares' loads scaled by
  alpha fit, over ``s >= s_Q``.

The front is computed on the latency levels and refined where it jumps, and its hypervolume is
bracketed: on ``[x_k, x_{k+1}]``, ``s_max`` lies between its values at the ends, which gives a
lower and an upper bound of the true hypervolume (`ExactFront.hv_bounds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import BouteError

from ._deadline import CpuDeadline
from ._evaluator import PlanArrays
from ._problem import STRONG, WEAK, Problem

__all__ = ["ExactBudgetExceeded", "ExactFront", "TypeFilter", "exact_front",
           "exact_max_throughput", "exact_min_cost", "solve_level"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# (gpu type index, GPUs for weak, GPUs for strong) -> allowed?
TypeFilter = Callable[[int, int, int], bool]

MAX_DP_PAIRS = 20_000_000
"""Most (state, option) pairs one DP step may form under a deadline (~1 GB of arrays)."""


class ExactBudgetExceeded(BouteError, RuntimeError):
    """The DP ran past its deadline (or would need more memory than a deadline run allows)."""


def _check_deadline(deadline: CpuDeadline | None, where: str) -> None:
    if deadline is not None and deadline.passed():
        raise ExactBudgetExceeded(f"the exact DP ran past its time budget ({where})")


@dataclass(frozen=True)
class _Options:
    """Per GPU type: option arrays (weak GPUs, strong GPUs, cw, cs, cost, configs, replicas)."""

    cw: FloatArray
    cs: FloatArray
    cost: FloatArray
    cfg: IntArray      # (O, 2) config of (weak, strong), -1 none
    reps: IntArray     # (O, 2)


def _model_staircase(problem: Problem, caps: FloatArray, model: int, t: int
                     ) -> list[tuple[int, float, int, int]]:
    """(GPUs, capacity, config, replicas) with capacity strictly rising in GPUs, from (0, 0)."""
    best: dict[int, tuple[float, int, int]] = {}
    for c in problem.configs_of(model, t):
        g = int(problem.cfg_gpus[c])
        for r in range(1, int(problem.stock[t]) // g + 1):
            k, cap = r * g, r * float(caps[c])
            if cap > 0 and (k not in best or cap > best[k][0]):
                best[k] = (cap, int(c), r)
    out = [(0, 0.0, -1, 0)]
    for k in sorted(best):
        if best[k][0] > out[-1][1]:
            out.append((k, *best[k]))
    return out


def _type_options(problem: Problem, caps: FloatArray, t: int, allow: TypeFilter | None
                  ) -> _Options:
    weak = _model_staircase(problem, caps, WEAK, t)
    strong = _model_staircase(problem, caps, STRONG, t)
    rows = []
    for kw, cw, fw, rw in weak:
        for ks, cs, fs, rs in strong:
            if kw + ks <= problem.stock[t] and (allow is None or allow(t, kw, ks)):
                rows.append((cw, cs, (kw + ks) * problem.gpu_price[t], fw, fs, rw, rs))
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return _Options(a[:, 0], a[:, 1], a[:, 2], a[:, 3:5].astype(np.int64),
                    a[:, 5:7].astype(np.int64))


def _pareto(cw: FloatArray, cs: FloatArray, cost: FloatArray, deadline: CpuDeadline | None = None
            ) -> IntArray:
    """Indices of states not dominated (>= cw, >= cs, <= cost, one strictly better)."""
    order = np.lexsort((-cs, -cw, cost))
    cw, cs, cost = cw[order], cs[order], cost[order]
    # Exact duplicates: keep the first.
    keep = np.ones(len(order), dtype=bool)
    chunk = 512
    for start in range(0, len(order), chunk):
        _check_deadline(deadline, f"pruning {len(order):,} states")
        stop = min(start + chunk, len(order))
        # A state i is dominated by an earlier (cheaper or equal, sorted) kept state j < i.
        j = np.arange(stop)
        dom = ((cw[None, :stop] >= cw[start:stop, None]) & (cs[None, :stop] >= cs[start:stop, None])
               & (j[None, :] < np.arange(start, stop)[:, None]) & keep[None, :stop])
        keep[start:stop] &= ~dom.any(axis=1)
    return np.asarray(order[keep], dtype=np.int64)


@dataclass(frozen=True)
class LevelStates:
    """Pareto states of one DP run: capacities, cost and the chosen option per type."""

    cw: FloatArray
    cs: FloatArray
    cost: FloatArray
    choice: IntArray           # (S, T) option index per type
    options: list[_Options]

    def plan(self, i: int) -> tuple[IntArray, IntArray]:
        """Config and replica slots (2T) of state i."""
        cfg, reps = [], []
        for t, opts in enumerate(self.options):
            o = self.choice[i, t]
            cfg.extend(opts.cfg[o].tolist())
            reps.extend(opts.reps[o].tolist())
        return np.asarray(cfg, dtype=np.int64), np.asarray(reps, dtype=np.int64)


def solve_level(problem: Problem, x_s: float, *, budget: float | None, clip: float,
                allow: TypeFilter | None = None, deadline: CpuDeadline | None = None
                ) -> LevelStates:
    """DP over GPU types at latency level `x_s` (see the module docstring).

    Raises:
        ExactBudgetExceeded: past `deadline` (CPU seconds of this process, capped in wall
            seconds: `tuning._deadline.CpuDeadline`), or a step would
            form more than `MAX_DP_PAIRS` (state, option) pairs while a deadline is set.

    """
    caps = problem.cap_at(x_s)
    options = []
    for t in range(len(problem.gpu_types)):
        _check_deadline(deadline, f"options of GPU type {problem.gpu_types[t]}")
        options.append(_type_options(problem, caps, t, allow))
    cw = np.zeros(1)
    cs = np.zeros(1)
    cost = np.zeros(1)
    choice = np.zeros((1, 0), dtype=np.int64)
    for opts in options:
        if deadline is not None and len(cw) * len(opts.cw) > MAX_DP_PAIRS:
            raise ExactBudgetExceeded(f"one DP step would pair {len(cw):,} states with "
                                      f"{len(opts.cw):,} options")
        ncw = np.minimum(cw[:, None] + opts.cw[None, :], clip).ravel()
        ncs = np.minimum(cs[:, None] + opts.cs[None, :], clip).ravel()
        ncost = (cost[:, None] + opts.cost[None, :]).ravel()
        si, oi = np.divmod(np.arange(len(ncw)), len(opts.cw))
        ok = ncost <= budget + 1e-9 if budget is not None else np.ones(len(ncw), dtype=bool)
        idx = np.flatnonzero(ok)
        keep = idx[_pareto(ncw[idx], ncs[idx], ncost[idx], deadline)]
        cw, cs, cost = ncw[keep], ncs[keep], ncost[keep]
        choice = np.concatenate([choice[si[keep]], oi[keep, None]], axis=1)
    return LevelStates(cw, cs, cost, choice, options)


def _share_range(states: LevelStates, lam: float, s_min: float
                 ) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Per state, the strong shares it serves: ``[lo, hi]`` and whether that is non-empty."""
    hi = np.minimum(1.0, states.cs / lam)
    lo = np.maximum(s_min, 1.0 - states.cw / lam)
    return lo, hi, hi >= lo - 1e-12


def _s_max(states: LevelStates, lam: float) -> tuple[float, int]:
    """Largest feasible strong share and its state, or (-1, -1)."""
    _, hi, ok = _share_range(states, lam, 0.0)
    if not ok.any():
        return -1.0, -1
    i = int(np.flatnonzero(ok)[np.argmax(hi[ok])])
    return float(hi[i]), i


@dataclass(frozen=True)
class ExactFront:
    """The exact (quality, P95) front: ``s_max`` at latency levels, with its plans.

    Attributes:
        levels_s: increasing latency levels where the DP ran.
        s_max: ``(L,)`` largest feasible strong share at each level (-1: none).
        plans: the plan of each level (strong share s_max) as arrays.
        dp_runs, seconds: effort.

    """

    levels_s: FloatArray
    s_max: FloatArray
    plans: PlanArrays
    dp_runs: int
    seconds: float

    def points(self, problem: Problem) -> tuple[FloatArray, FloatArray]:
        """Front points (P95, quality) at the levels where a plan exists."""
        ok = self.s_max >= 0
        return self.levels_s[ok], problem.quality(self.s_max[ok])

    def hv_bounds(self, problem: Problem) -> tuple[float, float]:
        """Lower and upper bounds of the true front's hypervolume (see `tuning._front`)."""
        from ._front import hypervolume

        ok = self.s_max >= 0
        x, s = self.levels_s[ok], self.s_max[ok]
        lower = hypervolume(problem, x, problem.quality(s))
        # Upper: on [x_k, x_k+1] the share can be up to s_max(x_k+1); from the first feasible
        # level down to the level below it, up to s_max of that first level.
        idx = np.flatnonzero(ok)
        prev = np.where(idx > 0, self.levels_s[np.maximum(idx - 1, 0)], x)
        upper = hypervolume(problem, prev, problem.quality(s))
        return lower, max(upper, lower)


def exact_front(problem: Problem, *, refine_tol: float = 0.002, max_runs: int = 2000,
                allow: TypeFilter | None = None, deadline: CpuDeadline | None = None
                ) -> ExactFront:
    """The exact front under the scenario's budget (see the module docstring).

    Runs the DP on every latency level, then bisects the level intervals contributing most to
    the gap between the hypervolume bounds until it is below `refine_tol` (relative).

    Raises:
        ExactBudgetExceeded: past `deadline` (`solve_level`).

    """
    start = time.perf_counter()
    lam = problem.rate_rps
    results: dict[float, tuple[float, IntArray, IntArray]] = {}

    def run(x: float) -> None:
        st = solve_level(problem, x, budget=problem.budget, clip=lam, allow=allow,
                         deadline=deadline)
        smax, i = _s_max(st, lam)
        cfg, reps = st.plan(i) if i >= 0 else (np.full(2 * len(problem.gpu_types), -1),
                                                 np.zeros(2 * len(problem.gpu_types),
                                                          dtype=np.int64))
        results[x] = (smax, cfg, reps)

    for x in problem.levels_s:
        run(float(x))
    runs = len(problem.levels_s)

    def gap() -> tuple[float, float, float]:
        xs = np.array(sorted(results))
        sm = np.array([results[x][0] for x in xs])
        q = np.where(sm >= 0, problem.quality(np.maximum(sm, 0)), -np.inf)
        ql = problem.quality(0.0)
        span = float(problem.quality(1.0)) - float(ql) or 1.0
        qn = np.maximum((q - ql) / span, 0.0)
        dy = np.diff(np.log(xs))
        contrib = dy * (qn[1:] - qn[:-1])
        k = int(np.argmax(contrib))
        total = float((dy * qn[:-1]).sum())
        return float(contrib.sum()) / max(total, 1e-12), float(xs[k]), float(xs[k + 1])

    while runs < max_runs:
        rel, a, b = gap()
        if rel <= refine_tol:
            break
        run(float(np.sqrt(a * b)))
        runs += 1
    xs = np.array(sorted(results))
    sm = np.array([results[x][0] for x in xs])
    cfg = np.stack([results[x][1] for x in xs])
    reps = np.stack([results[x][2] for x in xs])
    return ExactFront(xs, sm, PlanArrays(np.maximum(sm, 0.0), cfg, reps), runs,
                      time.perf_counter() - start)


def exact_min_cost(problem: Problem, quality: float, p95_s: float, *,
                   allow: TypeFilter | None = None, strong_only: bool = False,
                   deadline: CpuDeadline | None = None) -> PlanArrays | None:
    """The cheapest plan with quality >= `quality` and planning P95 <= `p95_s` (no budget).

    With `strong_only`, every query goes to the strong model (s = 1). Returns None if no plan
    of the space meets the targets.
    """
    lam = problem.rate_rps
    s_min = 1.0 if strong_only else problem.quality.min_share_for(quality)
    st = solve_level(problem, p95_s, budget=None, clip=lam, allow=allow, deadline=deadline)
    lo, _, ok = _share_range(st, lam, s_min)
    if not ok.any():
        return None
    i = int(np.flatnonzero(ok)[np.argmin(st.cost[ok])])
    cfg, reps = st.plan(i)
    return PlanArrays(np.array([min(1.0, lo[i])]), cfg[None], reps[None])


def exact_max_throughput(problem: Problem, quality: float, p95_s: float | None = None, *,
                         allow: TypeFilter | None = None, deadline: CpuDeadline | None = None
                         ) -> PlanArrays | None:
    """The plan with the largest capacity (every group P95 <= L) under the budget."""
    lam = problem.rate_rps
    level = problem.ceiling_s if p95_s is None else p95_s
    s_min = problem.quality.min_share_for(quality)
    st = solve_level(problem, level, budget=problem.budget, clip=np.inf, allow=allow,
                     deadline=deadline)
    tot = st.cw + st.cs
    with np.errstate(divide="ignore", invalid="ignore"):
        s_bal = np.where(tot > 0, st.cs / tot, 0.0)
        s = np.maximum(s_bal, s_min)
        alpha = np.minimum(np.where(s < 1, st.cw / ((1 - s) * lam), np.inf),
                           np.where(s > 0, st.cs / (s * lam), np.inf))
    alpha = np.where(np.isfinite(alpha), alpha, 0.0)
    if not (alpha > 0).any():
        return None
    i = int(np.argmax(alpha))
    cfg, reps = st.plan(i)
    return PlanArrays(np.array([s[i]]), cfg[None], reps[None])
