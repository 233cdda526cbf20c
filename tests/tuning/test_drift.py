"""Drift: per-group prediction error and the lasting-gap verdict (`tuning.detect_drift`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuning import (
    GroupObserved,
    GroupPredicted,
    Problem,
    detect_drift,
    observe_groups,
    predict_groups,
)


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


# -- prediction tables: what the router interpolates -----------------------------------------
def test_interpolate_prediction_is_linear_in_rate_and_none_past_the_last_point() -> None:
    from tuning import PredictionTable, interpolate_prediction

    t = PredictionTable((1.0, 2.0, 4.0), (2.0, 3.0, 7.0), (0.010, 0.020, math.nan))
    # below the first point: the first point's values (latency cannot fall further)
    assert interpolate_prediction(t, 0.2) == GroupPredicted(2.0, 0.010)
    # halfway between 1 and 2 req/s: P95 (2 + 3) / 2 = 2.5, TPOT (0.010 + 0.020) / 2 = 0.015
    got = interpolate_prediction(t, 1.5)
    assert got is not None
    assert got.p95_s == pytest.approx(2.5) and got.tpot_p50_s == pytest.approx(0.015)
    # 3 req/s: w = (3 - 2) / (4 - 2) = 0.5, P95 3 + 0.5 x 4 = 5; TPOT unknown at 4: the last
    # known one (0.020) holds
    got = interpolate_prediction(t, 3.0)
    assert got is not None
    assert got.p95_s == pytest.approx(5.0) and got.tpot_p50_s == pytest.approx(0.020)
    assert interpolate_prediction(t, 4.0) is not None
    assert interpolate_prediction(t, 4.01) is None            # saturated past the table
    assert interpolate_prediction(t, math.nan) is None
    with pytest.raises(ValueError, match="strictly increasing"):
        PredictionTable((1.0, 1.0), (2.0, 3.0), (0.01, 0.02))
    with pytest.raises(ValueError, match="one of each per point"):
        PredictionTable((1.0, 2.0), (2.0,), (0.01, 0.02))


def test_prediction_table_agrees_with_the_perf_db_lookup(small_problem: Problem) -> None:
    """The router's table at any rate inside it gives `PerfDB.lookup`'s P95 (the planner's)."""
    from tuning import Group, interpolate_prediction, prediction_table

    db = small_problem.db
    key = next(k for k in db.keys if k[1] == "H100")
    g = Group(key[0], key[1], key[2], key[3], 2, 1.0)
    (table,) = prediction_table(db, [g]).values()
    ci = db.index[key]
    unsat = ~db.saturated[ci] & np.isfinite(db.rates[ci])
    assert table.rate_rps == tuple(db.rates[ci][unsat])
    i95 = list(db.quantile_levels).index(0.95)
    grid = np.asarray(table.rate_rps)
    for rate in [*grid, *(grid[:-1] + np.diff(grid) / 3)]:
        quant, _, sat = db.lookup(np.asarray([ci]), np.asarray([rate]))
        got = interpolate_prediction(table, float(rate))
        assert got is not None and not sat[0]
        assert got.p95_s == pytest.approx(quant[0, i95])
    # and the replan job's prediction at the same per-replica rate (2 replicas)
    obs = {g.name: GroupObserved(100, 2 * float(grid[1]), 1.0, 0.02, (1.0,))}
    (pred,) = predict_groups(db, [g], obs).values()
    got = interpolate_prediction(table, float(grid[1]))
    assert got is not None
    assert got.p95_s == pytest.approx(pred.p95_s) and got.tpot_p50_s == pytest.approx(
        pred.tpot_p50_s)
    assert prediction_table(db, [Group("no-such-model", "H100", 1, 1, 1, 1.0)]) == {}
