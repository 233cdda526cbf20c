"""Router overhead: decision time, the added latency of the router hop, and throughput.

    python benchmarks/router.py [--decisions 20000] [--requests 400] [--seconds 10]
                                [--concurrency 64] [--json build/router_bench.json]
                                [--stock-serve] [--target KEY=VALUE]

* **decision**: one routing decision in-process — the built-in router's score of a prompt,
  the live threshold's strong/weak choice (with its recalibration) and the smooth weighted
  round robin over replica groups; p50/p99 over `--decisions` prompts.
* **hop**: on a local Ray cluster (fake GPU nodes), sequential HTTP requests (1 output token,
  not streamed) through Serve's HTTP ingress to (a) a bare FastAPI deployment answering at
  once and (b) the BOute router forwarding to a zero-latency emulated engine; the added
  latency of the router hop is p50(b) - p50(a) (the router plus one DeploymentHandle call).
* Serve runs in its high-throughput mode, as cluster.yaml and `boute deploy --local` run it
  (placement/_serve_mode.py: HAProxy ingress, gRPC between replicas); ``--stock-serve``
  measures Serve's defaults (Python proxy actor, actor calls) instead.
* **throughput**: closed loop, `--concurrency` clients for `--seconds` through the router to
  zero-latency engines (1 output token).

Targets (`TARGETS`, 2-core machine): decision p99 <= 1 ms; hop p50 <= 5 ms; >= 300
requests/s. Prints a table, writes JSON, exits 1 when a target is missed.
"""

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve

from app.routing import BuiltinRouter, LiveThreshold, SmoothWeightedRoundRobin
from boute.bench import synth_prompt
from tuning import Group, Plan, Routing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
PLAN = Plan(Routing(0.3), (Group("llama-3.1-8b", "H100", 1, 1, 2, 1.0),
                           Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0)),
            scenario={"models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}})
TARGETS = {
    "decision_p99_ms": Target("<=", 1.0, "ms", "routing decision p99 (in-process)"),
    "hop_p50_ms": Target("<=", 5.0, "ms", "added latency of the router hop, p50"),
    "throughput_rps": Target(">=", 300.0, "req/s", "closed-loop throughput through the router"),
}

echo_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096)
@serve.ingress(echo_api)
class Echo:
    """The baseline: Serve's proxy to a deployment that answers at once."""

    @echo_api.post("/v1/chat/completions")
    async def chat(self) -> dict[str, Any]:
        """A fixed answer."""
        return {"choices": [{"message": {"content": " tok"}}]}


def decisions(n: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    prompts = [synth_prompt(int(rng.integers(10, 400)), rng) for _ in range(n)]
    router, live = BuiltinRouter(), LiveThreshold(0.3)
    pick = {m: SmoothWeightedRoundRobin({f"{m}-a": 0.6, f"{m}-b": 0.4}) for m in "ws"}
    times = np.empty(n)
    for i, p in enumerate(prompts):
        t = time.perf_counter()
        model = "s" if live.route_strong(router.calculate_strong_win_rate(p)) else "w"
        pick[model].pick()
        times[i] = time.perf_counter() - t
    return {"p50_ms": float(np.quantile(times, 0.5) * 1e3),
            "p99_ms": float(np.quantile(times, 0.99) * 1e3)}


BODY = {"model": "auto", "max_tokens": 1, "messages": [{"role": "user", "content": "hello"}]}


async def sequential(url: str, n: int) -> float:
    import aiohttp

    times = []
    async with aiohttp.ClientSession() as s:
        for i in range(n + 20):
            t = time.perf_counter()
            async with s.post(url, json=BODY) as r:
                assert r.status == 200, await r.text()
                await r.read()
            if i >= 20:                     # warm-up
                times.append(time.perf_counter() - t)
    return float(np.quantile(times, 0.5) * 1e3)


async def closed_loop(url: str, seconds: float, concurrency: int) -> tuple[float, int]:
    import aiohttp

    done = errors = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def client() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                async with s.post(url, json=BODY) as r:
                    await r.read()
                    done += r.status == 200
                    errors += r.status != 200
        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - t), errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--decisions", type=int, default=20000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--json", default="build/router_bench.json")
    ap.add_argument("--stock-serve", action="store_true", help="Serve's defaults (Python "
                    "proxy actor, Ray actor calls between replicas) instead of its documented "
                    "high-throughput mode (HAProxy ingress, gRPC between replicas), which "
                    "`boute deploy --local` and cluster.yaml use")
    add_target_argument(ap, TARGETS)
    args = ap.parse_args()
    targets = resolve(TARGETS, args.target)

    import ray

    from app.main import build_app
    from placement import local_cluster

    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                           "serve_mode": "stock" if args.stock_serve else "high-throughput",
                           "args": vars(args), "decision": decisions(args.decisions)}
    cluster = local_cluster({"H100": 6}, {"H100": 8}, temp_dir=REPO / "build" / "ray-tmp",
                            high_throughput=not args.stock_serve)
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Echo.bind(), name="echo", route_prefix="/echo")  # type: ignore[attr-defined]
        serve.run(build_app(PLAN, time_scale=0.0), name="boute", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        echo_ms = asyncio.run(sequential(f"{base}/echo/v1/chat/completions", args.requests))
        router_ms = asyncio.run(sequential(f"{base}/v1/chat/completions", args.requests))
        echo_rps, _ = asyncio.run(closed_loop(f"{base}/echo/v1/chat/completions",
                                              args.seconds, args.concurrency))
        rps, errors = asyncio.run(closed_loop(f"{base}/v1/chat/completions", args.seconds,
                                              args.concurrency))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    out["hop"] = {"echo_p50_ms": echo_ms, "router_p50_ms": router_ms,
                  "added_p50_ms": router_ms - echo_ms}
    out["throughput"] = {"rps": rps, "errors": errors, "concurrency": args.concurrency,
                         "echo_rps": echo_rps}
    measured = {"decision_p99_ms": out["decision"]["p99_ms"],
                "hop_p50_ms": out["hop"]["added_p50_ms"], "throughput_rps": rps}
    rows = check(targets, measured)
    failures = [f"{r['key']} = {r['measured']:.2f} misses {r['op']} {r['target']:g}"
                for r in rows if not r["ok"]]
    out["failures"] = failures
    out["targets"] = rows
    print(f"{'metric':28s} {'measured':>10s} {'target':>10s}")
    print(f"{'decision p50 (ms)':28s} {out['decision']['p50_ms']:10.3f} {'':>10s}")
    t_dec, t_hop, t_rps = (f"{t.op} {t.value:g}" for t in targets.values())
    print(f"{'decision p99 (ms)':28s} {measured['decision_p99_ms']:10.3f} {t_dec:>10s}")
    print(f"{'ingress->echo p50 (ms)':28s} {echo_ms:10.2f} {'':>10s}")
    print(f"{'ingress->router->engine p50':28s} {router_ms:10.2f} {'':>10s}")
    print(f"{'router hop added p50 (ms)':28s} {measured['hop_p50_ms']:10.2f} {t_hop:>10s}")
    print(f"{'ingress->echo (req/s)':28s} {echo_rps:10.1f} {'':>10s}")
    print(f"{'throughput (req/s)':28s} {rps:10.1f} {t_rps:>10s}  ({errors} errors)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print_checks(rows)
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
