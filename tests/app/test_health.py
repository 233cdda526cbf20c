"""``/health`` and ``/health/ready`` at the dispatcher level, and how fast a lost group is seen.

No HTTP, no Serve: the fake engines of `tests.app.test_dispatch` (a group in ``lost`` answers
neither calls nor pings, as on a node that is gone).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from app import dispatch
from app.calls import Reply
from app.dispatch import PROBE_PERIOD_S, PROBE_THRESHOLD, PROBE_TIMEOUT_S
from tests.app.test_dispatch import STRONG, WEAK, make, run


def test_a_model_whose_only_group_is_lost_is_degraded_and_served_by_the_other() -> None:
    # The probe of issue 31: the 8B's only GPU type is lost under load. Every request is
    # still answered (by the 70B, flagged), so the load balancer must keep the router: 200.
    d, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG)}, replicas={"w": 1, "s": 1})
    d.set_replicas("w", 1)
    d.set_replicas("s", 1)
    code, h = d.health(time.monotonic())
    assert (code, h["status"]) == (200, "ok")
    assert h["models"] == {WEAK: {"state": "serving", "groups": ["w"], "served_by": None},
                           STRONG: {"state": "serving", "groups": ["s"], "served_by": None}}
    d.set_replicas("w", 0)                                  # the node is gone
    code, h = d.health(time.monotonic())
    assert (code, h["status"]) == (200, "degraded")
    assert h["models"][WEAK] == {"state": "degraded", "groups": ["w"], "served_by": STRONG}
    assert h["models"][STRONG]["state"] == "serving"
    assert (h["groups"]["w"]["state"], h["groups"]["w"]["reason"]) == (
        "down", "no running replica (Serve runs 0 of 1)")
    call, reply = run(d, WEAK)
    assert isinstance(reply, Reply) and reply.status == 200
    assert reply.headers["x-boute-degraded"] == WEAK and call.group == "s"
    # Nothing left: no request can be served, and only then 503.
    d.set_replicas("s", 0)
    code, h = d.health(time.monotonic())
    assert (code, h["status"]) == (503, "unavailable")
    assert {m: v["state"] for m, v in h["models"].items()} == {WEAK: "down", STRONG: "down"}


def test_without_fallback_a_down_model_is_down_but_the_router_still_serves() -> None:
    d, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG)},
                   settings={"on_model_down": "fail"})
    d.set_replicas("s", 0)
    code, h = d.health(time.monotonic())
    # The 8B still answers its requests: 200, degraded; the 70B's requests get 503.
    assert (code, h["status"]) == (200, "degraded")
    assert h["models"][STRONG] == {"state": "down", "groups": ["s"], "served_by": None}
    _, reply = run(d, STRONG)
    assert isinstance(reply, Reply) and reply.status == 503


def test_readiness_needs_every_group_serving_and_names_what_is_missing() -> None:
    d, _, _ = make({"w": ("ok", WEAK), "w2": ("ok", WEAK), "s": ("ok", STRONG)},
                   replicas={"w": 2, "w2": 1, "s": 1}, config_id="c1")
    code, r = d.readiness(time.monotonic())
    # No replica count seen yet: not ready on a guess.
    assert (code, r["ready"], r["groups_serving"], r["groups"]) == (503, False, 0, 3)
    assert r["missing"]["w"]["reason"].startswith("replica count not seen yet")
    for g, n in {"w": 2, "w2": 1, "s": 1}.items():
        d.set_replicas(g, n)
    assert d.readiness(time.monotonic()) == (200, {
        "ready": True, "config_id": "c1", "groups_serving": 3, "groups": 3, "missing": {}})
    d.set_replicas("w", 1)                                  # one replica of w lost
    code, r = d.readiness(time.monotonic())
    assert (code, r["groups_serving"]) == (503, 2)
    assert r["missing"] == {"w": {"model": WEAK, "state": "degraded",
                                  "reason": "1 of 2 replicas running",
                                  "replicas_running": 1, "replicas_wanted": 2}}
    # /health meanwhile: every request is served by its own model, so 200 "degraded".
    code, h = d.health(time.monotonic())
    assert (code, h["status"], h["models"][WEAK]["state"]) == (200, "degraded", "degraded")


def test_a_lost_group_is_down_within_5_s_and_its_waiting_calls_go_elsewhere() -> None:
    # Worst case: the node is lost just after a probe round was answered. The next round
    # starts one period later and misses at its deadline; the one after starts at once (the
    # round overran the period) and misses too: down at PERIOD + THRESHOLD * TIMEOUT =
    # 1 + 2 * 1.5 = 4 s, with the production constants. Serve's replica count never changes
    # here (it lags ~15 s on a real node loss): the probes alone take the group down.
    bound_s = PROBE_PERIOD_S + PROBE_THRESHOLD * PROBE_TIMEOUT_S
    assert bound_s == 4.0
    d, engines, rec = make({"w1": ("ok", WEAK), "w2": ("ok", WEAK), "s": ("ok", STRONG)},
                           replicas={"w1": 1, "w2": 1, "s": 1})
    for g in ("w1", "w2", "s"):
        d.set_replicas(g, 1)

    async def go() -> tuple[float, list[tuple[int, str, int]], tuple[int, dict[str, object]]]:
        watcher = asyncio.create_task(d.watch())
        await asyncio.sleep(0.05)                           # the first round was answered
        assert engines.pings == {"w1": 1, "w2": 1, "s": 1}
        engines.lost.add("w1")
        lost_at = time.monotonic()

        async def one() -> tuple[int, str, int]:
            from tests.app.test_dispatch import request

            call, body = request(WEAK)
            reply = await d.dispatch(call, body)
            assert isinstance(reply, Reply)
            return reply.status, call.group, call.tries
        requests = [asyncio.create_task(one()) for _ in range(4)]
        assert d.pool is not None
        while d.pool.groups["w1"].state(time.monotonic()) != "down":
            await asyncio.sleep(0.01)
        seen_s = time.monotonic() - lost_at
        health = d.health(time.monotonic())
        answers = await asyncio.gather(*requests)
        watcher.cancel()
        return seen_s, answers, health

    seen_s, answers, (code, h) = asyncio.run(go())
    print(f"lost group down after {seen_s:.2f} s (bound {bound_s:g} s)")
    assert bound_s - 0.2 <= seen_s <= bound_s + 0.5 and seen_s <= 5.0, seen_s
    # The calls that waited on w1 were aborted there and answered by w2: none failed.
    assert sorted(answers) == [(200, "w2", 1), (200, "w2", 1), (200, "w2", 2), (200, "w2", 2)]
    assert rec.states["w1"] == "down" and rec.retries == {"w1": 2}
    assert (code, h["status"], h["groups"]["w1"]["state"]) == (200, "degraded", "down")
    assert h["groups"]["w1"]["reason"].startswith("no answer to the last 2 liveness probes")
    assert h["models"][WEAK]["state"] == "degraded"


def test_a_group_that_answers_again_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "PROBE_TIMEOUT_S", 0.1)  # the timing is the test above
    d, engines, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG)})
    engines.lost.add("w")

    async def rounds(n: int) -> None:
        for _ in range(n):
            await d.probe()
    # Rounds run back to back here (no period): two misses, one deadline each.
    asyncio.run(rounds(2))
    assert d.pool is not None and d.pool.groups["w"].state(time.monotonic()) == "down"
    code, h = d.health(time.monotonic())
    assert (code, h["models"][WEAK]["served_by"]) == (200, STRONG)
    engines.lost.clear()
    asyncio.run(rounds(1))
    assert d.pool.groups["w"].state(time.monotonic()) == "healthy"
    assert d.health(time.monotonic())[1]["status"] == "ok"
