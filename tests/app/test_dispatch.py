"""The dispatcher without HTTP or Serve: routing, admission, failover and accounting.

Engines are fakes with the backend contract (`app.emulated_server`) behind
`app.calls.EngineClient`:
``ok`` answers at once, ``fail`` raises, ``hang`` never answers, ``slow`` takes 0.2 s,
``reject`` answers a 400 error body, ``midfail`` streams one item then fails; a group in
``lost`` (its node gone) answers neither calls nor liveness pings. The recorder keeps every
observation.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Generator
from typing import Any

import pytest

from app.calls import Call, Reply, StreamReply
from app.dispatch import Dispatcher
from app.openai_api import ApiError, completion, error_body, sse
from app.router_config import RouterConfig
from app.routing import RouterError

WEAK, STRONG, BIG = "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"


class FakePending:
    """An engine call: awaitable once, cancellable."""

    def __init__(self, result: Awaitable[Any]) -> None:
        self.result, self.cancelled = result, False

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result.__await__()

    def cancel(self) -> None:
        self.cancelled = True


class FakeStream:
    """A streamed engine call over `items` (an exception item is raised in its turn)."""

    def __init__(self, items: list[Any], hang: bool = False) -> None:
        self.items, self.hang, self.cancelled = list(items), hang, False

    def __anext__(self) -> Awaitable[str]:
        async def nxt() -> str:
            if self.hang:
                await asyncio.sleep(3600)
            if not self.items:
                raise StopAsyncIteration
            item = self.items.pop(0)
            if isinstance(item, Exception):
                raise item
            return str(item)
        return nxt()

    def cancel(self) -> None:
        self.cancelled = True


class FakeEngines:
    """group -> (mode, model); counts calls per group and keeps every pending call."""

    def __init__(self, groups: dict[str, tuple[str, str]]) -> None:
        self.groups = groups
        self.calls: Counter[str] = Counter()
        self.pings: Counter[str] = Counter()
        self.lost: set[str] = set()
        self.pending: list[FakePending | FakeStream] = []

    def call(self, group: str, kind: str, body: dict[str, Any]) -> FakePending:
        mode, model = self.groups[group]
        self.calls[group] += 1

        async def answer() -> Any:
            if group in self.lost:
                await asyncio.sleep(3600)
            if mode == "fail":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if mode == "hang":
                await asyncio.sleep(3600)
            if mode == "slow":
                await asyncio.sleep(0.2)
            if mode == "reject":
                return error_body(400, "max_tokens is too large", param="max_tokens")
            assert body["model"] == model
            return completion(kind, model, "ok", 3, 1)

        p = FakePending(answer())
        self.pending.append(p)
        return p

    def stream(self, group: str, kind: str, body: dict[str, Any]) -> FakeStream:
        mode, _ = self.groups[group]
        self.calls[group] += 1
        event = sse({"choices": [{"delta": {"content": "a"}}]})
        items: list[Any] = {
            "ok": [event, event + sse("[DONE]")],
            "fail": [RuntimeError("engine died")],
            "midfail": [event, RuntimeError("connection reset")],
        }.get(mode, [])
        s = FakeStream(items, hang=mode == "hang" or group in self.lost)
        self.pending.append(s)
        return s

    def ping(self, group: str) -> FakePending:
        self.pings[group] += 1

        async def answer() -> bool:
            if group in self.lost:
                await asyncio.sleep(3600)
            return True
        return FakePending(answer())


class FakeRecorder:
    """Every call of the `app.calls.Recorder` contract."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.retries: Counter[str] = Counter()
        self.degraded_models: Counter[str] = Counter()
        self.states: dict[str, str] = {}
        self.gauges: list[tuple[float | None, float, float]] = []
        self.moves: list[tuple[str | None, float, float]] = []
        self.errors: dict[tuple[str, str], float] = {}

    def observe(self, **row: Any) -> None:
        self.rows.append(row)

    def retry(self, group: str) -> None:
        self.retries[group] += 1

    def degraded(self, model: str) -> None:
        self.degraded_models[model] += 1

    def group_state(self, group: str, state: str) -> None:
        self.states[group] = state

    def routing_state(self, routed_share: float | None, target: float, threshold: float) -> None:
        self.gauges.append((routed_share, target, threshold))

    def threshold_guard(self, workload: str | None, wanted: float, moved: float) -> None:
        self.moves.append((workload, wanted, moved))

    def prediction_error(self, group: str, quantity: str, value: float) -> None:
        self.errors[(group, quantity)] = value


