"""Drift: per-group prediction error and the lasting-gap verdict (`tuning.detect_drift`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuning import GroupObserved, GroupPredicted, detect_drift, observe_groups


def _obs(p95: float, splits: tuple[float, ...], tpot: float = 0.02, n: int = 300
         ) -> GroupObserved:
    return GroupObserved(n, 1.0, p95, tpot, splits)


def test_a_lasting_gap_drifts_a_burst_does_not() -> None:
    pred = {"a": GroupPredicted(1.0, 0.02), "b": GroupPredicted(1.0, 0.02),
            "c": GroupPredicted(1.0, 0.02)}
    obs = {
        # observed 2x slower in every third of the window: error 1/2 - 1 = -50% everywhere
        "a": _obs(2.0, (2.0, 2.1, 1.9)),
        # one slow burst: the window's P95 is off, but two thirds are within 25%
        "b": _obs(1.6, (1.05, 2.5, 0.95)),
        # within tolerance
        "c": _obs(1.1, (1.1, 1.1, 1.1)),
    }
    rep = detect_drift(pred, obs, tolerance=0.25)
    by = {g.group: g for g in rep.groups}
    assert by["a"].error_p95 == pytest.approx(-0.5)
    assert by["a"].drifted is True
    assert by["b"].error_p95 == pytest.approx(1 / 1.6 - 1)       # -37.5%: past 25% ...
    assert by["b"].drifted is False                               # ... but not lasting
    assert by["c"].drifted is False
    assert rep.drifted
    assert rep.metric() == {"a": pytest.approx(-0.5), "b": pytest.approx(-0.375),
                            "c": pytest.approx(1 / 1.1 - 1)}


def test_tpot_gap_and_thin_groups() -> None:
    pred = {"a": GroupPredicted(1.0, 0.010), "thin": GroupPredicted(1.0, 0.010)}
    obs = {"a": _obs(1.0, (1.0, 1.0, 1.0), tpot=0.020),          # TPOT 2x: -50%
           "thin": _obs(3.0, (3.0, 3.0, 3.0), n=10)}
    by = {g.group: g for g in detect_drift(pred, obs, min_requests=30).groups}
    assert by["a"].error_tpot == pytest.approx(-0.5) and by["a"].drifted is True
    assert by["thin"].drifted is None                             # too few requests: no verdict
    with pytest.raises(ValueError, match="tolerance=0"):
        detect_drift(pred, obs, tolerance=0)


def test_observe_groups_from_log_columns() -> None:
    # group g: 90 requests over [0, 90) s, latency 1 s except the last third (3 s);
    # streamed, 11 output tokens, TTFT 0.1 s: TPOT = (lat - 0.1) / 10
    n = 90
    arrival = np.arange(n, dtype=float)
    latency = np.where(arrival >= 60, 3.0, 1.0)
    out = observe_groups(np.asarray(["g"] * n, dtype=object), arrival, latency,
                         np.full(n, 0.1), np.full(n, 11), np.ones(n, dtype=bool),
                         window=(0.0, 90.0), splits=3, min_requests=30)
    g = out["g"]
    assert g.requests == n and g.rate_rps == pytest.approx(1.0)
    assert g.p95_s == pytest.approx(3.0)
    assert g.tpot_p50_s == pytest.approx(0.09)                   # median: 60 of 90 at 0.09
    assert g.split_p95_s[0] == pytest.approx(1.0) and g.split_p95_s[2] == pytest.approx(3.0)
    assert not any(math.isnan(v) for v in g.split_p95_s)
