"""Search encodings: a point of the unit cube -> a plan.

**Structured** (BOute's): ``z = (s, u)`` with

* ``s``: the requested strong share (load-fraction routing), in ``[s_lo, 1]`` (``s_lo`` from a
  quality target, else 0);
* ``u``: a latency level ``x`` on a log scale between the fastest useful level and the top
  level ``x_hi`` — the "log latency" coordinate. ``x_hi`` is the ceiling or the P95 target; for
  the Pareto goal it is lowered to the level at which the all-strong plan (s = 1) first fits
  (`StructuredEncoding.top_level_s`): at slower levels quality cannot rise, so they only add
  points dominated by that plan. For min-cost only the band ``[0.7 L, L]`` below the target L
  is searched (a faster level only buys capacity that is not asked for, and the narrow band
  gives the strong share s the samples); for max-throughput, x is the target and ``u`` is a
  load scale ``a`` instead, on a log scale (the plan must serve ``a * lambda``).

3% of the s axis at each end, and of the latency axis at its top, maps onto the end (weak-only
and strong-only plans, plans at exactly ``x_hi``), so that the boundary has mass.

Decoding one point, at level x with load ``a * lambda`` (a = 1 but for max-throughput):

1. *Strong model* (first: it is the more constrained one): cover the requested load
   ``s a lambda`` greedily: while ``need > 0``, add the replica maximizing
   ``min(need, cap_c(x)) / price_c`` — the model-GPU preference (throughput per dollar at the
   latency level, from stage 1) — over GPU types with stock left, keeping one config per
   (model, type). Its capacity at x is ``C_s(x)``.
2. *Share*: ``s' = min(1, C_s(x) / (a lambda))``. The replicas bought serve ``C_s(x)`` with
   P95 <= x, so routing their slack (the last replica is rarely full) to the strong model
   raises quality at no cost and lowers the weak model's load; if the stock ran out before the
   requested load was covered, ``s' < s`` is what the strong replicas can serve.
3. *Weak model*: cover ``(1 - s') a lambda`` greedily, the same way, with the stock left.
4. *Repair*: the plan *fits* when the weak load is covered, ``s' >= s_lo`` and, when the
   encoding has a budget, ``cost <= budget``. A point that does not fit is moved to the largest
   requested share in ``[s_lo, s]`` whose plan fits (bisection, `REPAIR_HALVINGS` halvings: the
   plans change in steps, and step 2 moves the share up to the step's edge), so the searcher
   gets the plan on the stock / budget boundary at its level instead of an infeasible one; if
   even ``s_lo`` does not fit, the infeasible plan of s is kept (its constraint slack tells the
   searcher how far off it is).

Every decoded plan respects the stock and, when it fits, has planning P95 <= x.

**Raw** (for the ablation): ``z = (s, (config_frac, replica_frac) per (model, type))``, rounded
to a config index (or none) and a replica count: no structure, every integer plan reachable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._evaluator import BUDGET_TOL, PlanArrays
from ._problem import STRONG, WEAK, Problem

__all__ = ["RawEncoding", "StructuredEncoding"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Fraction of an axis mapped onto its end (see the module docstring).
AXIS_END = 0.03
# Bisection steps of the repair: the share is found to (1 - s_lo) / 2**10 < 0.1%, and step 2
# of the decoding then moves it to the edge of its plan's step.
REPAIR_HALVINGS = 10
# Bisection steps of `top_level_s` on log x: the level to a relative 2**-40 of the log range.
TOP_LEVEL_HALVINGS = 40


def lowest_level_s(problem: Problem, x_band: float | None, x_hi_s: float | None) -> float:
    """Lowest level an encoding searches.

    The fastest level at which some config has capacity, or ``x_band * x_hi_s`` when a band
    below the target is asked for (min-cost).
    """
    ok = (problem.cap > 0).any(axis=0)
    fastest = float(problem.levels_s[int(np.argmax(ok))])
    if x_band is None or x_hi_s is None:
        return fastest
    return max(fastest, x_band * x_hi_s)


def cover(problem: Problem, m: int, need: float, caps: FloatArray,
          options: list[list[IntArray]], cfg: IntArray, reps: IntArray, free: IntArray) -> float:
    """Greedily add replicas of lane m (a model, or a (model, class)) until `need` is covered.

    The replica added is the one maximizing ``min(need left, cap_c) / price_c`` over GPU
    types with stock left, one config per (model, type) slot. Updates the slots `cfg`,
    `reps` and the stock left `free` in place; returns the capacity added (req/s at the
    level of `caps`).
    """
    pr = problem
    n_t = len(pr.gpu_types)
    added = 0.0
    while need - added > 1e-9:
        best, best_score = -1, 0.0
        for t in range(n_t):
            slot = m * n_t + t
            for c in ([cfg[slot]] if cfg[slot] >= 0 else options[m][t]):
                if pr.cfg_gpus[c] > free[t] or caps[c] <= 0:
                    continue
                score = min(need - added, caps[c]) / pr.cfg_price[c]
                if score > best_score:
                    best, best_score = int(c), score
        if best < 0:
            break
        slot = m * n_t + int(pr.cfg_type[best])
        cfg[slot] = best
        reps[slot] += 1
        free[pr.cfg_type[best]] -= pr.cfg_gpus[best]
        added += float(caps[best])
    return added


@dataclass(frozen=True)
class _Fill:
    """One decoded plan: 2T slots, the strong share it serves and whether it fits."""

    config: IntArray
    replicas: IntArray
    share: float
    fits: bool


@dataclass(frozen=True)
class StructuredEncoding:
    """BOute's low-dimensional encoding (see the module docstring).

    Attributes:
        problem: the planning problem.
        s_lo: lowest strong share (the quality target's), 0 without one.
        x_hi_s: top latency level; None: the ceiling.
        scale_range: ``(lo, hi)`` load scale of max-throughput; None: u is the latency level.
        x_band: search only ``[x_band * x_hi_s, x_hi_s]`` (min-cost); None: from the fastest
            level with capacity.
        budget_per_hour: plans above it do not fit (repair); None: no budget (min-cost).

    """

    problem: Problem
    s_lo: float = 0.0
    x_hi_s: float | None = None
    scale_range: tuple[float, float] | None = None
    x_band: float | None = None
    budget_per_hour: float | None = None

    @property
    def x_lo_s(self) -> float:
        """Lowest level searched (`lowest_level_s`)."""
        return lowest_level_s(self.problem, self.x_band, self.x_hi_s)

    @property
    def dim(self) -> int:
        """Dimension of z."""
        return 2

    def top_level_s(self) -> float:
        """The lowest level in ``[x_lo_s, x_hi]`` at which the decode of s = 1 fits.

        Bisection on log x (the strong model's capacity grows with x); ``x_hi`` (the ceiling
        or `x_hi_s`) when even that level does not fit.
        """
        pr = self.problem
        lo = np.log(self.x_lo_s)
        hi = np.log(pr.ceiling_s if self.x_hi_s is None else self.x_hi_s)
        options = self._options()

        def fits(log_x: float) -> bool:
            f = self._fill(1.0, pr.cap_at(float(np.exp(log_x))), pr.rate_rps, options)
            return f.fits and f.share >= 1.0
        if not fits(hi):
            return float(np.exp(hi))
        for _ in range(TOP_LEVEL_HALVINGS):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        return float(np.exp(hi))

    def decode(self, z: FloatArray) -> PlanArrays:
        """Decode ``(N, dim)`` points into plans with 2T slots (model-major, then type)."""
        pr = self.problem
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        s = self.s_lo + np.clip((1 + 2 * AXIS_END) * z[:, 0] - AXIS_END, 0.0, 1.0) * (
            1.0 - self.s_lo)
        x_hi = pr.ceiling_s if self.x_hi_s is None else self.x_hi_s
        if self.scale_range is None:
            u = np.minimum((1 + AXIS_END) * z[:, 1], 1.0)
            lx = np.log(self.x_lo_s) + u * (np.log(x_hi) - np.log(self.x_lo_s))
            scale = np.ones(len(z))
        else:
            lx = np.full(len(z), np.log(x_hi))
            lo, hi = self.scale_range
            scale = lo * (hi / lo) ** z[:, 1]
        caps = pr.cap_at(np.exp(lx))                                # (C, N)
        options = self._options()
        fills = [self._repaired(float(s[b]), caps[:, b], float(scale[b]) * pr.rate_rps,
                                options) for b in range(len(z))]
        return PlanArrays(np.array([f.share for f in fills]),
                          np.stack([f.config for f in fills]),
                          np.stack([f.replicas for f in fills]))

    # -- one point ---------------------------------------------------------------------------
    def _options(self) -> list[list[IntArray]]:
        """Candidate configs per model and GPU type."""
        pr = self.problem
        return [[pr.configs_of(m, t) for t in range(len(pr.gpu_types))] for m in (WEAK, STRONG)]

    def _repaired(self, s: float, caps: FloatArray, lam: float,
                  options: list[list[IntArray]]) -> _Fill:
        """Steps 1-4 of the decoding for one point (requested share s, load lam req/s)."""
        f = self._fill(s, caps, lam, options)
        if f.fits or s <= self.s_lo:
            return f
        best = self._fill(self.s_lo, caps, lam, options)
        if not best.fits:
            return f
        lo, hi = self.s_lo, s
        for _ in range(REPAIR_HALVINGS):
            mid = 0.5 * (lo + hi)
            g = self._fill(mid, caps, lam, options)
            if g.fits:
                lo, best = mid, g
            else:
                hi = mid
        return best

    def _fill(self, s: float, caps: FloatArray, lam: float,
              options: list[list[IntArray]]) -> _Fill:
        """Steps 1-3 of the decoding: strong load, share, weak load (caps: ``(C,)`` at x)."""
        pr = self.problem
        n_t = len(pr.gpu_types)
        cfg = np.full(2 * n_t, -1, dtype=np.int64)
        reps = np.zeros(2 * n_t, dtype=np.int64)
        free = pr.stock.copy()
        served = cover(pr, STRONG, s * lam, caps, options, cfg, reps, free)
        share = min(1.0, served / lam) if lam > 0 else s
        weak_need = (1.0 - share) * lam
        short = weak_need - cover(pr, WEAK, weak_need, caps, options, cfg, reps, free)
        cost = float((reps * pr.cfg_price[np.maximum(cfg, 0)]).sum())
        fits = (short <= 1e-9 and share >= self.s_lo - 1e-12
                and (self.budget_per_hour is None
                     or cost <= self.budget_per_hour + BUDGET_TOL))
        return _Fill(cfg, reps, share, fits)


@dataclass(frozen=True)
class RawEncoding:
    """Unstructured encoding for the ablation (see the module docstring)."""

    problem: Problem
    s_lo: float = 0.0

    @property
    def dim(self) -> int:
        """Dimension of z."""
        return 1 + 4 * len(self.problem.gpu_types)

    def decode(self, z: FloatArray) -> PlanArrays:
        """Round ``(N, dim)`` points to plans with 2T slots."""
        pr = self.problem
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        n_t = len(pr.gpu_types)
        cfg = np.full((len(z), 2 * n_t), -1, dtype=np.int64)
        reps = np.zeros((len(z), 2 * n_t), dtype=np.int64)
        for m in (WEAK, STRONG):
            for t in range(n_t):
                slot = m * n_t + t
                options = pr.configs_of(m, t)
                k = np.minimum((z[:, 1 + 2 * slot] * (len(options) + 1)).astype(np.int64),
                               len(options))
                for b in range(len(z)):
                    if k[b] == 0:
                        continue
                    c = int(options[k[b] - 1])
                    top = int(pr.stock[t] // pr.cfg_gpus[c])
                    cfg[b, slot] = c
                    reps[b, slot] = 1 + min(int(z[b, 2 + 2 * slot] * top), top - 1)
        return PlanArrays(self.s_lo + z[:, 0] * (1.0 - self.s_lo), cfg, reps)