def make(groups: dict[str, tuple[str, str]], shares: dict[str, dict[str, float]] | None = None,
         **config: Any) -> tuple[Dispatcher, FakeEngines, FakeRecorder]:
    """A dispatcher over fake groups (default shares: each model's groups alike)."""
    if shares is None:
        shares = {}
        for name, (_, model) in groups.items():
            shares.setdefault(model, {})[name] = 1.0
    engines, rec = FakeEngines(groups), FakeRecorder()
    d = Dispatcher(engines, rec)
    d.reconfigure(RouterConfig.parse({
        "weak": WEAK, "strong": STRONG, "strong_share": 0.5, "router": "random",
        "shares": shares, **config}), set(groups))
    return d, engines, rec


def request(model: str = "auto", *, stream: bool = False, **extra: Any
            ) -> tuple[Call, dict[str, Any]]:
    body = {"model": model, "max_tokens": 4, "stream": stream,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}], **extra}
    return Call("chat", time.time(), time.perf_counter(), stream=stream), body


def run(d: Dispatcher, model: str = "auto", **kw: Any) -> tuple[Call, Reply | StreamReply]:
    """One request through `dispatch` (refusals answered by `refuse`, as the ingress does)."""
    call, body = request(model, **kw)

    async def go() -> Reply | StreamReply:
        try:
            return await d.dispatch(call, body)
        except ApiError as exc:
            return d.refuse(call, exc)
    return call, asyncio.run(go())


def drain(reply: Reply | StreamReply) -> str:
    assert isinstance(reply, StreamReply)

    async def read() -> str:
        return "".join([e async for e in reply.events])
    return asyncio.run(read())


# -- routing -------------------------------------------------------------------------------
def test_the_pair_routes_by_its_live_threshold_and_counts_every_request() -> None:
    # A known threshold of 0.5 on the random scorer: strong exactly when the score >= 0.5.
    d, _, rec = make({"w": ("ok", WEAK), "s": ("ok", STRONG)}, threshold=0.5)
    for _ in range(40):
        call, reply = run(d)
        assert isinstance(reply, Reply) and reply.status == 200
        assert call.score is not None and call.model == (STRONG if call.score >= 0.5 else WEAK)
        assert reply.headers["x-boute-model"] == call.model
        assert reply.headers["x-boute-score"] == f"{call.score:.6f}"
    call, reply = run(d, WEAK)                       # pinned: no score
    assert call.model == WEAK and call.score is None
    assert isinstance(reply, Reply) and reply.headers["x-boute-score"] == "pinned"
    assert sum(d.tally.counts.values()) == 40 and d.tally.pinned == 1 and d.tally.routed == 41
    assert d.tally.outcomes == {"ok": 41} and len(rec.rows) == 41
    assert {r["workload"] for r in rec.rows if r["score"] is not None} == {"default"}
    # Every 50 routed requests the gauges are set: not yet at 41.
    assert rec.gauges == []


@pytest.mark.parametrize(("model", "status", "match"), [
    (None, 400, "model is required"),
    ("gpt-9", 404, "'gpt-9' does not exist"),
    ("auto:nope", 404, "workload 'nope' does not exist; use one of auto:default"),
    (BIG, 404, "does not exist"),                   # not a model of the pair
])
def test_unknown_models_and_workloads_are_refused_and_counted(model: str | None, status: int,
                                                              match: str) -> None:
    d, engines, rec = make({"w": ("ok", WEAK), "s": ("ok", STRONG)})
    call, body = request()
    body["model"] = model
    with pytest.raises(ApiError, match=match) as info:
        asyncio.run(d.dispatch(call, body))
    assert info.value.status == status
    reply = d.refuse(call, info.value)
    assert reply.status == status and set(reply.body["error"]) == {"message", "type", "param",
                                                                   "code"}
    assert d.tally.outcomes == {"client_error": 1} and rec.rows[0]["status"] == status
    assert not engines.calls


