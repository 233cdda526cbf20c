"""`auto` runs the level program as the exact solver of one workload beyond the pair; its
deadlines and the certificate's count CPU seconds of this process (`tuning._deadline`)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

import tuning._deadline as deadline_mod
from tuning import Goal, Problem, search
from tuning._auto import choose_solver
from tuning._certify import EXACT_GAP, certify, front_bound
from tuning._deadline import WALL_CAP_FACTOR, CpuDeadline
from tuning._exact import ExactBudgetExceeded, exact_front, solve_level

from .test_bound import make_toy_ladder


class _Clock:
    """A fake `time` for `tuning._deadline`: CPU and wall seconds set by the test."""

    def __init__(self) -> None:
        self.cpu_s = 0.0
        self.wall_s = 0.0

    def process_time(self) -> float:
        return self.cpu_s

    def perf_counter(self) -> float:
        return self.wall_s


def test_auto_picks_the_level_program_for_a_ladder_and_matches_mobo_certified(
        small_problem: Problem) -> None:
    pr = make_toy_ladder(small_problem)
    choice = choose_solver(pr, Goal())
    assert choice.solver == "level" and "level program" in choice.reason
    res = search(pr, Goal())
    cert = res.certificate
    assert res.solver == "exact" and res.stopped.startswith("certified")
    assert cert is not None and cert.exact and cert.exact_program and cert.complete
    assert cert.found == pytest.approx(res.hypervolume(pr))
    # MOBO, then its certificate (which adds the bound's plans): the same front, up to the gap.
    mobo = certify(pr, search(pr, Goal(), solver="mobo", max_evals=40, seed=0))
    assert mobo.certificate is not None
    hv_mobo = mobo.hypervolume(pr)
    assert res.hypervolume(pr) >= (1 - EXACT_GAP) * hv_mobo
    assert hv_mobo <= cert.bound * (1 + 1e-9)
    # A fixed effort (max_evals) is a MOBO run, as before.
    fixed = search(pr, Goal(), max_evals=20, seed=0)
    assert fixed.solver == "mobo"


def test_auto_min_cost_on_a_ladder_is_one_level_program(small_problem: Problem) -> None:
    pr = make_toy_ladder(small_problem)
    res = search(pr, Goal("min-cost", 90.0, 4.0))
    assert res.solver == "exact" and res.evaluations == 1
    assert res.certificate is not None and res.certificate.exact
    b = res.best(pr)
    assert b is not None and res.metrics.quality[b] >= 90.0


def test_a_cpu_deadline_ignores_wall_time_up_to_its_cap(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    clock = _Clock()
    monkeypatch.setattr(deadline_mod, "time", SimpleNamespace(
        process_time=clock.process_time, perf_counter=clock.perf_counter))
    d = CpuDeadline.after(1.0)
    clock.wall_s = 0.99 * WALL_CAP_FACTOR       # a loaded machine: wall far past 1 s
    assert not d.passed()
    assert d.wall_left_s() == pytest.approx(0.01 * WALL_CAP_FACTOR)
    clock.cpu_s = 1.01                          # the CPU budget spent
    assert d.passed()
    clock.cpu_s, clock.wall_s = 0.0, 1.01 * WALL_CAP_FACTOR   # starved: the wall cap
    assert d.passed()


def test_the_level_front_stops_on_cpu_time(small_problem: Problem,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadline whose CPU seconds are spent stops the refinement, whatever the wall clock.

    The pair's level program (exact for it too) needs several levels to close its front.
    """
    pr = small_problem
    full = front_bound(pr)
    assert full.complete and len(full.levels_s) > 1
    clock = _Clock()
    clock.wall_s = time.perf_counter()
    monkeypatch.setattr(deadline_mod, "time", SimpleNamespace(
        process_time=clock.process_time, perf_counter=clock.perf_counter))
    d = CpuDeadline.after(1.0)
    clock.cpu_s = 2.0                            # spent, with no wall time gone by
    cut = front_bound(pr, deadline=d)
    assert not cut.complete and len(cut.levels_s) == 1
    assert cut.hv_bound >= full.hv_bound - 1e-12        # the ceiling alone: still a bound
    clock.cpu_s = 0.5                            # not spent: the wall clock alone goes on
    clock.wall_s += 0.9 * WALL_CAP_FACTOR
    again = front_bound(pr, deadline=d)
    assert again.complete and len(again.levels_s) == len(full.levels_s)


def test_the_pair_dp_stops_on_cpu_time(small_problem: Problem,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The pair DP's deadline (the probe's and the exact run's) counts CPU seconds too.

    Wall time alone (a loaded machine) does not stop it before the cap; spent CPU does.
    """
    pr = small_problem
    full = exact_front(pr)
    clock = _Clock()
    clock.wall_s = time.perf_counter()
    monkeypatch.setattr(deadline_mod, "time", SimpleNamespace(
        process_time=clock.process_time, perf_counter=clock.perf_counter))
    d = CpuDeadline.after(1.0)
    clock.wall_s += 0.9 * WALL_CAP_FACTOR        # wall far past 1 s, CPU not spent
    again = exact_front(pr, deadline=d)
    assert again.dp_runs == full.dp_runs
    np.testing.assert_array_equal(again.s_max, full.s_max)
    clock.cpu_s = 2.0                            # spent, with no more wall time gone by
    with pytest.raises(ExactBudgetExceeded, match="ran past its time budget"):
        exact_front(pr, deadline=d)
    with pytest.raises(ExactBudgetExceeded):
        solve_level(pr, pr.ceiling_s, budget=pr.budget, clip=pr.rate_rps, deadline=d)
