"""Headroom: re-simulating plans on fresh traffic, and re-planning the ones on the edge."""

from __future__ import annotations

import numpy as np
import pytest

from profiling import Catalog
from tuning import Goal, Problem, plan_from_arrays, planning_problem, search
from tuning._headroom import FRESH_SEEDS, _derated, hold, resimulate


@pytest.fixture(scope="module")
def mtbench() -> Problem:
    return planning_problem("paper-mtbench", progress=False)


def test_derating_shifts_latency_and_scales_capacity(small_problem: Problem) -> None:
    pr = small_problem
    c = int(np.argmax(pr.cap[:, -1]))
    d = _derated(pr, {c: (0.9, 2.0)})
    for x in (2.0, 5.0, 8.0):
        # a cap(x / r): the config's P95 at every rate taken twice as high, 10% less capacity.
        assert d.cap_at(x)[c] == pytest.approx(0.9 * float(pr.cap_at(x / 2.0)[c]), rel=1e-9)
    other = (c + 1) % pr.num_configs
    assert np.array_equal(d.cap[other], pr.cap[other])
    assert np.array_equal(d.caps[0], d.cap)


def test_an_edge_plan_is_replanned_until_it_holds(mtbench: Problem, catalog: Catalog) -> None:
    """paper-mtbench (8.5, 30 s): the cheapest plan's 8B group saturates on fresh traces."""
    goal = Goal("min-cost", 8.5, 30.0)
    res = search(mtbench, goal, solver="exact")
    b = res.best(mtbench)
    assert b is not None
    first = plan_from_arrays(mtbench, res.plans, res.metrics, b)
    checks = resimulate(mtbench, first, catalog, target_s=30.0)
    assert len(checks) == len(first.groups) * len(FRESH_SEEDS)
    assert any(not c.holds for c in checks)
    held = hold(mtbench, goal, lambda pr: search(pr, goal, solver="exact"), catalog)
    assert held.holds and held.rounds >= 2 and held.derated
    assert held.plan is not None and held.plan.predicted is not None
    assert first.predicted is not None
    assert held.plan.predicted.cost_per_hour >= first.predicted.cost_per_hour
    summary = held.summary()
    assert summary["holds"] and summary["worst"]["p95_s"] <= 30.0
    # No seeds: the search's plan as it is.
    same = hold(mtbench, goal, lambda pr: search(pr, goal, solver="exact"), catalog, seeds=())
    assert same.plan is not None and same.plan.predicted is not None
    assert same.plan.predicted.cost_per_hour == first.predicted.cost_per_hour
    assert same.checks == [] and same.rounds == 1