def test_a_model_without_groups_in_the_plan_is_404_when_pinned() -> None:
    d, _, _ = make({"w": ("ok", WEAK)})
    _, reply = run(d, STRONG)
    assert isinstance(reply, Reply) and reply.status == 404
    assert "no replicas in the running plan" in reply.body["error"]["message"]


def test_a_ladder_routes_each_workload_by_its_cascade() -> None:
    """Before a window of scores is in, each cascade routes by deficit: the shares exactly."""
    d, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG), "b": ("ok", BIG)},
                   models=[WEAK, STRONG, BIG],
                   workloads={"math": {"shares": [0.2, 0.5, 0.3]},
                              "chat": {"shares": [0.6, 0.4, 0.0], "thresholds": [None, None]}})
    math_models, chat_models = Counter[str](), Counter[str]()
    for _ in range(20):
        math_models[run(d, "auto:math")[0].model] += 1
        call, body = request()
        call.workload_asked = "chat"                # the x-boute-workload header
        asyncio.run(d.dispatch(call, body))
        chat_models[call.model] += 1
    # 20 x (0.2, 0.5, 0.3) = 4 / 10 / 6; 20 x (0.6, 0.4, 0) = 12 / 8 / 0.
    assert math_models == {WEAK: 4, STRONG: 10, BIG: 6}
    assert chat_models == {WEAK: 12, STRONG: 8}
    code, health = d.health(time.monotonic())
    assert code == 200 and health["workloads"]["chat"]["routed"][WEAK] == pytest.approx(0.6)
    assert health["workloads"]["math"]["target"][BIG] == pytest.approx(0.3)
    assert health["workloads"]["math"]["requests"] == 20


def test_length_classes_pick_their_lane_and_fall_back_to_the_other_when_down() -> None:
    shares = {f"{STRONG}#short": {"short-a": 1.0}, f"{STRONG}#long": {"long-b": 1.0}}
    cfg = {"models": [STRONG], "strong_share": 1.0, "length_threshold_tokens": 60,
           "workloads": {"default": {"shares": [1.0]}}}
    d, _, _ = make({"short-a": ("ok", STRONG), "long-b": ("ok", STRONG)}, shares, **cfg)
    # "What is 2 + 2?" is a handful of tokens: with max_tokens 4 short, with 500 long.
    assert run(d)[0].group == "short-a"
    assert run(d, max_tokens=500)[0].group == "long-b"
    d, _, _ = make({"short-a": ("fail", STRONG), "long-b": ("ok", STRONG)}, shares, **cfg)
    call, reply = run(d)
    assert isinstance(reply, Reply) and reply.status == 200
    assert (call.group, call.length_class, call.tries) == ("long-b", "short", 2)


# -- admission and the choice of a group --------------------------------------------------------
def test_groups_take_the_plan_shares_exactly() -> None:
    d, engines, _ = make({"a": ("ok", WEAK), "b": ("ok", WEAK), "s": ("ok", STRONG)},
                         {WEAK: {"a": 0.75, "b": 0.25}, STRONG: {"s": 1.0}})
    for _ in range(8):
        run(d, WEAK)
    # Smooth weighted round robin: 8 x (0.75, 0.25) = 6 / 2.
    assert (engines.calls["a"], engines.calls["b"]) == (6, 2)


def test_a_full_model_is_shed_with_429_and_retry_after() -> None:
    d, _, rec = make({"w": ("slow", WEAK), "s": ("ok", STRONG)}, limits={"w": 2})

    async def burst() -> list[Reply | StreamReply]:
        async def one() -> Reply | StreamReply:
            call, body = request(WEAK)
            try:
                return await d.dispatch(call, body)
            except ApiError as exc:
                return d.refuse(call, exc)
        return list(await asyncio.gather(*(one() for _ in range(5))))

    replies = [r for r in asyncio.run(burst()) if isinstance(r, Reply)]
    assert Counter((r.status, r.headers.get("retry-after")) for r in replies) == {
        (200, None): 2, (429, "1"): 3}
    assert d.tally.outcomes == {"ok": 2, "shed": 3}
    assert d.pool is not None and d.pool.groups["w"].inflight == 0
    assert sorted(r["status"] for r in rec.rows) == [200, 200, 429, 429, 429]


