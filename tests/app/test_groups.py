"""Group choice, admission bounds, circuit breaker and liveness (pure; hand-computed)."""

import math
from collections import Counter

import pytest

from app.groups import GroupPool, inflight_limits

SHARES = {"weak": {"a": 0.6, "b": 0.4}, "strong": {"c": 1.0}}


def test_inflight_limits_by_littles_law() -> None:
    # capacity 10 req/s, strong share 0.3, P95 4 s: Little's law gives the weak groups
    # m = 10*0.7*0.6*4 = 16.8 and 10*0.7*0.4*4 = 11.2, the strong group 10*0.3*1*4 = 12; the
    # bound is m + 3 sqrt(m): 29.10 -> 30, 21.24 -> 22, 22.39 -> 23.
    groups = [("a", "weak", 1, 0.6), ("b", "weak", 1, 0.4), ("c", "strong", 2, 1.0)]
    lim = inflight_limits(groups, {"weak": 0.7, "strong": 0.3}, 10.0, 4.0)
    assert lim == {"a": 30, "b": 22, "c": 23}
    assert inflight_limits(groups, {"weak": 0.7, "strong": 0.3}, 10.0, 4.0,
                           scale=2.0) == {"a": 59, "b": 43, "c": 45}
    # Unknown capacity: vLLM's max_num_seqs per replica.
    assert inflight_limits(groups, {}, math.inf, 4.0) == {"a": 256, "b": 256, "c": 512}
    # At least one request per replica.
    assert inflight_limits([("a", "weak", 3, 0.01)], {"weak": 1.0}, 1.0, 0.1) == {"a": 3}


def test_picks_follow_the_shares_and_skip_unavailable_groups() -> None:
    pool = GroupPool(SHARES)
    picks = Counter(pool.pick("weak", 0.0) for _ in range(100))
    assert picks == {"a": 60, "b": 40}
    assert pool.pick("weak", 0.0, exclude=["a"]) == "b"
    assert pool.pick("weak", 0.0, exclude=["a", "b"]) is None


def test_full_groups_shed_and_spill_over() -> None:
    pool = GroupPool(SHARES, limits={"a": 1, "b": 1, "c": 1})
    first = pool.pick("weak", 0.0)
    pool.acquire(first)
    second = pool.pick("weak", 0.0)
    assert {first, second} == {"a", "b"}
    pool.acquire(second)
    assert pool.pick("weak", 0.0) is None and pool.reachable("weak", 0.0)  # full, not down
    pool.release(first)
    assert pool.pick("weak", 0.0) == first


def test_breaker_ejects_after_consecutive_failures_and_doubles() -> None:
    pool = GroupPool(SHARES, fail_threshold=3, cooldown_s=5.0, max_cooldown_s=12.0)
    assert not pool.failure("c", 0.0) and not pool.failure("c", 0.0)
    assert pool.failure("c", 1.0)                           # 3rd in a row: out until 6.0
    assert pool.groups["c"].state(5.9) == "ejected" and not pool.reachable("strong", 5.9)
    assert pool.groups["c"].state(6.0) == "healthy"         # half-open: one trial call
    assert not pool.failure("c", 5.9)                       # sent before, failing late: no change
    assert pool.failure("c", 6.0)                           # the trial failed: out again at once
    assert pool.groups["c"].ejected_until == 16.0           # for 2 * 5 s
    assert pool.failure("c", 16.0)
    assert pool.groups["c"].ejected_until == 28.0           # 4 * 5 = 20, capped at 12
    pool.success("c")
    for _ in range(3):
        pool.failure("c", 30.0)
    assert pool.groups["c"].ejected_until == 35.0           # a success reset the doubling
    pool.success("a")
    pool.failure("a", 0.0)
    pool.success("a")
    assert pool.groups["a"].failures == 0                   # not consecutive


def test_liveness_and_health() -> None:
    pool = GroupPool(SHARES, wanted={"a": 2, "b": 1, "c": 1})
    assert pool.set_replicas("a", 2) == 0
    h = pool.health(0.0)
    assert {g: v["state"] for g, v in h["groups"].items()} == {
        "a": "serving", "b": "serving", "c": "serving"}     # b, c: counts not seen yet
    assert h["lanes"] == {"weak": True, "strong": True}
    assert pool.set_replicas("a", 1) == 1                   # one replica lost
    assert pool.set_replicas("c", 0) == 0                   # first view: nothing "lost"
    h = pool.health(0.0)
    assert h["lanes"] == {"weak": True, "strong": False}
    assert (h["groups"]["c"]["state"], h["groups"]["c"]["reason"]) == (
        "down", "no running replica (Serve runs 0 of 1)")
    assert (h["groups"]["a"]["state"], h["groups"]["a"]["reason"]) == (
        "degraded", "1 of 2 replicas running")              # takes traffic, short of one
    assert h["groups"]["a"]["replicas_running"] == 1 and h["groups"]["a"]["replicas_wanted"] == 2
    pool.set_replicas("c", 1)
    for _ in range(3):
        pool.failure("b", 0.0)
    b = pool.health(1.0)["groups"]["b"]
    assert (b["state"], b["routing"], b["ejected_for_s"]) == ("down", "ejected", 4.0)


def test_probes_take_an_unresponsive_group_down_and_bring_it_back() -> None:
    pool = GroupPool(SHARES, probe_threshold=2)
    assert pool.probe_result("c", False) is None            # one miss: still up
    assert pool.groups["c"].state(0.0) == "healthy"
    assert pool.probe_result("c", True) is None             # misses must be in a row
    assert pool.probe_result("c", False) is None
    assert pool.probe_result("c", False) is True            # 2nd miss in a row: down
    assert pool.groups["c"].state(0.0) == "down" and not pool.reachable("strong", 0.0)
    assert pool.groups["c"].health(0.0) == (
        "down", "no answer to the last 2 liveness probes (a lost node or a hung replica)")
    assert pool.probe_result("c", False) is None            # already down: no new event
    assert pool.probe_result("c", True) is False            # answered: back
    assert pool.groups["c"].state(0.0) == "healthy"
    pool.probe_result("a", False)
    pool.success("a")                                       # a served call is an answer too
    assert pool.probe_result("a", False) is None and pool.groups["a"].probe_failures == 1
    assert pool.probe_result("ghost", False) is None        # a group no longer in the plan
    with pytest.raises(ValueError, match=r"probe_threshold=0 must be >= 1"):
        GroupPool(SHARES, probe_threshold=0)


def test_update_keeps_live_state_of_groups_that_stay() -> None:
    pool = GroupPool(SHARES)
    pool.acquire("a")
    pool.update({"weak": {"a": 1.0}, "strong": {"c": 1.0}}, limits={"a": 5})
    assert pool.groups["a"].inflight == 1 and pool.groups["a"].limit == 5
    assert "b" not in pool.groups
    with pytest.raises(ValueError, match="fail_threshold"):
        GroupPool(SHARES, fail_threshold=0)
