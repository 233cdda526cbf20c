"""End to end on a local fake heterogeneous cluster: plan -> Serve app -> HTTP (emulated)."""

import asyncio
import json
import socket
from collections import Counter
from pathlib import Path

import pytest

from tuning import Group, Plan, Routing

REPO = Path(__file__).resolve().parents[2]

PLAN = Plan(Routing(0.3, router="builtin"), (
    Group("llama-3.1-8b", "RTX-4090", 1, 1, 1, 0.6),
    Group("llama-3.1-8b", "RTX-5090", 1, 1, 1, 0.4),
    Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0),
), scenario={"models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive(url: str, n: int) -> tuple[Counter[str], Counter[str], int, list[str]]:
    import aiohttp

    from tests.app.test_routing import prompts

    models: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    errors = 0
    streamed: list[str] = []
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:
        async def one(i: int, prompt: str) -> None:
            nonlocal errors
            stream = i % 4 == 0
            body = {"model": "auto", "max_tokens": 3, "stream": stream,
                    "messages": [{"role": "user", "content": prompt}]}
            async with sem, session.post(f"{url}/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    errors += 1
                    return
                models[r.headers["x-boute-model"]] += 1
                groups[r.headers["x-boute-group"]] += 1
                if stream:
                    text = await r.text()
                    if i == 0:
                        streamed.extend(line for line in text.split("\n\n") if line)
                else:
                    data = await r.json()
                    assert data["usage"]["completion_tokens"] == 3
                    assert data["model"] == r.headers["x-boute-model"]
        await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(n, seed=7))))
    return models, groups, errors, streamed


async def _get(url: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return await r.json()


@pytest.mark.heavy
def test_router_serves_the_plan_on_a_fake_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray import serve

    from app.main import build_app
    from placement import local_cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = local_cluster({"RTX-4090": 1, "RTX-5090": 1, "H100": 4},
                            {"RTX-4090": 8, "RTX-5090": 8, "H100": 8},
                            temp_dir=REPO / "build" / "ray-tmp")
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(PLAN), name="boute", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        models, groups, errors, streamed = asyncio.run(_drive(url, 400))
        assert errors == 0
        total = sum(models.values())
        assert total == 400
        assert abs(models["llama-3.1-70b"] / total - 0.3) <= 0.03
        weak = models["llama-3.1-8b"]
        assert abs(groups["g0-llama-3.1-8b-RTX-4090-tp1pp1"] / weak - 0.6) <= 0.02
        assert groups["g2-llama-3.1-70b-H100-tp4pp1"] == models["llama-3.1-70b"]
        # A stream: 3 content chunks, then [DONE].
        assert streamed[-1] == "data: [DONE]"
        chunks = [json.loads(s[len("data: "):]) for s in streamed[:-1]]
        assert len(chunks) == 3 and chunks[-1]["choices"][0]["finish_reason"] == "length"
        # The replicas were placed on the fake nodes of their GPU type.
        placed = Counter()
        for pg in ray.util.placement_group_table().values():
            if pg["state"] == "CREATED":
                for b in pg["bundles"].values():
                    placed.update({k: v for k, v in b.items() if k.startswith("gpu_type_")})
        assert placed == {"gpu_type_RTX-4090": 1, "gpu_type_RTX-5090": 1, "gpu_type_H100": 4}
        # A routing change goes out as a new user_config (Serve calls reconfigure). serve.run
        # is imperative and may replace the router replica; the engines are not touched.
        from dataclasses import replace

        serve.run(build_app(replace(PLAN, routing=Routing(0.7))), name="boute",
                  route_prefix="/")
        models, _groups, errors, _ = asyncio.run(_drive(url, 200))
        assert errors == 0 and abs(models["llama-3.1-70b"] / 200 - 0.7) <= 0.03
        health = asyncio.run(_get(f"{url}/health"))
        assert health["strong_share_target"] == 0.7 and health["errors"] == 0
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