# -- failover ---------------------------------------------------------------------------------
def test_a_failed_call_is_retried_on_another_group_and_the_failing_one_ejected() -> None:
    d, engines, rec = make({"bad": ("fail", WEAK), "good": ("ok", WEAK), "s": ("ok", STRONG)},
                           {WEAK: {"bad": 0.5, "good": 0.5}, STRONG: {"s": 1.0}})
    tries = Counter[tuple[str, int]]()
    for i in range(12):
        call, reply = run(d, WEAK, stream=i % 3 == 0)
        if isinstance(reply, StreamReply):
            assert drain(reply).endswith("data: [DONE]\n\n")
        else:
            assert reply.status == 200
        tries[(call.group, call.tries)] += 1
    # Every answer came from the good group; the bad one was tried until its breaker opened
    # (3 consecutive failures), then skipped.
    assert set(g for g, _ in tries) == {"good"} and tries[("good", 2)] == 3
    assert engines.calls["bad"] == 3 and rec.retries == {"bad": 3}
    assert rec.states == {"bad": "ejected"}
    code, health = d.health(time.monotonic())
    assert code == 200 and health["status"] == "degraded"
    assert health["groups"]["bad"]["state"] == "down"       # takes no traffic
    assert health["groups"]["bad"]["routing"] == "ejected"
    assert health["groups"]["bad"]["reason"].startswith("circuit breaker open for")
    # The model still has a serving group: degraded, served by itself.
    assert health["models"][WEAK] == {"state": "degraded", "groups": ["bad", "good"],
                                      "served_by": None}


def test_a_model_that_is_down_falls_back_or_fails_fast() -> None:
    groups = {"w": ("ok", WEAK), "s": ("fail", STRONG)}
    d, _, rec = make(groups)
    call, reply = run(d, STRONG)
    assert isinstance(reply, Reply) and reply.status == 200
    # One failed call on the strong group, then the weak model serves it, flagged.
    assert (call.model, call.degraded, call.tries) == (WEAK, STRONG, 2)
    assert reply.headers["x-boute-degraded"] == STRONG and rec.degraded_models == {STRONG: 1}
    assert d.tally.outcomes == {"degraded": 1}
    d, _, _ = make(groups, settings={"on_model_down": "fail"})
    statuses = [run(d, STRONG)[1] for _ in range(4)]
    assert [r.status for r in statuses if isinstance(r, Reply)] == [503] * 4
    assert isinstance(statuses[-1], Reply) and statuses[-1].headers["retry-after"] == "5"
    assert d.pool is not None and d.pool.groups["s"].failed == 3


def test_the_last_try_answers_502_with_the_engines_reason() -> None:
    d, engines, _ = make({"a": ("fail", WEAK), "b": ("fail", WEAK), "s": ("ok", STRONG)},
                         settings={"max_tries": 2, "on_model_down": "fail"})
    call, reply = run(d, WEAK)
    assert isinstance(reply, Reply) and reply.status == 502 and call.tries == 2
    assert "failed after 2 tries: RuntimeError: CUDA error" in reply.body["error"]["message"]
    assert d.tally.errors == 1 and d.tally.outcomes == {"engine_error": 1}
    assert engines.calls["a"] + engines.calls["b"] == 2


def test_a_call_past_its_deadline_is_cancelled_and_retried() -> None:
    d, engines, _ = make({"stuck": ("hang", WEAK), "fine": ("ok", WEAK), "s": ("ok", STRONG)},
                         settings={"call_timeout_s": 0.05})
    t = time.monotonic()
    out = [run(d, WEAK, stream=s) for s in (False, True, False, True)]
    assert time.monotonic() - t < 2                  # two deadlines of 0.05 s, not an hour
    assert all(c.group == "fine" for c, _ in out)
    assert sorted(c.tries for c, _ in out) == [1, 1, 2, 2]
    assert [p.cancelled for p in engines.pending if p.cancelled] == [True, True]
    for _, reply in out:
        if isinstance(reply, StreamReply):
            drain(reply)


def test_an_engine_4xx_is_the_clients_and_never_retried() -> None:
    d, engines, _ = make({"w": ("reject", WEAK), "w2": ("ok", WEAK), "s": ("ok", STRONG)})
    call, reply = run(d, WEAK)
    assert isinstance(reply, Reply) and reply.status == 400 and call.tries == 1
    assert sum(engines.calls.values()) == 1 and d.tally.outcomes == {"client_error": 1}


