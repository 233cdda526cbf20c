"""Bounds beyond the pair: a mixed-integer program per latency level, and what it certifies.

The pair's exact DP (`tuning._exact`) covers two models and one workload. For K models, W
workloads and length classes, one latency level x is a small mixed-integer program (HiGHS,
`scipy.optimize.milp`), the *level program*:

Notation: configs c (lane l_c = (model, class), GPU type t_c, g_c GPUs, price_c $/h),
``cap_{w,c}(x)`` req/s of one replica of c on workload w's requests at level x
(`tuning._problem`), stock_t, workload rates lambda_w, class shares p_{w,k}, tail shares
``S_{w,k} = sum_{j >= k} s_{w,j}``.

Variables: replicas r_c (integer, <= stock_{t_c} // g_c), y_c (binary: c is its slot's
config), shares s_{w,m} >= 0, with several workloads flows f_{w,c} >= 0 (req/s of workload w
on config c), and per workload and tail the segments of the quality curve.

    C1  sum_m s_{w,m} = 1                                              every workload
    C2  one workload:  sum_{c in l} cap_c(x) r_c >= sum_w lambda_w p_{w,k(l)} s_{w,m(l)}
        several:       sum_{c in l} f_{w,c} = lambda_w p_{w,k(l)} s_{w,m(l)}  (w, lane l)
                       sum_w f_{w,c} / cap_{w,c}(x) <= r_c                    every config
    C3  sum_{c on t} g_c r_c <= stock_t                                every GPU type
    C4  sum_c price_c r_c <= budget                                    pareto (not min-cost)
    C5  r_c <= R_c y_c,  sum_{c in slot (l, t)} y_c <= 1                one config per slot
    C6  Q_w(S_w) = q_w0 + sum_k h_{w,k}(S_{w,k})                        quality (separable)
    C7  several workloads: for each lane l and workload v >= 2 one cell j of
        ``[rho_j, rho_{j+1}]`` (`MIX_CELLS` equal cells of [0, 1], binaries z_{l,v,j}) holds
        v's share of the lane's load and of every group's flows (big-M = total rate when
        z_{l,v,j} = 0)

Objective: pareto, the summary quality (one workload: Q; several: the lowest normalized
``(Q_w - Q_w^low) / (Q_w^high - Q_w^low)``, as `tuning._evaluator`), maximized under C4;
min-cost, ``sum_c price_c r_c`` minimized with ``Q_w >= floor_w``.

C6: every `profiling.CascadeQuality` is a sum of one piecewise-linear term per tail
(published: ``(q_k - q_{k-1}) g(S_k)``; records: ``(P_k(n S_k) - P_{k-1}(n S_k)) / n``), written
with one variable per segment; a curve that is not concave gets the incremental binaries
(segment j + 1 only once segment j is full), which keeps it exact, up to
`MAX_EXACT_SEGMENTS` segments; longer curves take their upper concave envelope (a relaxation).

**What it is.** With one workload (length classes or not) each replica's capacity does not
depend on the routing, and C1-C6 are exactly the plan space and the evaluator's P95 <= x
(`tuning._evaluator`): the program's optimum is the best plan at level x, and its incumbent is
that plan. With several workloads the evaluator serves a lane's mix in the same proportions on
every group (``1 / sum_w (f_w / cap_w)``, harmonic); C2 and C7 let each group take any mix in
the lane's cell, a superset (a same-mix plan gives f_{w,g} = its share of the lane, and C2
and C7 then hold, with the cell that holds the lane's mix), so the
optimum is an *upper bound* (pareto) / *lower bound* (min-cost), and the incumbent's routing
is a candidate for an exact deployment (`tuning._polish`). Either way HiGHS's *dual bound* is
what is certified (valid when it stops at a time limit too).

**Fronts.** The best quality at level x, Q*(x), is non-decreasing in x (capacities are). From
bounds B(x_i) at levels x_0 < ... < x_n (x_0 the first level with any capacity: below it
nothing serves), Q*(x) <= B(x_i) on (x_{i-1}, x_i], so the staircase of the points
(x_{i-1}, B(x_i)) dominates the true front, and its hypervolume (`tuning._front`) bounds
the true front's from above. `front_bound` bisects the levels where the staircase and the
plans found differ most, as `tuning._exact.exact_front` does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from profiling import CascadeQuality

from ._evaluator import BUDGET_TOL, PlanArrays, _at_level, ladder_arrays
from ._problem import Problem

__all__ = ["MAX_EXACT_SEGMENTS", "LevelSolution", "level_program", "tail_pieces"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAX_EXACT_SEGMENTS = 32
"""Segments of a non-concave quality term kept exact with binaries; more: concave envelope."""
MIP_REL_GAP = 1e-6
"""HiGHS's relative optimality gap: the dual bound is what certificates use, whatever it is."""
LEVEL_TIME_LIMIT_S = 5.0
MIX_CELLS = 8
"""Several workloads: cells per workload of a lane's mix (C7); more is tighter and slower."""


