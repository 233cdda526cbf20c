"""Pareto fronts of (quality, P95) and their hypervolume.

Objectives are normalized to the unit box so hypervolumes compare across scenarios:

    q_n = (Q - Q(0)) / (Q(1) - Q(0))            (0: weak model only, 1: strong only)
    y_n = log(ceiling / p95) / log(ceiling / X_MIN_S)   (0: at the ceiling, 1: at X_MIN_S)

Both are maximized; the reference point is the origin (weak-only quality, ceiling latency), so a
plan contributes the box it dominates above that corner.

With two objectives the dominated region is a staircase and its area a sorted sum
(`hypervolume`), exact and O(N log N). It gives the same value as BoTorch's box decomposition
(``DominatedPartitioning``, which `tests/tuning/test_front.py` checks it against) without
importing torch: that import alone is 1.4 s of the 3 s a `boute plan` answered by the exact
solver takes on 2 cores.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._problem import X_MIN_S, Problem

__all__ = ["hypervolume", "normalized", "pareto_mask"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def normalized(problem: Problem, p95_s: FloatArray, quality: FloatArray) -> FloatArray:
    """``(N, 2)`` normalized (q_n, y_n), clipped to [0, 1] (inf latency -> y_n = 0)."""
    q0, q1 = problem.quality_range()
    qn = (np.asarray(quality, dtype=np.float64) - q0) / ((q1 - q0) or 1.0)
    with np.errstate(divide="ignore"):
        yn = np.log(problem.ceiling_s / np.asarray(p95_s, dtype=np.float64)) / np.log(
            problem.ceiling_s / X_MIN_S)
    return np.asarray(np.clip(np.stack([qn, np.nan_to_num(yn, neginf=0.0)], axis=-1), 0.0, 1.0))


def pareto_mask(p95_s: FloatArray, quality: FloatArray) -> BoolArray:
    """Points not dominated (lower-or-equal P95 and higher-or-equal quality, one strictly)."""
    p = np.asarray(p95_s, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    order = np.lexsort((p, -q))       # quality descending, then P95 ascending
    keep = np.zeros(len(p), dtype=bool)
    best = np.inf
    for i in order:
        if p[i] < best:
            keep[i] = True
            best = p[i]
    return keep


def hypervolume(problem: Problem, p95_s: FloatArray, quality: FloatArray) -> float:
    """Normalized hypervolume of points: the area they dominate above the origin.

    With the normalized points (`normalized`) sorted by ``q_n`` descending,
    ``q_(1) >= ... >= q_(N)``, and ``q_(N+1) = 0``, the dominated region over
    ``(q_(k+1), q_(k)]`` reaches up to ``max_{i <= k} y_(i)``, so

        HV = sum_k (q_(k) - q_(k+1)) * max_{i <= k} y_(i).

    Points with a zero coordinate add nothing.
    """
    y = normalized(problem, p95_s, quality)
    y = y[(y > 0).all(axis=1)] if len(y) else y
    if len(y) == 0:
        return 0.0
    order = np.argsort(-y[:, 0], kind="stable")
    q, top = y[order, 0], np.maximum.accumulate(y[order, 1])
    widths = q - np.append(q[1:], 0.0)
    return float((widths * top).sum())