def test_a_group_that_loses_replicas_has_its_waiting_calls_retried_elsewhere() -> None:
    d, _, rec = make({"stuck": ("hang", WEAK), "fine": ("ok", WEAK), "s": ("ok", STRONG)},
                     {WEAK: {"stuck": 0.9, "fine": 0.1}, STRONG: {"s": 1.0}})

    async def go() -> tuple[Call, Reply | StreamReply]:
        d.set_replicas("stuck", 1)
        call, body = request(WEAK)
        task = asyncio.create_task(d.dispatch(call, body))
        await asyncio.sleep(0.05)                    # the call waits on "stuck"
        d.set_replicas("stuck", 0)                   # its node died
        return call, await asyncio.wait_for(task, 5)

    call, reply = asyncio.run(go())
    assert isinstance(reply, Reply) and reply.status == 200
    assert (call.group, call.tries) == ("fine", 2) and rec.states["stuck"] == "down"


# -- streaming and accounting ------------------------------------------------------------------
def test_a_stream_is_passed_on_then_released_and_recorded_once() -> None:
    d, _, rec = make({"w": ("ok", WEAK), "s": ("ok", STRONG)})
    _, reply = run(d, WEAK, stream=True)
    assert d.pool is not None and d.pool.groups["w"].inflight == 1     # until the stream ends
    text = drain(reply)
    assert text.count("data: {") == 2 and d.pool.groups["w"].inflight == 0
    (row,) = rec.rows
    assert (row["status"], row["outcome"], row["output_tokens"], row["stream"]) == (
        200, "ok", 2, True)
    d, _, rec = make({"w": ("midfail", WEAK), "s": ("ok", STRONG)})
    _, reply = run(d, WEAK, stream=True)
    text = drain(reply)
    # A byte already left: no retry, an error event and the end of the stream instead.
    assert '"code": 502' in text and text.endswith("data: [DONE]\n\n")
    assert rec.rows[-1]["outcome"] == "engine_error" and d.tally.errors == 1


def test_health_reports_the_pair_and_hides_nothing_it_counts() -> None:
    d, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG)}, threshold=0.5, config_id="abc",
                   settings={"call_timeout_s": 7.0})
    for _ in range(10):
        run(d)
    code, h = d.health(time.monotonic())
    strong = d.tally.counts[STRONG]
    assert code == 200 and (h["status"], h["config_id"], h["requests"]) == ("ok", "abc", 10)
    assert h["strong_share_target"] == 0.5 and h["threshold"] == 0.5
    assert h["strong_share_routed"] == pytest.approx(strong / 10)
    assert (h["router"], h["call_timeout_s"]) == ("random", 7.0) and "workloads" not in h


# -- configuration --------------------------------------------------------------------------
def test_reconfigure_is_all_or_nothing_and_keeps_live_state() -> None:
    d, _, _ = make({"w": ("fail", WEAK), "w2": ("ok", WEAK), "s": ("ok", STRONG)})
    for _ in range(3):
        run(d, WEAK)
    before = d.config
    bad = RouterConfig.parse({"weak": WEAK, "strong": STRONG, "strong_share": 0.2,
                              "shares": {WEAK: {"w": 1.0, "ghost": 1.0}}})
    with pytest.raises(RouterError, match=r"shares name unknown groups \['ghost'\]"):
        d.reconfigure(bad, {"w", "w2", "s"})
    assert d.config is before and d.pair is not None and d.pair.strong_share == 0.5
    # A new share, same groups: the failing group's breaker state stays.
    ok = before.model_copy(update={"strong_share": 0.2}) if before else None
    assert ok is not None
    failed = d.pool.groups["w"].failed if d.pool else 0
    d.reconfigure(ok, {"w", "w2", "s"})
    assert d.pair.strong_share == 0.2 and d.pool is not None
    assert d.pool.groups["w"].failed == failed > 0


# -- request fields: token-id prompts and n ---------------------------------------------------
def _completions(model: str, prompt: Any, **extra: Any) -> tuple[Call, dict[str, Any]]:
    """A completions request checked as the ingress checks it on arrival."""
    from app.guard import RequestLimits, check_body

    body = {"model": model, "prompt": prompt, "max_tokens": 4, **extra}
    check_body("completions", body, RequestLimits())
    return Call("completions", time.time(), time.perf_counter()), body


