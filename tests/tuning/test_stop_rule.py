"""The acquisition stop rule (`tuning.StopRule`) and known-plan filtering.

The rule: stop after `ehvi_steps` consecutive BO steps whose expected hypervolume improvement
EHVI_t, discounted by c_t (the share of the last `ehvi_window` steps' expectations that came
true), is below `ehvi_fraction` of the hypervolume HV_t observed when the step was proposed.
"""

import numpy as np
import pytest

from tuning import Goal, Problem, SearchError, StopRule, exact_front, search
from tuning._mobo import MoboSettings, MoboState
from tuning._run import FALLBACK_PATIENCE, _Run, make_encoding, plan_keys


def _sobol_plans(problem: Problem, n: int = 64):
    enc = make_encoding(problem, Goal())
    return enc, MoboState(enc.dim, 0).sobol(n)


def test_acquisition_rule_discounts_the_gp_by_what_came_true(small_problem: Problem) -> None:
    pr = small_problem
    enc, z = _sobol_plans(pr)
    rule = StopRule(max_evals=10_000, time_limit_s=None, ehvi_fraction=1e-3, ehvi_steps=2,
                    ehvi_window=2)
    run = _Run(pr, Goal(), "mobo", None, rule, warmup_evals=64)
    run.add(enc.decode(z))                          # the start: no acquisition value
    # (EHVI_t, HV_t, HV_t+1) -> c_t over the last 2 steps, ratio c_t * EHVI_t / HV_t:
    # 1: R = .01, c = min(1, .01/.01) = 1, ratio .01 (and fewer than 2 steps: never low)
    # 2: R = 0,   c = .01/.02 = .5,        ratio .5 * .01 / 1.01 = 4.95e-3 (not low)
    # 3: R = 0,   c = 0/.02 = 0,           ratio 0 (low 1)
    # 4: R = 0,   c = 0,                   ratio 0 (low 2: stop)
    steps = [(0.01, 1.0, 1.01), (0.01, 1.01, 1.01), (0.01, 1.01, 1.01), (0.01, 1.01, 1.01)]
    for ehvi, hv, after in steps:
        run._acquisition(ehvi, hv, after)
    assert run.result.ehvi_ratio == pytest.approx([0.01, 0.5 * 0.01 / 1.01, 0.0, 0.0])
    assert run.low_ehvi == 2
    run._check(100, 1.0, 1.01)
    assert run.stop and run.stopped == (
        "expected hypervolume improvement (discounted by the share that came true) below "
        "0.001 of the hypervolume for 2 BO steps (last 0.0e+00)")
    # A GP whose expectations come true (R = EHVI) is not discounted: EHVI 5e-4 of HV is
    # low from the window's end on; 2e-3 is not.
    calibrated = _Run(pr, Goal(), "mobo", None, rule, warmup_evals=64)
    calibrated.add(enc.decode(z))
    for ehvi in (5e-4, 5e-4, 2e-3, 5e-4):
        calibrated._acquisition(ehvi, 1.0, 1.0 + ehvi)
    assert calibrated.result.ehvi_ratio == pytest.approx([5e-4, 5e-4, 2e-3, 5e-4])
    assert calibrated.low_ehvi == 1            # the 2e-3 step broke the run of low steps


def test_patience_replaces_the_acquisition_rule_and_other_goals_fall_back() -> None:
    default = StopRule()
    assert default.patience is None and default.time_limit_s == 60.0
    assert default.uses_acquisition("pareto") and default.effective_patience("pareto") is None
    # min-cost / max-throughput progress is a cost or a capacity, not a hypervolume.
    for mode in ("min-cost", "max-throughput"):
        assert not default.uses_acquisition(mode)
        assert default.effective_patience(mode) == FALLBACK_PATIENCE == 20
    explicit = StopRule(patience=5)
    assert not explicit.uses_acquisition("pareto") and explicit.effective_patience("pareto") == 5
    fixed = StopRule.fixed(40)
    assert not fixed.uses_acquisition("pareto") and fixed.effective_patience("min-cost") is None
    with pytest.raises(SearchError, match=r"self.ehvi_fraction=0.0 must be > 0"):
        StopRule(ehvi_fraction=0.0)
    with pytest.raises(SearchError, match=r"self.ehvi_steps=0 and self.ehvi_window=5 must be"):
        StopRule(ehvi_steps=0)


def test_patience_rule_ignores_the_acquisition_values(small_problem: Problem) -> None:
    pr = small_problem
    enc, z = _sobol_plans(pr)
    plans = enc.decode(z)
    run = _Run(pr, Goal(), "mobo", None, StopRule(patience=2, time_limit_s=None), 64)
    run.add(plans)
    run.add(plans, 0.0)          # EHVI 0, but patience governs: 1 stalled step of 2
    assert not run.stop
    run.add(plans, 0.0)
    assert run.stopped == "front stable for 2 steps (patience 2)"


def test_plan_keys_identify_equal_plans(small_problem: Problem) -> None:
    enc, z = _sobol_plans(small_problem, 32)
    plans = enc.decode(np.concatenate([z, z[:5]]))
    keys = plan_keys(plans)
    assert keys[32:] == keys[:5]
    # Distinct keys <=> distinct (share, config, replicas) rows.
    rows = {(round(float(s), 12), c.tobytes(), r.tobytes()) for s, c, r in
            zip(plans.strong_share, plans.config, plans.replicas, strict=True)}
    assert len(set(keys)) == len(rows)


def test_mobo_never_proposes_a_known_plan_and_stops_by_the_acquisition(
        small_problem: Problem) -> None:
    pr = small_problem
    res = search(pr, Goal(), solver="mobo", stop=StopRule(max_evals=600, time_limit_s=None))
    assert res.stopped.startswith("expected hypervolume improvement (discounted"), res.stopped
    n_steps = len(res.step_seconds)
    assert len(res.ehvi_ratio) == n_steps >= 3
    assert all(r < 1e-3 for r in res.ehvi_ratio[-3:])
    keys = plan_keys(res.plans)
    seen = set(keys[:256])                               # the Sobol start
    for k, ratio in zip(keys[256:], np.repeat(res.ehvi_ratio, 4)[:len(keys) - 256],
                        strict=True):
        if ratio > 0:                # a step with no new candidate draws Sobol points
            assert k not in seen
        seen.add(k)
    lo, _hi = exact_front(pr).hv_bounds(pr)
    assert res.hypervolume(pr) >= 0.99 * lo


def test_new_plans_filter_drops_known_and_repeated_points() -> None:
    # Keys: the first coordinate rounded to one decimal, so 0.11 and 0.12 are one plan.
    st = MoboState(2, 0, MoboSettings(), plan_keys=lambda z: [
        f"{v:.1f}".encode() for v in np.asarray(z)[:, 0]])
    st.observe(np.array([[0.11, 0.5]]), np.array([[0.0, 0.0, 1.0]]))
    z = np.array([[0.12, 0.9], [0.31, 0.1], [0.34, 0.2], [0.5, 0.5]])
    assert st._new_plans(z).tolist() == [[0.31, 0.1], [0.5, 0.5]]
