"""Replanning decisions: the diff between plans and the hysteresis, on hand-made plans."""

import math
from dataclasses import replace

import pytest

from tuning import Group, Hysteresis, Plan, Predicted, Routing, decide, diff_groups


def _plan(share: float, replicas: int, p95_s: float, cost: float, extra: int = 0) -> Plan:
    groups = [Group("llama-3.1-8b", "RTX-4090", 1, 1, replicas, 1.0),
              Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0)]
    if extra:
        groups[0] = replace(groups[0], share=0.5)
        groups.append(Group("llama-3.1-8b", "RTX-5090", 1, 1, extra, 0.5))
    return Plan(Routing(share), tuple(groups),
                Predicted(p95_s, p95_s, p95_s / 2, 90.0, cost, 10.0, 20.0))


RUN = _plan(0.3, 2, p95_s=4.0, cost=10.0)
QUIET = Hysteresis(min_gain=0.10, cooldown_s=600)


def test_diff_names_every_kind_of_change() -> None:
    kinds = {c.name: (c.kind, c.replicas_before, c.replicas_after)
             for c in diff_groups(RUN, _plan(0.3, 3, 4.0, 10.0, extra=1))}
    assert kinds == {"llama-3.1-8b-RTX-4090-tp1pp1": ("scale-up", 2, 3),
                     "llama-3.1-70b-H100-tp4pp1": ("same", 1, 1),
                     "llama-3.1-8b-RTX-5090-tp1pp1": ("add", 0, 1)}
    back = {c.name: c.kind for c in diff_groups(_plan(0.3, 3, 4.0, 10.0, extra=1), RUN)}
    assert back["llama-3.1-8b-RTX-5090-tp1pp1"] == "remove"
    assert back["llama-3.1-8b-RTX-4090-tp1pp1"] == "scale-down"


def test_same_plan_is_no_change_even_when_forced() -> None:
    d = decide("pareto", RUN, RUN, violation=None, hysteresis=QUIET, seconds_since_change=None,
               force=True)
    assert (d.action, d.reason) == ("none", "the proposed plan is the running plan")


def test_gain_below_the_minimum_keeps_the_running_plan() -> None:
    # P95 4.0 -> 3.7 s: gain 1 - 3.7/4 = 7.5% < 10%
    d = decide("pareto", RUN, _plan(0.3, 3, 3.7, 12.0), violation=None, hysteresis=QUIET,
               seconds_since_change=3600)
    assert d.action == "none" and d.gain == pytest.approx(0.075)
    assert "+7.5% < the minimum 10%" in d.reason
    # 4.0 -> 3.0 s: 25% >= 10%, groups resized -> a deployment change
    d = decide("pareto", RUN, _plan(0.3, 3, 3.0, 12.0), violation=None, hysteresis=QUIET,
               seconds_since_change=3600)
    assert (d.action, d.gain) == ("deployment", pytest.approx(0.25))


def test_routing_only_change_and_min_cost_gain() -> None:
    # same groups, strong share 0.3 -> 0.2, cost 10 -> 8: min-cost gain 20%
    d = decide("min-cost", RUN, _plan(0.2, 2, 4.0, 8.0), violation=None, hysteresis=QUIET,
               seconds_since_change=None)
    assert (d.action, d.gain) == ("routing", pytest.approx(0.2))


def test_cooldown_blocks_even_a_needed_change_unless_forced() -> None:
    bigger = _plan(0.3, 4, 4.5, 14.0)
    d = decide("min-cost", RUN, bigger, violation="misses the P95 target: 9.00 s > 6 s",
               hysteresis=QUIET, seconds_since_change=100)
    assert d.action == "none" and d.must and "500 s left" in d.reason
    d = decide("min-cost", RUN, bigger, violation="misses the P95 target: 9.00 s > 6 s",
               hysteresis=QUIET, seconds_since_change=700)
    # a violated goal changes the plan although it costs more (gain is not asked)
    assert (d.action, d.must, d.gain) == ("deployment", True, math.inf)
    assert d.reason == "the running plan misses the P95 target: 9.00 s > 6 s"
    d = decide("min-cost", RUN, bigger, violation=None, hysteresis=QUIET,
               seconds_since_change=5, force=True)
    assert (d.action, d.reason) == ("deployment", "forced")


def test_hysteresis_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match=r"min_gain=-0.1 must be"):
        Hysteresis(-0.1)
    with pytest.raises(ValueError, match=r"cooldown_s=nan must be"):
        Hysteresis(0.1, math.nan)


def test_a_ladder_rerouting_one_workload_is_a_routing_change() -> None:
    from tuning import WorkloadRouting

    models = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")

    def ladder(chat: tuple[float, float, float]) -> Plan:
        rt = Routing(0.1, math.nan, "builtin", models, (
            WorkloadRouting("math", (0.0, 0.8, 0.2), (math.nan, math.nan), 5.0),
            WorkloadRouting("chat", chat, (math.nan, math.nan), 1.0)))
        return replace(RUN, routing=rt)

    run, moved = ladder((0.6, 0.4, 0.0)), ladder((0.2, 0.8, 0.0))
    # Same groups, same share on the 405B, but chat moves from the 8B to the 70B.
    d = decide("min-cost", run, moved, violation="misses the P95 target: 46 s > 40 s",
               hysteresis=QUIET, seconds_since_change=None)
    assert d.action == "routing" and d.must
    same = decide("min-cost", run, ladder((0.6, 0.4, 0.0)), violation=None, hysteresis=QUIET,
                  seconds_since_change=None)
    assert same.action == "none" and same.reason == "the proposed plan is the running plan"