def test_a_token_id_prompt_is_served_end_to_end_by_the_plans_shares() -> None:
    """No text to score: `auto` sends token ids by the plan's shares, unscored, unchanged."""
    d, engines, rec = make({"w": ("ok", WEAK), "s": ("ok", STRONG)}, strong_share=0.25,
                           threshold=0.5)
    sent: list[dict[str, Any]] = []
    call_engine = engines.call

    def spy(group: str, kind: str, body: dict[str, Any]) -> FakePending:
        sent.append(body)
        return call_engine(group, kind, body)
    engines.call = spy  # type: ignore[method-assign]
    models = Counter[str]()
    for _ in range(8):
        call, body = _completions("auto", [1, 2, 3])
        reply = asyncio.run(d.dispatch(call, body))
        assert isinstance(reply, Reply) and reply.status == 200
        assert reply.headers["x-boute-score"] == "unscored" and call.score is None
        assert call.prompt_tokens == 3 and call.units == 1
        models[call.model] += 1
    # Smooth weighted round robin over (0.75, 0.25): 8 requests are 6 weak, 2 strong.
    assert models == {WEAK: 6, STRONG: 2}
    assert all(b["prompt"] == [1, 2, 3] and b["max_tokens"] == 4 for b in sent)
    # The scored accounting (what calibrates and reports the live threshold) saw none.
    assert not d.tally.counts and d.tally.unscored == 8 and d.pair is not None
    assert d.pair.threshold == 0.5
    assert d.health(time.monotonic())[1]["unscored"] == 8
    assert [r["status"] for r in rec.rows] == [200] * 8
    # Pinned, a batch of two prompts: its model; its length is its longest prompt.
    call, body = _completions(WEAK, [[1, 2], [3, 4, 5]])
    reply = asyncio.run(d.dispatch(call, body))
    assert isinstance(reply, Reply) and reply.status == 200
    assert (call.model, call.prompt_tokens, call.units) == (WEAK, 3, 2)
    assert reply.headers["x-boute-score"] == "pinned"


def test_a_ladder_sends_token_id_prompts_by_its_workloads_shares() -> None:
    d, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG), "b": ("ok", BIG)},
                   models=[WEAK, STRONG, BIG],
                   workloads={"math": {"shares": [0.2, 0.5, 0.3]}})
    models = Counter[str]()
    for _ in range(10):
        call, body = _completions("auto:math", [7, 8])
        asyncio.run(d.dispatch(call, body))
        models[call.model] += 1
    assert models == {WEAK: 2, STRONG: 5, BIG: 3}            # 10 x (0.2, 0.5, 0.3)


def test_in_flight_admission_counts_n() -> None:
    """A bound of 4: two requests of n = 2 fill it, a third is shed; an idle group takes n = 8."""
    d, _, _ = make({"w": ("slow", WEAK), "s": ("ok", STRONG)}, limits={"w": 4})

    async def burst(n: int, k: int) -> list[Reply | StreamReply]:
        async def one() -> Reply | StreamReply:
            call, body = request(WEAK, n=n)
            try:
                return await d.dispatch(call, body)
            except ApiError as exc:
                return d.refuse(call, exc)
        return list(await asyncio.gather(*(one() for _ in range(k))))

    replies = asyncio.run(burst(2, 3))
    assert sorted(r.status for r in replies if isinstance(r, Reply)) == [200, 200, 429]
    assert d.pool is not None and d.pool.groups["w"].inflight == 0
    # Four requests of n = 1 are admitted by the same bound (n = 1: as before).
    assert [r.status for r in asyncio.run(burst(1, 4)) if isinstance(r, Reply)] == [200] * 4
    # n = 8 exceeds the bound of 4 but finds the group idle: it runs alone; a second is shed.
    replies = asyncio.run(burst(8, 2))
    assert sorted(r.status for r in replies if isinstance(r, Reply)) == [200, 429]
    # A stream holds its units until it ends.
    d2, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG)}, limits={"w": 4})
    call, reply = run(d2, WEAK, stream=True, n=3)
    assert d2.pool is not None and d2.pool.groups["w"].inflight == 3 and call.units == 3
    drain(reply)
    assert d2.pool.groups["w"].inflight == 0
