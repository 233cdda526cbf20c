"""Exact deployment of a fixed routing: the min-cost polish of ladder and length-class plans.

For min-cost the search (`tuning._ladder.LadderEncoding`) finds the routing, and covers each
model's (each lane's) load greedily. Once the routing is fixed, the cheapest deployment
meeting the target P95 L is a small integer program, solved exactly here with HiGHS
(`scipy.optimize.milp`, which BoTorch already brings):

    minimize    sum_c price_c r_c
    subject to  sum_{c in lane l} cap_c(L) r_c >= lambda_l        every lane with load
                sum_{c on type t} gpus_c r_c   <= stock_t          every GPU type
                r_c <= R_c y_c,  sum_{c in slot (l, t)} y_c <= 1   one config per slot
                r_c integer >= 0, y_c binary

where ``cap_c(L)`` is config c's capacity at level L for its lane's workload mix
(`tuning._problem`, harmonic), ``lambda_l`` the lane's load and ``R_c`` the replicas of c its
type's stock holds. The planning P95 is at most L exactly when every lane's capacity at L
covers its load (capacity grows with the level), so this is the cheapest plan of that routing;
the evaluator re-checks it. `polish` applies it to the search's cheapest few routings.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp

from ._evaluator import PlanArrays, ladder_arrays
from ._problem import Problem

__all__ = ["POLISH_TOP", "exact_deployment", "polish_candidates"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

POLISH_TOP = 5
"""Routings (the cheapest admissible distinct ones the search found) given an exact deployment."""
MILP_TIME_LIMIT_S = 5.0
NEED_MARGIN = 1e-6


def _lane_caps(problem: Problem, shares: FloatArray, level_s: float
               ) -> tuple[FloatArray, FloatArray]:
    """Lane loads ``(L,)`` and each config's capacity at `level_s` for its lane's mix ``(C,)``."""
    from ._evaluator import _at_level

    wl = problem.lane_loads(shares[None])[0]                            # (W, L)
    loads = wl.sum(axis=0)
    at = _at_level(problem, problem.caps, level_s)                     # (W, C)
    lane = problem.cfg_lane
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(loads > 0, wl / loads, 0.0)[:, lane]            # (W, C)
        inv = np.where(frac > 0, frac / at, 0.0).sum(axis=0)
        cap = np.where(np.isfinite(inv) & (inv > 0), 1.0 / inv, 0.0)
    return loads, np.asarray(cap, dtype=np.float64)


def exact_deployment(problem: Problem, shares: FloatArray, level_s: float,
                     budget_per_hour: float | None = None) -> PlanArrays | None:
    """The cheapest deployment of routing `shares` ``(W, K)`` with planning P95 <= `level_s`.

    Returns the plan (one per (lane, GPU type) slot, as the search's), or None when no
    deployment within the stock (and budget) covers the load, or HiGHS hits its time limit.
    """
    pr = problem
    loads, cap = _lane_caps(pr, np.asarray(shares, dtype=np.float64), level_s)
    n_c = pr.num_configs
    lane = pr.cfg_lane
    live = (loads[lane] > 1e-12) & (cap > 0)
    r_max = np.where(live, pr.stock[pr.cfg_type] // pr.cfg_gpus, 0).astype(np.float64)
    rows, lo, hi = [], [], []
    for k in np.flatnonzero(loads > 1e-12):
        row = np.zeros(2 * n_c)
        row[:n_c] = np.where(lane == k, cap, 0.0)
        rows.append(row)
        lo.append(loads[k] * (1 + NEED_MARGIN))
        hi.append(np.inf)
    for t in range(len(pr.gpu_types)):
        row = np.zeros(2 * n_c)
        row[:n_c] = np.where(pr.cfg_type == t, pr.cfg_gpus, 0)
        rows.append(row)
        lo.append(0.0)
        hi.append(float(pr.stock[t]))
    if budget_per_hour is not None:
        row = np.zeros(2 * n_c)
        row[:n_c] = pr.cfg_price
        rows.append(row)
        lo.append(0.0)
        hi.append(budget_per_hour)
    link = np.zeros((n_c, 2 * n_c))                    # r_c - R_c y_c <= 0
    link[np.arange(n_c), np.arange(n_c)] = 1.0
    link[np.arange(n_c), n_c + np.arange(n_c)] = -r_max
    slots = lane * len(pr.gpu_types) + pr.cfg_type
    one = np.zeros((pr.num_slots, 2 * n_c))             # one config per slot
    one[slots, n_c + np.arange(n_c)] = 1.0
    a = np.vstack([np.asarray(rows), link, one])
    lb = np.concatenate([lo, np.full(n_c, -np.inf), np.zeros(pr.num_slots)])
    ub = np.concatenate([hi, np.zeros(n_c), np.ones(pr.num_slots)])
    cost = np.concatenate([pr.cfg_price, np.zeros(n_c)])
    res = milp(cost, constraints=LinearConstraint(a, lb, ub), integrality=np.ones(2 * n_c),
               bounds=Bounds(np.zeros(2 * n_c), np.concatenate([r_max, np.ones(n_c)])),
               options={"time_limit": MILP_TIME_LIMIT_S})
    if res.status != 0 or res.x is None:
        return None
    reps = np.rint(res.x[:n_c]).astype(np.int64)
    cfg = np.full(pr.num_slots, -1, dtype=np.int64)
    out_reps = np.zeros(pr.num_slots, dtype=np.int64)
    for c in np.flatnonzero(reps > 0):
        cfg[slots[c]] = c
        out_reps[slots[c]] = reps[c]
    return ladder_arrays(pr, np.asarray(shares)[None], cfg[None], out_reps[None])


def polish_candidates(problem: Problem, plans: PlanArrays, order: IntArray, level_s: float,
                      budget_per_hour: float | None = None) -> list[PlanArrays]:
    """Exact deployments of the first `POLISH_TOP` distinct routings of `plans` in `order`."""
    assert plans.shares is not None
    seen: list[FloatArray] = []
    out = []
    for b in order:
        sh = plans.shares[b]
        if any(np.allclose(sh, s, atol=1e-9) for s in seen):
            continue
        seen.append(sh)
        best = exact_deployment(problem, sh, level_s, budget_per_hour)
        if best is not None:
            out.append(best)
        if len(seen) >= POLISH_TOP:
            break
    return out
