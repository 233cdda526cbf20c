from __future__ import annotations

import numpy as np
import pytest

from profiling import QualityCurve, default_quality_curve
from profiling._quality import QualityError


@pytest.mark.parametrize(("quality", "share"), [(87, 0.2655), (89, 0.5605), (91, 0.7006)])
def test_gsm8k_default_reproduces_the_papers_shares(quality: float, share: float) -> None:
    assert default_quality_curve("gsm8k").min_share_for(quality) == pytest.approx(share)


@pytest.mark.parametrize(("quality", "share"), [(8.1, 0.1942), (8.3, 0.3883), (8.5, 0.5825)])
def test_mtbench_default_reproduces_the_papers_shares(quality: float, share: float) -> None:
    assert default_quality_curve("mtbench").min_share_for(quality) == pytest.approx(share,
                                                                                     abs=2e-4)


def test_exact_curve_from_records() -> None:
    # Sorted by score: q0 (0.9) gains 1, q3 (0.7) gains 0, q2 (0.5) gains 1, q1 (0.1) gains 0;
    # mean weak quality 0.25, each query weighs 1/4.
    curve = QualityCurve.from_records(np.array([0.9, 0.1, 0.5, 0.7]),
                                      np.array([0.0, 1.0, 0.0, 0.0]),
                                      np.array([1.0, 1.0, 1.0, 0.0]))
    assert curve.exact == pytest.approx((0.25, 0.5, 0.5, 0.75, 0.75))
    assert curve.threshold_for(0.5) == pytest.approx(0.7)
    assert float(curve(0.375)) == pytest.approx(0.5)


def test_envelope_is_monotone_when_the_strong_model_loses() -> None:
    curve = QualityCurve.from_records(np.array([0.9, 0.1]), np.array([1.0, 0.0]),
                                      np.array([0.0, 1.0]))
    assert curve.exact == pytest.approx((0.5, 0.0, 0.5))
    assert curve.quality == pytest.approx((0.5, 0.5, 0.5))


def test_unreachable_quality_and_unknown_task() -> None:
    with pytest.raises(QualityError, match=r"quality=96 is above"):
        default_quality_curve("gsm8k").min_share_for(96)
    with pytest.raises(QualityError, match=r"task='mmlu' has no default"):
        default_quality_curve("mmlu")
