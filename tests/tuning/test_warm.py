"""A re-plan after a derate (`tuning._run.Warm`): the headroom check searches the derated
problem again, starting from the last search; the answer is a fresh search's.

Derating lowers capacities only, so the derated plan space is a subset: `auto`'s choice is
kept (no second probe) and the level program's levels whose plans still reach their bound
are reused (`tuning._certify.front_bound`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tuning._auto as auto
from tuning import Goal, Problem, SearchResult, search
from tuning._certify import EXACT_GAP
from tuning._headroom import DERATE, _derated
from tuning._run import Warm


def _no_probe(*_: object, **__: object) -> None:
    raise AssertionError("a re-plan covered by its warm start must not probe the solvers")


def _used_config(problem: Problem, res: SearchResult) -> int:
    b = res.best(problem)
    assert b is not None
    cfg = res.plans.config[b]
    return int(cfg[cfg >= 0][-1])


def test_a_replan_on_the_pair_gives_the_fresh_exact_plans(small_problem: Problem,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    pr = small_problem
    first = search(pr, Goal())
    assert first.solver == "exact" and first.warm is not None
    derated = _derated(pr, {_used_config(pr, first): (DERATE, 1.05)})
    fresh = search(derated, Goal())
    monkeypatch.setattr(auto, "choose_solver", _no_probe)
    again = search(derated, Goal(), warm=first.warm)
    assert again.solver == "exact" and again.reason == first.reason     # no second probe
    for field in ("strong_share", "config", "replicas"):
        np.testing.assert_array_equal(getattr(again.plans, field), getattr(fresh.plans, field))


def test_a_replan_on_a_ladder_reuses_levels_and_matches_a_fresh_search(
        small_problem: Problem, monkeypatch: pytest.MonkeyPatch) -> None:
    pr = dataclasses.replace(small_problem, pair_fast_path=False)    # the level program
    first = search(pr, Goal())
    assert first.warm is not None and first.warm.front is not None
    assert first.warm.choice is not None and first.warm.choice.solver == "level"
    derated = _derated(pr, {_used_config(pr, first): (DERATE, 1.05)})
    fresh = search(derated, Goal())
    monkeypatch.setattr(auto, "choose_solver", _no_probe)
    again = search(derated, Goal(), warm=first.warm)
    assert again.solver == "exact" and again.reason == first.reason
    assert again.warm is not None and again.warm.front is not None
    assert again.warm.front.reused > 0
    assert again.certificate is not None and again.certificate.exact
    hv_fresh, hv_again = fresh.hypervolume(derated), again.hypervolume(derated)
    assert hv_again >= (1 - EXACT_GAP) * hv_fresh and hv_fresh >= (1 - EXACT_GAP) * hv_again
    # The plan the headroom check takes: the same metrics as the fresh search's.
    bf, ba = fresh.best(derated), again.best(derated)
    assert bf is not None and ba is not None
    for m in ("quality", "p95_s", "cost_per_hour"):
        assert getattr(again.metrics, m)[ba] == pytest.approx(getattr(fresh.metrics, m)[bf],
                                                              rel=1e-6)


def test_a_warm_start_covers_lower_capacities_only(small_problem: Problem) -> None:
    pr = small_problem
    warm = Warm(pr)
    assert warm.covers(pr) and warm.covers(_derated(pr, {0: (DERATE, 1.0)}))
    raised = dataclasses.replace(pr, caps=pr.caps * 1.01)
    assert not warm.covers(raised)
    assert not warm.covers(dataclasses.replace(pr, stock=pr.stock + 1))
