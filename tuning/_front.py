"""Pareto fronts of (quality, P95) and their hypervolume (BoTorch's).

Objectives are normalized to the unit box so hypervolumes compare across scenarios:

    q_n = (Q - Q(0)) / (Q(1) - Q(0))            (0: weak model only, 1: strong only)
    y_n = log(ceiling / p95) / log(ceiling / X_MIN_S)   (0: at the ceiling, 1: at X_MIN_S)

Both are maximized; the reference point is the origin (weak-only quality, ceiling latency), so a
plan contributes the box it dominates above that corner.
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
    q0, q1 = float(problem.quality(0.0)), float(problem.quality(1.0))
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
    """Normalized hypervolume of points (BoTorch's exact box decomposition)."""
    import torch
    from botorch.utils.multi_objective.box_decompositions.dominated import (
        DominatedPartitioning,
    )

    y = normalized(problem, p95_s, quality)
    y = y[(y > 0).all(axis=1)] if len(y) else y
    if len(y) == 0:
        return 0.0
    part = DominatedPartitioning(ref_point=torch.zeros(2, dtype=torch.float64),
                                 Y=torch.as_tensor(y, dtype=torch.float64))
    return float(part.compute_hypervolume())
