"""Cache-affine routing in a dry run: two emulated replicas with prefix caches behind the
router, conversations named by ``x-session-id``, prefix-affine vs Serve's power of two."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.app import free_port
from tuning import Group, Plan, Routing

REPO = Path(__file__).resolve().parents[2]
MODEL = "llama-3.1-8b"
PLAN = Plan(Routing(1.0), (Group(MODEL, "H100", 1, 1, 2, 1.0),),
            scenario={"models": {"weak": MODEL, "strong": MODEL}})
SYSTEM = "rules " * 133                      # ~200 tokens (4 characters per token)


async def _conversations(url: str, n: int, turns: int) -> None:
    """`n` conversations of `turns` turns, 4 at a time; each turn after the previous one."""
    import aiohttp

    sem = asyncio.Semaphore(4)
    async with aiohttp.ClientSession() as session:
        async def one(c: int) -> None:
            messages = [{"role": "system", "content": SYSTEM}]
            async with sem:
                for t in range(turns):
                    messages.append({"role": "user", "content": f"c{c} t{t} " + "ask " * 300})
                    body = {"model": "auto", "max_tokens": 2, "messages": messages}
                    async with session.post(f"{url}/v1/chat/completions", json=body,
                                            headers={"x-session-id": f"c{c}"}) as r:
                        assert r.status == 200, await r.text()
                    messages.append({"role": "assistant", "content": "answer " * 6})
        await asyncio.gather(*(one(c) for c in range(n)))


def _hit_rate(app_name: str) -> tuple[float, int]:
    """The group's hit rate over both replicas (cached / prompt tokens) and replicas seen."""
    from ray import serve

    handle = serve.get_deployment_handle(PLAN.groups[0].name, app_name)
    stats: dict[str, dict[str, Any]] = {}
    for _ in range(60):                     # power of two (no body) reaches both, soon
        s = handle.prefix_cache_stats.remote().result()
        stats[s["replica"]] = s
        if len(stats) == 2:
            break
    prompt = sum(s["prompt_tokens"] for s in stats.values())
    return sum(s["cached_tokens"] for s in stats.values()) / prompt, len(stats)


@pytest.mark.heavy
def test_prefix_affinity_raises_the_emulated_hit_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray import serve

    from app.main import build_app
    from placement import local_cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = local_cluster({"H100": 2}, {"H100": 8}, temp_dir=REPO / "build" / "ray-tmp-aff")
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        hit = {}
        for affinity in ("off", "prefix"):
            name = f"boute-{affinity}"
            serve.run(build_app(PLAN, affinity=affinity, prefix_cache=True), name=name,
                      route_prefix="/")
            asyncio.run(_conversations(f"http://127.0.0.1:{port}", 16, 5))
            hit[affinity], seen = _hit_rate(name)
            assert seen == 2
            serve.delete(name)
        # 16 conversations of 5 turns, prompts ~500 to ~1,740 tokens: with affinity every turn
        # finds its history (~0.72 of the prompt tokens); at random half the time (~0.44).
        assert hit["prefix"] >= 0.6, hit
        assert hit["prefix"] - hit["off"] >= 0.1, hit
        print(hit)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
