"""The emulated engine on the shared scheduler: admission control, cancellation, preemption,
and agreement with the simulator (no Ray: asyncio only)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.emulated import EmulatedEngine
from profiling import Catalog, ReplicaModel, SequenceTooLongError, Trace, simulate_closed_loop
from tests.conftest import make_replica


@pytest.fixture
def small_kv(catalog: Catalog) -> ReplicaModel:
    # 8B on one RTX 4090 at 75% memory: K = 6002 KV tokens (at least max_model_len = 2048).
    r = make_replica(catalog, gpu="RTX-4090", gpu_memory_utilization=0.75, max_model_len=2048)
    assert r.memory.kv_capacity_tokens == 6002
    return r


async def collect(engine: EmulatedEngine, prompt: int, max_tokens: int,
                  finish: dict[int, float] | None = None, key: int = 0) -> list[int]:
    toks = [t async for t in engine.generate(prompt, max_tokens)]
    if finish is not None:
        finish[key] = engine.engine_time_s
    return toks


def test_check_rejects_what_can_never_fit_the_kv_cache(small_kv: ReplicaModel) -> None:
    engine = EmulatedEngine(small_kv, time_scale=0)
    # floor(0.99 * 6002) = 5941 tokens per sequence.
    engine.check(5000, 941)
    with pytest.raises(SequenceTooLongError, match=r"at most 5941 tokens per sequence \(6002 "
                       r"tokens, 1% kept free\)\. However, you requested 5942 tokens \(5000 in "
                       r"the prompt, 942 in the completion\)\. Please reduce max_tokens to at "
                       r"most 941"):
        engine.check(5000, 942)
    assert issubclass(SequenceTooLongError, ValueError)

    async def oversized() -> None:
        async for _ in engine.generate(6000, 1):
            pass

    with pytest.raises(SequenceTooLongError, match="shorten the prompt"):
        asyncio.run(oversized())
    assert not engine.scheduler.waiting and engine.steps == 0


def test_aclose_frees_the_sequence_at_once_and_others_keep_running(
        small_kv: ReplicaModel) -> None:
    engine = EmulatedEngine(small_kv, time_scale=0)
    sched = engine.scheduler

    async def main() -> tuple[int, list[int]]:
        other = asyncio.ensure_future(collect(engine, 100, 50))
        gen = engine.generate(100, 1000)
        got = [await gen.__anext__() for _ in range(5)]
        assert got == [0, 1, 2, 3, 4] and sched.n_decode == 2
        kv_before = sched.kv_used_tokens
        await gen.aclose()
        # Gone before the next step: its 100 + 5 tokens leave the cache, one decode is left.
        assert sched.kv_used_tokens == kv_before - 105 and sched.n_decode == 1
        return len(sched.running), await other

    running, other = asyncio.run(main())
    assert running == 1 and other == list(range(50))
    assert not sched.running and sched.kv_used_tokens == 0


def test_cancelled_consumer_leaves_the_engine(small_kv: ReplicaModel) -> None:
    engine = EmulatedEngine(small_kv, time_scale=0)

    async def main() -> None:
        task = asyncio.ensure_future(collect(engine, 100, 1000))
        while engine.steps < 3:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not engine.scheduler.running and engine.scheduler.kv_used_tokens == 0
        steps = engine.steps
        await asyncio.sleep(0.01)
        assert engine.steps == steps                 # the engine went idle: no more steps

    asyncio.run(main())


def test_preempted_requests_complete_as_in_the_simulator(small_kv: ReplicaModel) -> None:
    # 4 requests of 1000 + 1000 tokens at t = 0 need 8000 KV tokens at the end; K = 6002.
    n, prompt, out = 4, 1000, 1000
    engine = EmulatedEngine(small_kv, time_scale=0)
    finish: dict[int, float] = {}

    async def main() -> list[list[int]]:
        return await asyncio.gather(*(collect(engine, prompt, out, finish, i) for i in range(n)))

    toks = asyncio.run(main())
    assert all(t == list(range(out)) for t in toks)
    trace = Trace(np.zeros(n), np.full(n, prompt, dtype=np.int64), np.full(n, out, dtype=np.int64))
    sim = simulate_closed_loop(small_kv, trace, concurrency=n)
    assert sim.preemptions > 0 and engine.scheduler.preemptions == sim.preemptions
    # Same policy, same step times: each request ends at the simulator's time (the simulator
    # sums pure-decode stretches in closed form, hence the tolerance).
    np.testing.assert_allclose(sorted(finish.values()), np.sort(sim.latency_s), rtol=1e-9)


def test_a_failing_engine_loop_ends_every_stream_with_an_error(small_kv: ReplicaModel) -> None:
    engine = EmulatedEngine(small_kv, time_scale=0)

    def broken(plan: object) -> None:
        raise ZeroDivisionError("boom")

    engine.scheduler.finish_step = broken  # type: ignore[method-assign,assignment]

    async def main() -> None:
        await collect(engine, 10, 5)

    with pytest.raises(RuntimeError, match="emulated engine loop failed"):
        asyncio.run(main())


def test_the_emulated_server_refuses_what_its_kv_cache_can_never_hold() -> None:
    """The reported case: max_tokens 131000 on the emulated 8B / RTX-4090 (context 131072)."""
    from app.emulated_server import EmulatedLLMServer
    from app.openai_api import ApiError

    server = EmulatedLLMServer.func_or_class("llama-3.1-8b", "RTX-4090", 1, 1)
    limit = int(0.99 * server.engine.replica.memory.kv_capacity_tokens)
    assert limit < 131_000               # the 24 GiB card holds far less than the context
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 131_000}
    with pytest.raises(ApiError) as exc:
        server._check("chat", body)
    assert exc.value.status == 400 and exc.value.param == "max_tokens"
    assert f"at most {limit} tokens per sequence" in str(exc.value)
    assert server._check("chat", {**body, "max_tokens": limit - 1}) == (1, limit - 1)


def test_the_emulated_server_serves_token_id_prompts() -> None:
    """A token-id prompt is as many prompt tokens as ids (a batch: its longest prompt)."""
    from app.emulated_server import EmulatedLLMServer

    server = EmulatedLLMServer.func_or_class("llama-3.1-8b", "RTX-4090", 1, 1, time_scale=0.0)
    assert server._check("completions", {"prompt": [1, 2, 3], "max_tokens": 4}) == (3, 4)
    assert server._check("completions", {"prompt": [[1], [2, 3, 4, 5]], "max_tokens": 2}) == (
        4, 2)
    reply = asyncio.run(server.openai("completions", {"prompt": [9] * 7, "max_tokens": 2}))
    assert reply["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_a_decode_engine_skips_the_prompt_unless_it_was_lost() -> None:
    """remote_kv: the prompt's KV arrives (all but its last token, `profiling.RemoteKv`); with
    kv_present=False the engine computes the prompt as a co-located replica does."""
    from profiling import load_catalog

    cat = load_catalog()
    rep = ReplicaModel(cat.model("llama-3.1-8b"), cat.gpu("H100"), 1)

    async def run(engine: EmulatedEngine, **kw: bool) -> int:
        return len([t async for t in engine.generate(2000, 4, **kw)])

    colo, dec, lost = (EmulatedEngine(rep, time_scale=0),
                       EmulatedEngine(rep, time_scale=0, remote_kv=True),
                       EmulatedEngine(rep, time_scale=0, remote_kv=True))
    assert asyncio.run(run(colo)) == asyncio.run(run(dec)) == asyncio.run(
        run(lost, kv_present=False)) == 4
    # Co-located: one 2,000-token prefill step (the engine's default 8,192-token budget) and
    # 3 decode steps; decode: a 1-token prefill step instead. Same steps, cheaper first one.
    assert colo.steps == dec.steps == lost.steps == 4
    assert dec.engine_time_s < colo.engine_time_s
    assert lost.engine_time_s == colo.engine_time_s


def test_the_prefix_cache_and_a_decode_pools_remote_kv_are_not_combined() -> None:
    """The scheduler takes one KV-cache model: vLLM's prefix cache or a decode pool's remote
    KV; asking for both is refused with what to drop."""
    from profiling import load_catalog

    rep = make_replica(load_catalog())
    with pytest.raises(ValueError, match="not both: serve pool pairs without --prefix-cache"):
        EmulatedEngine(rep, 0.0, True, remote_kv=True)
    assert EmulatedEngine(rep, 0.0, True).prefix_cache is not None