HIGHS_NOISE = b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();"
"""A line HiGHS 1.12 (scipy 1.17) prints with C ``printf`` before its repair LP, whatever its
``output_flag`` / ``log_to_console`` options (no option governs it): a diagnostic, not an
error; `_highs_stdout_filtered` drops it."""


@contextlib.contextmanager
def _highs_stdout_filtered() -> Iterator[None]:
    """Catch file descriptor 1 while HiGHS runs; pass all but `HIGHS_NOISE` on to stderr.

    HiGHS prints some MIP diagnostics with C ``printf`` whatever its options, which would
    corrupt ``--json`` output on stdout; the known diagnostic line is dropped, anything else
    goes to stderr.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as caught:
        try:
            os.dup2(caught.fileno(), 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            caught.seek(0)
            rest = [line for line in caught.read().splitlines(keepends=True)
                    if line.rstrip() != HIGHS_NOISE]
            if rest:
                sys.stderr.flush()
                os.write(2, b"".join(rest))


@dataclass(frozen=True)
class TailPiece:
    """One tail's quality term ``h(S)`` on its breakpoints: ``xs`` increasing in [0, 1]."""

    xs: FloatArray
    ys: FloatArray
    exact: bool          # False: the upper concave envelope of the term


def _upper_hull(xs: FloatArray, ys: FloatArray) -> IntArray:
    """Indices of the upper concave envelope's vertices (monotone chain)."""
    hull: list[int] = []
    for i in range(len(xs)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b lies on or below the chord a -> i: drop it
            if (ys[b] - ys[a]) * (xs[i] - xs[a]) <= (ys[i] - ys[a]) * (xs[b] - xs[a]) + 1e-15:
                hull.pop()
            else:
                break
        hull.append(i)
    return np.asarray(hull, dtype=np.int64)


def tail_pieces(cascade: CascadeQuality) -> tuple[float, list[TailPiece]]:
    """Quality as ``q0 + sum_k h_k(S_k)``: q0 and one piecewise-linear term per tail.

    ``h_k(v) = Q(1, .., 1, v, 0, .., 0) - Q(1, .., 1, 0, 0, .., 0)`` (v at tail k), on the
    breakpoints of the cascade's own form (the pair's or the shape's knots, or ``i / n`` for
    n eval records), so the terms are exact; the sum is checked against the cascade.
    """
    k_tails = cascade.num_models - 1
    if cascade.pair is not None:
        knots = np.asarray(cascade.pair.shares, dtype=np.float64)
    elif cascade.shape is not None:
        knots = np.asarray(cascade.shape.shares, dtype=np.float64)
    else:
        n = len(cascade.sorted_scores)
        knots = np.arange(n + 1, dtype=np.float64) / n
    q0 = float(cascade(np.zeros(k_tails)))
    pieces = []
    for k in range(k_tails):
        t = np.zeros((len(knots), k_tails))
        t[:, :k] = 1.0
        base = np.zeros(k_tails)
        base[:k] = 1.0
        t[:, k] = knots
        ys = cascade(t) - float(cascade(base))
        slopes = np.diff(ys) / np.diff(knots)
        concave = bool(np.all(np.diff(slopes) <= 1e-9))
        if concave or len(knots) - 1 <= MAX_EXACT_SEGMENTS:
            pieces.append(TailPiece(knots, np.asarray(ys), True))
        else:
            keep = _upper_hull(knots, ys)
            pieces.append(TailPiece(knots[keep], np.asarray(ys[keep]), False))
    # Separability (both forms of CascadeQuality are sums of per-tail terms): check it.
    rng = np.random.default_rng(0)
    pts = -np.sort(-rng.random((16, k_tails)), axis=1)
    approx = q0 + sum(np.interp(pts[:, k], pieces[k].xs, pieces[k].ys)
                      for k in range(k_tails) if pieces[k].exact)
    if all(p.exact for p in pieces):
        assert np.allclose(approx, cascade(pts), atol=1e-9), "cascade is not separable"
    return q0, pieces


@dataclass(frozen=True)
class LevelSolution:
    """The level program's outcome at one level.

    Attributes:
        level_s: the level x.
        bound: dual bound of the objective (pareto: summary quality, an upper bound;
            min-cost: $/h, a lower bound); -inf (pareto) / +inf (min-cost) when infeasible.
        value: the incumbent's objective (nan when none).
        plan: the incumbent as a plan (its routing and deployment), or None.
        exact: the program is exactly the plan space (one workload, exact quality terms).
        seconds: HiGHS's wall time.

    """

    level_s: float
    bound: float
    value: float
    plan: PlanArrays | None
    exact: bool
    seconds: float


class _Layout:
    """Column indices of the level program's variables."""

    def __init__(self) -> None:
        self.n = 0

    def take(self, k: int) -> IntArray:
        out = np.arange(self.n, self.n + k, dtype=np.int64)
        self.n += k
        return out


def level_program(problem: Problem, level_s: float, *, mode: str,
                  budget_per_hour: float | None = None,
                  floors: tuple[float | None, ...] | None = None,
                  time_limit_s: float = LEVEL_TIME_LIMIT_S,
                  mix_cells: int = MIX_CELLS) -> LevelSolution:
    """Solve the level program at `level_s` (see the module docstring).

    Args:
        problem: any planning problem (the pair too: it is then exact, as the pair DP).
        level_s: the latency level x every lane must meet.
        mode: ``pareto`` (maximize the summary quality) or ``min-cost``.
        budget_per_hour: C4 (pareto); None: no budget.
        floors: each workload's quality floor (None entries: none); min-cost needs them.
        time_limit_s: HiGHS's limit; the dual bound stays valid when it is reached.
        mix_cells: several workloads: cells of each workload's share of a lane's mix (C7).

    """
    pr = problem
    n_w, n_m, n_t, n_c = len(pr.workloads), pr.num_models, len(pr.gpu_types), pr.num_configs
    n_cls = max(1, len(pr.classes))
    caps = _at_level(pr, pr.caps, level_s)                       # (W, C)
    live = caps.max(axis=0) > 0
    lay = _Layout()
    r = lay.take(n_c)
    y = lay.take(n_c)
    s = lay.take(n_w * n_m).reshape(n_w, n_m)
    several = n_w > 1
    f = lay.take(n_w * n_c).reshape(n_w, n_c) if several else None
    exact = not several
    q_terms: list[list[tuple[IntArray, IntArray | None, TailPiece]]] = []
    q0 = []
    for w in range(n_w):
        base, pieces = tail_pieces(pr.cascades[w])
        q0.append(base)
        terms = []
        for piece in pieces:
            exact &= piece.exact
            seg = lay.take(len(piece.xs) - 1)
            slopes = np.diff(piece.ys) / np.diff(piece.xs)
            binaries = None if np.all(np.diff(slopes) <= 1e-9) else lay.take(len(seg) - 1)
            terms.append((seg, binaries, piece))
        q_terms.append(terms)
    t_obj = lay.take(1)[0] if mode == "pareto" and several else -1
    n_cells = mix_cells if several else 0
    z = (lay.take(pr.num_lanes * (n_w - 1) * n_cells).reshape(pr.num_lanes, n_w - 1, n_cells)
         if several else None)
    nv = lay.n
    lb, ub = np.zeros(nv), np.full(nv, np.inf)
    integer = np.zeros(nv)
    r_max = np.where(live, pr.stock[pr.cfg_type] // pr.cfg_gpus, 0).astype(np.float64)
    ub[r], integer[r] = r_max, 1
    ub[y], integer[y] = 1.0, 1
    ub[s.ravel()] = 1.0
    # The constraint matrix as COO triplets (row, column, value): the same matrix as dense
    # rows, without building and scanning (rows x nv) floats on every level.
    at_row: list[int] = []
    at_col: list[int] = []
    at_val: list[float] = []
    lo: list[float] = []
    hi: list[float] = []

    def add(coef: dict[int, float] | FloatArray, low: float, high: float) -> None:
        i = len(lo)
        if isinstance(coef, dict):
            at_col.extend(coef)
            at_val.extend(coef.values())
            at_row.extend([i] * len(coef))
        else:
            nz = np.flatnonzero(coef)
            at_col.extend(nz.tolist())
            at_val.extend(np.asarray(coef)[nz].tolist())
            at_row.extend([i] * len(nz))
        lo.append(low)
        hi.append(high)

    for w in range(n_w):                                           # C1
        add({int(i): 1.0 for i in s[w]}, 1.0, 1.0)
    share = (np.ones((n_w, 1)) if pr.class_share is None else pr.class_share)   # (W, n_cls)
    lane = pr.cfg_lane
    for ln in range(pr.num_lanes):                                 # C2
        m, k = ln // n_cls, ln % n_cls
        mine = np.flatnonzero((lane == ln) & live)
        if f is None:
            coef = {int(c): float(caps[0, c]) for c in mine}
            coef[int(s[0, m])] = coef.get(int(s[0, m]), 0.0) - float(
                pr.workload_rates[0] * share[0, k])
            add(coef, 0.0, np.inf)
        else:
            for w in range(n_w):
                coef = {int(f[w, c]): 1.0 for c in mine if caps[w, c] > 0}
                coef[int(s[w, m])] = -float(pr.workload_rates[w] * share[w, k])
                add(coef, 0.0, 0.0)
    if f is not None and z is not None:                            # C7
        edges = np.linspace(0.0, 1.0, n_cells + 1)
        big = float(pr.workload_rates.sum())
        ub[z.ravel()], integer[z.ravel()] = 1.0, 1
        for ln in range(pr.num_lanes):
            m, k = ln // n_cls, ln % n_cls
            load = {int(s[w, m]): float(pr.workload_rates[w] * share[w, k]) for w in range(n_w)}
            mine = np.flatnonzero((lane == ln) & live)
            for v in range(1, n_w):
                add({int(i): 1.0 for i in z[ln, v - 1]}, 1.0, 1.0)
                for j in range(n_cells):
                    zz = int(z[ln, v - 1, j])
                    for rho, sign in ((edges[j], 1.0), (edges[j + 1], -1.0)):
                        # sign * (L_v - rho * Lambda) >= -M (1 - z): the lane's mix in cell j
                        coef = {i: -sign * rho * a for i, a in load.items()}
                        coef[int(s[v, m])] += sign * load[int(s[v, m])]
                        coef[zz] = -big
                        add(coef, -big, np.inf)
                        for c in mine:     # and every group's (same mix, up to the cell)
                            coef = {int(f[w, c]): -sign * rho for w in range(n_w)
                                    if caps[w, c] > 0}
                            if caps[v, c] > 0:
                                coef[int(f[v, c])] = coef.get(int(f[v, c]), 0.0) + sign
                            coef[zz] = -big
                            add(coef, -big, np.inf)
    if f is not None:
        for c in range(n_c):
            ub[f[:, c]] = np.where(caps[:, c] > 0, np.inf, 0.0)
            if not live[c]:
                continue
            coef = {int(f[w, c]): 1.0 / float(caps[w, c]) for w in range(n_w) if caps[w, c] > 0}
            coef[int(r[c])] = -1.0
            add(coef, -np.inf, 0.0)
    for t in range(n_t):                                           # C3
        on = np.flatnonzero(pr.cfg_type == t)
        add({int(r[c]): float(pr.cfg_gpus[c]) for c in on}, 0.0, float(pr.stock[t]))
    cost_row = np.zeros(nv)
    cost_row[r] = pr.cfg_price
    if budget_per_hour is not None:                                # C4
        add(cost_row, 0.0, budget_per_hour + BUDGET_TOL)
    for c in range(n_c):                                           # C5
        add({int(r[c]): 1.0, int(y[c]): -r_max[c]}, -np.inf, 0.0)
    slots = lane * n_t + pr.cfg_type
    for sl in np.unique(slots):
        add({int(y[c]): 1.0 for c in np.flatnonzero(slots == sl)}, 0.0, 1.0)
    quality: list[dict[int, float]] = []                           # C6
    for w in range(n_w):
        qrow: dict[int, float] = {}
        for k, (seg, binaries, piece) in enumerate(q_terms[w]):
            lengths = np.diff(piece.xs)
            ub[seg] = lengths
            tail = {int(i): 1.0 for i in s[w, k + 1:]}
            for i in seg:
                tail[int(i)] = -1.0
            add(tail, 0.0, 0.0)
            for i, slope in zip(seg, np.diff(piece.ys) / lengths, strict=True):
                qrow[int(i)] = float(slope)
            if binaries is not None:
                ub[binaries], integer[binaries] = 1.0, 1
                for j, zb in enumerate(binaries):      # segment j full before j + 1 opens
                    add({int(seg[j]): 1.0, int(zb): -float(lengths[j])}, 0.0, np.inf)
                    add({int(seg[j + 1]): 1.0, int(zb): -float(lengths[j + 1])}, -np.inf, 0.0)
        quality.append(qrow)
    objective = np.zeros(nv)
    if mode == "pareto":
        if t_obj < 0:
            for i, slope in quality[0].items():
                objective[i] = -slope
        else:
            lb[t_obj], ub[t_obj] = -np.inf, np.inf
            objective[t_obj] = -1.0
            for w in range(n_w):
                c_w = pr.cascades[w]
                span = (c_w.highest - c_w.lowest) or 1.0
                coef = {i: -a / span for i, a in quality[w].items()}
                coef[int(t_obj)] = 1.0
                add(coef, -np.inf, (q0[w] - c_w.lowest) / span)
    else:
        objective = cost_row.copy()
        for w, floor in enumerate(floors or ()):
            if floor is not None:
                add(quality[w], floor - q0[w] - 1e-9, np.inf)
    start = time.perf_counter()
    with _highs_stdout_filtered():
        matrix = coo_array((np.asarray(at_val, dtype=np.float64),
                            (np.asarray(at_row, dtype=np.int64),
                             np.asarray(at_col, dtype=np.int64))), shape=(len(lo), nv)).tocsc()
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        res = milp(objective, constraints=LinearConstraint(matrix, lo, hi),
                   integrality=integer, bounds=Bounds(lb, ub),
                   options={"time_limit": time_limit_s, "mip_rel_gap": MIP_REL_GAP})
    seconds = time.perf_counter() - start
    sign = -1.0 if mode == "pareto" else 1.0
    pareto_q0 = q0[0] if t_obj < 0 else 0.0
    if res.status == 2 or (res.x is None and res.status != 1):     # infeasible
        return LevelSolution(level_s, sign * np.inf, np.nan, None, exact, seconds)
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not np.isfinite(dual):
        dual = res.fun
    if dual is None:        # stopped at the time limit before any bound: the trivial ones
        top = float(pr.cascades[0].highest) if t_obj < 0 else 1.0
        return LevelSolution(level_s, top if mode == "pareto" else 0.0, np.nan, None, False,
                             seconds)
    bound = sign * float(dual) + (pareto_q0 if mode == "pareto" else 0.0)
    if res.x is None:
        return LevelSolution(level_s, bound, np.nan, None, exact, seconds)
    value = sign * float(res.fun) + (pareto_q0 if mode == "pareto" else 0.0)
    reps = np.rint(res.x[r]).astype(np.int64)
    cfg = np.full(pr.num_slots, -1, dtype=np.int64)
    out_reps = np.zeros(pr.num_slots, dtype=np.int64)
    for c in np.flatnonzero(reps > 0):
        cfg[slots[c]] = c
        out_reps[slots[c]] = reps[c]
    shares = np.clip(res.x[s], 0.0, 1.0)
    shares = shares / shares.sum(axis=1, keepdims=True)
    plan = ladder_arrays(pr, shares[None], cfg[None], out_reps[None])
    return LevelSolution(level_s, bound, value, plan, exact and res.status == 0, seconds)
