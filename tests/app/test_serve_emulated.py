"""End to end on a local fake heterogeneous cluster: plan -> Serve app -> HTTP (emulated)."""

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.app import free_port
from tuning import Group, Plan, Routing

REPO = Path(__file__).resolve().parents[2]

PLAN = Plan(Routing(0.3, router="builtin"), (
    Group("llama-3.1-8b", "RTX-4090", 1, 1, 1, 0.6),
    Group("llama-3.1-8b", "RTX-5090", 1, 1, 1, 0.4),
    Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0),
), scenario={"models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}})



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


async def _statuses(url: str, n: int) -> Counter[tuple[str, int]]:
    import aiohttp

    out: Counter[tuple[str, int]] = Counter()
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            body = {"model": "auto", "max_tokens": 2, "stream": i % 2 == 1,
                    "messages": [{"role": "user", "content": f"question {i} " * (i + 1)}]}
            async with session.post(f"{url}/v1/chat/completions", json=body) as r:
                await r.read()
                out[(r.headers.get("x-boute-model", ""), r.status)] += 1
    return out


def _scrape_until(names: tuple[str, ...], timeout_s: float) -> str:
    """Text of every node's Prometheus endpoint, once all `names` show up (Ray exports
    metrics every few seconds)."""
    import time
    import urllib.request

    import ray

    deadline = time.time() + timeout_s
    text = ""
    while time.time() < deadline:
        text = ""
        for node in ray.nodes():
            if node["Alive"] and node.get("MetricsExportPort"):
                url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        text += r.read().decode()
                except OSError:
                    continue
        if all(name in text for name in names):
            return text
        time.sleep(2)
    return text


async def _get(url: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return await r.json()


def _faulty_app():
    """The router over a healthy weak group and a strong group whose engine always fails."""
    from ray import serve

    from app.emulated_server import EmulatedLLMServer
    from app.ingress import RouterIngress

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Broken:
        async def ping(self) -> bool:
            """Alive (the liveness probe answers); only its calls fail."""
            return True

        async def openai(self, kind: str, body: dict) -> dict:
            """Fail as a crashed engine would."""
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    shares = {"llama-3.1-8b": {"weak": 1.0}, "llama-3.1-70b": {"strong": 1.0}}
    config = {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b", "strong_share": 0.5,
              "threshold": None, "router": "random", "seed": 0, "shares": shares}
    handles = {"weak": EmulatedLLMServer.options(name="weak").bind(
        "llama-3.1-8b", "RTX-4090", 1, 1), "strong": Broken.bind()}
    return RouterIngress.options(user_config=config).bind(handles)


@pytest.mark.heavy
def test_router_serves_the_plan_on_a_fake_cluster(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    import ray
    from ray import serve

    from app.main import build_app
    from placement import local_cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # Serve's high-throughput mode (HAProxy ingress, gRPC between replicas), as cluster.yaml
    # and `boute deploy --local` run it; the vLLM test runs Serve's stock mode.
    cluster = local_cluster({"RTX-4090": 1, "RTX-5090": 1, "H100": 4},
                            {"RTX-4090": 8, "RTX-5090": 8, "H100": 8},
                            temp_dir=REPO / "build" / "ray-tmp", high_throughput=True)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        log_dir = str(tmp_path / "log")
        serve.run(build_app(PLAN, log_dir=log_dir), name="boute", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        models, groups, errors, streamed = asyncio.run(_drive(url, 400))
        assert errors == 0
        total = sum(models.values())
        assert total == 400
        assert abs(models["llama-3.1-70b"] / total - 0.3) <= 0.03
        weak = models["llama-3.1-8b"]
        assert abs(groups["llama-3.1-8b-RTX-4090-tp1pp1"] / weak - 0.6) <= 0.02
        assert groups["llama-3.1-70b-H100-tp4pp1"] == models["llama-3.1-70b"]
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

        serve.run(build_app(replace(PLAN, routing=Routing(0.7)), log_dir=log_dir),
                  name="boute", route_prefix="/")
        models, _groups, errors, _ = asyncio.run(_drive(url, 200))
        assert errors == 0 and abs(models["llama-3.1-70b"] / 200 - 0.7) <= 0.03
        health = asyncio.run(_get(f"{url}/health"))
        assert health["strong_share_target"] == 0.7 and health["errors"] == 0
        # An engine failure is a 502 for its requests only; the router keeps serving.
        faulty = _faulty_app()
        serve.run(faulty, name="faulty", route_prefix="/faulty")
        # The strong model's only group fails: its requests fall back to the weak model
        # (flagged x-boute-degraded), none fails; after 3 failures the group is ejected and
        # /health says the strong model is degraded, served by the weak one.
        statuses = asyncio.run(_statuses(f"{url}/faulty", 40))
        assert set(statuses) == {("llama-3.1-8b", 200)}, statuses
        health = asyncio.run(_get(f"{url}/faulty/health"))
        assert health["status"] == "degraded"
        assert health["models"]["llama-3.1-70b"] == {
            "state": "degraded", "groups": ["strong"], "served_by": "llama-3.1-8b"}
        assert health["groups"]["strong"]["routing"] == "ejected"
        # A plan that does not fit is refused before anything is deployed.
        from app.deploy import DeployError, deploy_plan
        from placement import PlacementError

        running = set(serve.status().applications)
        big = Plan(PLAN.routing, (Group("llama-3.1-70b", "H100", 4, 1, 4, 1.0),
                                  Group("llama-3.1-8b", "L40S", 1, 1, 1, 1.0)), PLAN.predicted,
                   PLAN.scenario)
        with pytest.raises(DeployError, match=r"no node with GPU type.*L40S"):
            deploy_plan(big, backend="emulated")
        with pytest.raises(DeployError, match=r"H100: the plan needs 16 GPU.*the cluster has 4"):
            deploy_plan(Plan(PLAN.routing, big.groups[:1], scenario=PLAN.scenario),
                        backend="emulated")
        wide = Plan(PLAN.routing, (Group("llama-3.1-70b", "H100", 8, 1, 1, 1.0),),
                    scenario=PLAN.scenario)
        with pytest.raises(PlacementError, match="tp=8 exceeds the 4 GPUs of a H100 node"):
            deploy_plan(wide, backend="emulated")
        assert set(serve.status().applications) == running     # nothing was deployed
        # The router's metrics reach Ray's metrics endpoint, with their tags.
        names = ("ray_boute_latency_seconds_bucket", "ray_boute_requests_total",
                 "ray_boute_tokens_total", "ray_boute_ttft_seconds_bucket",
                 "ray_boute_degraded_total", "ray_boute_strong_share_target",
                 "ray_boute_group_up")
        scraped = _scrape_until(names, 90)
        for name in names:
            assert name in scraped, name
        assert 'model="llama-3.1-70b"' in scraped
        assert 'group="llama-3.1-70b-H100-tp4pp1"' in scraped
        assert any(line.startswith("ray_boute_degraded_total{") and
                   'model="llama-3.1-70b"' in line for line in scraped.splitlines())
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    # Every request is in the log, including those of the replaced router replica: a clean
    # shutdown loses nothing.
    from app.request_log import read_log

    log = read_log(log_dir)
    assert log.num_rows == 600
    assert set(log["status"].to_pylist()) == {200}
    assert abs(log["model"].to_pylist()[:400].count("llama-3.1-70b") / 400 - 0.3) <= 0.03
