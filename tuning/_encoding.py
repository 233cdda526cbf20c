"""Search encodings: a point of the unit cube -> a plan.

**Structured** (BOute's): ``z = (s, u)`` with

* ``s``: the strong share (load-fraction routing), in ``[s_lo, 1]`` (``s_lo`` from a quality
  target, else 0); the ends of the axis are clipped onto the boundary so that single-model
  plans have mass;
* ``u``: a latency level ``x`` on a log scale between the fastest useful level and the ceiling
  (or the P95 target) — the "log latency" coordinate; for min-cost only the band
  ``[0.7 L, L]`` below the target L is searched (a faster level only buys capacity that is
  not asked for, and the narrow band gives the strong share s the samples); for
  max-throughput, x is the target and ``u`` is a load scale ``a`` instead, on a log scale
  (the plan must serve ``a * lambda``).

Decoding covers each model's load at level x greedily (strong model first, it is the more
constrained one): while ``need > 0``, add the replica maximizing ``min(need, cap_c(x)) /
price_c`` — the model-GPU preference (throughput per dollar at the latency level, from stage 1)
— over GPU types with stock left, keeping one config per (model, type).
Every decoded plan respects the stock and is sized for P95 <= x; the budget is left to the
searcher as a constraint.

**Raw** (for the ablation): ``z = (s, (config_frac, replica_frac) per (model, type))``, rounded
to a config index (or none) and a replica count: no structure, every integer plan reachable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._evaluator import PlanArrays
from ._problem import STRONG, WEAK, Problem

__all__ = ["RawEncoding", "StructuredEncoding"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class StructuredEncoding:
    """BOute's low-dimensional encoding (see the module docstring)."""

    problem: Problem
    s_lo: float = 0.0
    x_hi_s: float | None = None
    scale_range: tuple[float, float] | None = None
    x_band: float | None = None

    @property
    def x_lo_s(self) -> float:
        """Lowest level searched.

        The fastest level at which some config has capacity, or ``x_band * x_hi_s`` when a
        band below the target is asked for (min-cost).
        """
        ok = (self.problem.cap > 0).any(axis=0)
        fastest = float(self.problem.levels_s[int(np.argmax(ok))])
        if self.x_band is None or self.x_hi_s is None:
            return fastest
        return max(fastest, self.x_band * self.x_hi_s)

    @property
    def dim(self) -> int:
        """Dimension of z."""
        return 2

    def decode(self, z: FloatArray) -> PlanArrays:
        """Decode ``(N, dim)`` points into plans with 2T slots (model-major, then type)."""
        pr = self.problem
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        n_t = len(pr.gpu_types)
        # 3% of the axis at each end maps onto the boundary: weak-only / strong-only plans.
        s = self.s_lo + np.clip(1.06 * z[:, 0] - 0.03, 0.0, 1.0) * (1.0 - self.s_lo)
        x_hi = pr.ceiling_s if self.x_hi_s is None else self.x_hi_s
        if self.scale_range is None:
            lx = np.log(self.x_lo_s) + z[:, 1] * (np.log(x_hi) - np.log(self.x_lo_s))
            scale = np.ones(len(z))
        else:
            lx = np.full(len(z), np.log(x_hi))
            lo, hi = self.scale_range
            scale = lo * (hi / lo) ** z[:, 1]
        caps = pr.cap_at(np.exp(lx))                                # (C, N)
        loads = pr.loads(s) * scale[:, None]
        cfg = np.full((len(z), 2 * n_t), -1, dtype=np.int64)
        reps = np.zeros((len(z), 2 * n_t), dtype=np.int64)
        per_cost = caps / pr.cfg_price[:, None]
        for b in range(len(z)):
            free = pr.stock.copy()
            for m in (STRONG, WEAK):
                need = loads[b, m]
                while need > 1e-9:
                    best, best_score = -1, 0.0
                    for t in range(n_t):
                        slot = m * n_t + t
                        cands = ([cfg[b, slot]] if cfg[b, slot] >= 0 else pr.configs_of(m, t))
                        for c in cands:
                            if pr.cfg_gpus[c] > free[t] or caps[c, b] <= 0:
                                continue
                            score = per_cost[c, b] * min(need, caps[c, b]) / caps[c, b]
                            if score > best_score:
                                best, best_score = int(c), score
                    if best < 0:
                        break
                    t = int(pr.cfg_type[best])
                    cfg[b, m * n_t + t] = best
                    reps[b, m * n_t + t] += 1
                    free[t] -= pr.cfg_gpus[best]
                    need -= caps[best, b]
        return PlanArrays(s, cfg, reps)


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
