"""The 2-objective hypervolume against a hand-computed staircase and BoTorch's box
decomposition (the reference implementation)."""

import numpy as np
import pytest
import torch
from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

from tuning import Problem, hypervolume
from tuning._front import normalized


def _inverse(problem: Problem, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P95, quality) whose normalized objectives are y (N, 2)."""
    from tuning._problem import X_MIN_S

    q0, q1 = float(problem.quality(0.0)), float(problem.quality(1.0))
    quality = q0 + y[:, 0] * (q1 - q0)
    p95 = problem.ceiling_s / (problem.ceiling_s / X_MIN_S) ** y[:, 1]
    return p95, quality


def test_hypervolume_of_a_hand_computed_staircase(small_problem: Problem) -> None:
    # Points (0.5, 0.5), (0.25, 0.75), (0.75, 0.25): the union of their boxes is
    # 0.25*0.75 + 0.25*0.5 + 0.25*0.25 = 0.375; a dominated point and a point on an axis add 0.
    y = np.array([[0.5, 0.5], [0.25, 0.75], [0.75, 0.25], [0.2, 0.2], [0.9, 0.0]])
    p95, quality = _inverse(small_problem, y)
    assert normalized(small_problem, p95, quality) == pytest.approx(y)
    assert hypervolume(small_problem, p95, quality) == pytest.approx(0.375)
    assert hypervolume(small_problem, p95[:0], quality[:0]) == 0.0


def test_hypervolume_matches_botorch(small_problem: Problem) -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50, 400):
        y = rng.random((n, 2)) ** 0.5
        y[rng.random(n) < 0.1, 1] = 0.0            # some on an axis
        p95, quality = _inverse(small_problem, y)
        ref = DominatedPartitioning(ref_point=torch.zeros(2, dtype=torch.float64),
                                    Y=torch.as_tensor(normalized(small_problem, p95, quality)))
        assert hypervolume(small_problem, p95, quality) == pytest.approx(
            float(ref.compute_hypervolume()), rel=1e-12, abs=1e-15)
