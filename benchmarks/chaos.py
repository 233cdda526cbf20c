"""Chaos: the serving stack under faults and under overload, measured on a local fake cluster.

A throw-away local Ray cluster with one fake node per GPU type (head: CPUs only; RTX-4090 x2;
RTX-5090 x1; H100 x4; `placement.local_cluster`, Serve's high-throughput mode, Ray token
authentication) serves this plan with emulated engines
(`app.emulated_server.EmulatedLLMServer`: a GPU replica's timing on CPU):

==========================  =======  ========  ==========================================
group                       replicas  share     node
==========================  =======  ========  ==========================================
llama-3.1-8b  RTX-4090 tp1  2        2/3 weak  the RTX-4090 node (2 GPUs)
llama-3.1-8b  RTX-5090 tp1  1        1/3 weak  the RTX-5090 node (1 GPU), alone on it
llama-3.1-70b H100 tp4      1        strong    the H100 node (4 GPUs)
==========================  =======  ========  ==========================================

strong share 0.3, builtin router. The predicted figures are `tuning.evaluate_plan`'s on the
planning problem of ``SCENARIO`` (4 req/s, GSM8K-shaped; perf DB built once under
build/chaos/) with a P95 target of 3.2 s: planning P95 3.14 s (the 70B replica's), capacity at
that target 8.6 req/s (the strong group's; independent of the weak split). evaluate_plan's
optimal split sends all weak load to the faster RTX-5090 at 4 req/s; the deployed weak shares
are by replica count (2/3, 1/3) instead, so that every group serves and failover always has a
second weak group to go to (the router's in-flight bounds follow the deployed shares).
The router replica is pinned to the head node (a CPU node, as in production) so that killing a
GPU node kills engines only. Clients use one API key per phase, so every request-log row is
attributed to its phase exactly by ``key_id``.

**Chaos mode** (default). Steady open-loop load (Poisson, ``--rate`` 4 req/s, GSM8K prompt
lengths, ``max_tokens`` = the trace's output length capped at 64 so the 2-core box keeps up,
20% streamed, ``model: auto``) through five phases of ``--duration-s`` each (default 50 s;
the fault at ``min(15 s, duration / 3)`` into the phase, the rest is the recovery period):

a. one engine replica killed: ``ray.kill`` of one replica actor of the RTX-4090 group;
b. every replica of one group killed: both RTX-4090 replica actors;
c. the router killed: ``ray.kill(router replica actor, no_restart=False)``;
d. a GPU-type node killed: the RTX-5090 node, ``cluster.remove_node(node,
   allow_graceful=False)`` (its raylet and workers are SIGKILLed; no replacement node);
e. the 8B's last GPU node killed: the RTX-4090 node, likewise. The 8B has no replica left;
   its requests are served by the 70B, flagged ``x-boute-degraded``.

Per phase (requests attributed by send time; latency = end-to-end, successful requests):

* ``sent``; ``failed``: requests without a complete answer, streams that failed before their
  first token included (target 0 for a, b, d, e); ``cut``: streams answered 200 that ended in an
  error event or were cut before ``[DONE]`` (counted apart); ``retried``: answers with
  ``x-boute-tries`` > 1; ``degraded``: answers with ``x-boute-degraded``;
* P95 *before* (sent in [phase start, fault)), *during* (sent in [fault, fault +
  max(recover, 5 s))), *after* (sent from there to the phase's end);
* ``recover``: seconds from the fault until ``/health`` (polled every 0.5 s) is back to
  status ``ok`` with every group's ``replicas_running == replicas_wanted``, after the fault
  was seen there (a failed poll, a status other than ok, or a group short of replicas); for
  (d) and (e), whose nodes are not replaced, until ``/health`` shows the lost group ``down``
  (the router routes around it); ``detect``: seconds until the fault was first seen on
  ``/health``; ``degraded``: seconds until ``/health`` first answered 200 with status
  ``degraded`` (d, e: and the lost group ``down``; e: and the 8B ``served_by`` the 70B;
  target <= 5 s); ``503s``: ``/health`` samples answered 503 from the fault to the phase's
  end (the load balancer would take the router out while it serves; target 0 for a, b, d, e);
* log: ``answered`` (requests the router answered: an ``x-boute-model`` header, or an OpenAI
  error body) vs ``logged`` (rows of `app.request_log.read_log` with the phase's key id);
  ``lost`` = answered - logged. Target 0 for a, b, d, e; for (c), at most the streams the kill
  cut mid-way (the router dies before their row is written) + 1 (a record torn by the kill).

**Overload mode** (``--overload``): no fault; 5x the plan's capacity (43 req/s) for
``--overload-s`` (60 s), GSM8K-shaped with the trace's full output lengths (the planned
workload), 20% streamed. Reported: requests refused with 429 (count), the accepted requests'
P95 (target: within 2x the plan's target P95, 6.4 s), and the router replica's RSS (psutil on
its pid from `ray.util.state.list_actors`, sampled each second from 10 s before to 10 s after
the load; target: bounded, its peak in the load's second half at most 10% above its peak in
the first half, i.e. no growth with the refused traffic). Draws RSS and accepted / refused
rates over time to docs/overload.png.

    python benchmarks/chaos.py [--quick] [--duration-s 50] [--rate 4] [--json build/chaos.json]
    python benchmarks/chaos.py --overload [--overload-s 60] [--json build/overload.json]
        [--plot docs/overload.png]

Exits 1 when a target is missed. ``--quick``: 20 s phases (the test, tests/app/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:       # run as a script: the repo's packages
    sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _targets import check, print_checks  # noqa: E402  (the folder's shared helper)

WORK = REPO / "build" / "chaos"
RAY_TMP = REPO / "build" / "ray-tmp-chaos"
WEAK, STRONG = "llama-3.1-8b", "llama-3.1-70b"
GPUS = {"RTX-4090": 2, "RTX-5090": 1, "H100": 4}        # GPUs per type = per fake node
STRONG_SHARE = 0.3
TARGET_P95_S = 3.2
PLAN_RATE_RPS = 4.0
SCENARIO = f"""
name: chaos
gpus:
  H100: {{count: 4}}
  RTX-4090: {{count: 2}}
  RTX-5090: {{count: 1}}
models: {{weak: {WEAK}, strong: {STRONG}}}
task: gsm8k
workload: {{shape: gsm8k, rate_rps: {PLAN_RATE_RPS}}}
budget_per_hour: 30
profile: {{num_rates: 8, num_requests: 300}}
"""
FAULTS = {
    "a": "one RTX-4090 engine replica killed",
    "b": "every RTX-4090 replica killed",
    "c": "router replica killed",
    "d": "RTX-5090 node killed",
    "e": "RTX-4090 node killed (8B: no GPU)",
}
STREAM_SHARE = 0.2
CHAOS_MAX_TOKENS = 64
CLIENT_TIMEOUT_S = 120.0
HEALTH_POLL_S = 0.5
MIN_DURING_S = 5.0
DEGRADED_WITHIN_S = 5.0         # a lost node: /health 200 "degraded" within this (issue 31)
OVERLOAD_FACTOR = 5.0
RSS_GROWTH_BOUND = 0.10


def group_name(model: str, gpu: str, tp: int) -> str:
    return f"{model}-{gpu}-tp{tp}pp1"


G4090, G5090 = group_name(WEAK, "RTX-4090", 1), group_name(WEAK, "RTX-5090", 1)
GH100 = group_name(STRONG, "H100", 4)


# -- the plan --------------------------------------------------------------------------------
def chaos_plan() -> Any:
    """The plan of the module docstring, with `tuning.evaluate_plan`'s predicted figures."""
    from tuning import Group, Plan, Routing, evaluate_plan, planning_problem

    WORK.mkdir(parents=True, exist_ok=True)
    scenario = WORK / "scenario.yaml"
    scenario.write_text(SCENARIO)
    problem = planning_problem(str(scenario), db=str(WORK / "perfdb.parquet"))
    plan = Plan(Routing(STRONG_SHARE), (Group(WEAK, "RTX-4090", 1, 1, 2),
                                        Group(WEAK, "RTX-5090", 1, 1, 1),
                                        Group(STRONG, "H100", 4, 1, 1)))
    ev = evaluate_plan(problem, plan, p95_target_s=TARGET_P95_S)
    shares = {G4090: 2 / 3, G5090: 1 / 3, GH100: 1.0}
    groups = tuple(replace(g, share=round(shares[g.name], 6)) for g in ev.groups)
    return replace(ev, groups=groups,
                   extra={**ev.extra, "target_p95_s": TARGET_P95_S,
                          "evaluated_shares": {g.name: g.share for g in ev.groups}})


# -- cluster and stack -----------------------------------------------------------------------
def start_cluster() -> Any:
    from placement import free_port, local_cluster

    return local_cluster(GPUS, GPUS, temp_dir=RAY_TMP, dashboard_port=free_port(),
                         high_throughput=True)


def deploy(plan: Any, log_dir: Path, keys: dict[str, str]) -> str:
    """`app.deploy.deploy_plan`'s steps, with the router pinned to the head node."""
    from app.deploy import check_plan_fits
    from app.guard import hash_key
    from app.main import Stack, stack_config
    from app.serve_api import ServeApi, dashboard_url, local_url
    from placement import free_port

    entries = [{"id": kid, "sha256": hash_key(key)} for kid, key in keys.items()]
    stack = Stack(backend="emulated", log_dir=str(log_dir), log_rotate_s=15.0,
                  api_keys=entries)
    stack = check_plan_fits(plan, stack)
    port = free_port()
    config = stack_config(plan, stack, host="127.0.0.1", port=port,
                          proxy_location="HeadOnly", applied_unix_s=time.time())
    router = config["applications"][0]["deployments"][0]
    assert router["name"] == "RouterIngress"
    router["ray_actor_options"] = {"num_cpus": 0,
                                   "resources": {"node:__internal_head__": 0.001}}
    api = ServeApi(dashboard_url())
    api.apply(config)
    api.wait(config, timeout_s=600)
    return local_url("127.0.0.1", port)


def teardown(cluster: Any) -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()
        cluster.shutdown()


def replica_actors(app: str | None = None) -> list[dict[str, Any]]:
    """Alive Serve replica actors (of application `app`): name, namespace, pid, node."""
    from ray.util.state import list_actors

    from app.serve_api import dashboard_url

    out = []
    # The dashboard's address: without it the state API looks for "the" local Ray instance,
    # and finds several when other clusters run on this machine.
    for a in list_actors(address=dashboard_url(), filters=[("state", "=", "ALIVE")],
                         limit=10_000, detail=True):
        cls = a.class_name or ""
        if not cls.startswith("ServeReplica:"):
            continue
        _, app_name, deployment = cls.split(":", 2)
        if app is None or app_name == app:
            out.append({"name": a.name, "namespace": a.ray_namespace, "pid": a.pid,
                        "node_id": a.node_id, "app": app_name, "deployment": deployment})
    return out


def kill_replicas(app: str, count: int | None, *, no_restart: bool = True) -> list[str]:
    """Kill `count` (None: all) alive replica actors of `app`; returns their names."""
    import ray

    victims = sorted(replica_actors(app), key=lambda a: a["name"])
    if not victims:
        raise RuntimeError(f"no alive replica of {app}")
    victims = victims[:count] if count is not None else victims
    for v in victims:
        ray.kill(ray.get_actor(v["name"], namespace=v["namespace"]), no_restart=no_restart)
    return [v["name"] for v in victims]


def kill_gpu_node(cluster: Any, gpu: str) -> str:
    """SIGKILL the fake node carrying `gpu` (its raylet and workers); returns its node id."""
    import ray

    from placement import gpu_resource

    ids = {n["NodeID"] for n in ray.nodes()  # type: ignore[no-untyped-call]
           if n.get("Alive") and gpu_resource(gpu) in n.get("Resources", {})}
    (node,) = [n for n in cluster.worker_nodes if n.node_id in ids]
    cluster.remove_node(node, allow_graceful=False)
    return str(node.node_id)


# -- the load --------------------------------------------------------------------------------
@dataclass(slots=True)
class Rec:
    """One request as the client saw it (times: s from the run's start)."""

    phase: str
    sent_s: float
    stream: bool
    status: int = 0
    e2e_s: float = math.nan
    ttft_s: float = math.nan
    ok: bool = False
    cut: bool = False
    answered: bool = False     # by the router (x-boute-model header or an OpenAI error body)
    group: str = ""
    tries: int = 1
    degraded: str = ""
    error: str = ""


def _body(prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}


async def _send(session: Any, url: str, key: str, body: dict[str, Any], rec: Rec,
                t0: float) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with session.post(url + "/v1/chat/completions", json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)) as r:
            rec.status = r.status
            rec.group = r.headers.get("x-boute-group", "")
            rec.tries = int(r.headers.get("x-boute-tries", "1"))
            rec.degraded = r.headers.get("x-boute-degraded", "")
            rec.answered = "x-boute-model" in r.headers
            if r.status != 200:
                text = await r.text()
                rec.e2e_s = time.perf_counter() - t0 - rec.sent_s     # when refused
                rec.error = f"HTTP {r.status}: {text[:200]}"
                with contextlib.suppress(ValueError):     # HAProxy's own pages are HTML
                    rec.answered = rec.answered or "error" in json.loads(text)
                return
            if not rec.stream:
                out = await r.json()
                rec.ok = bool(out.get("choices"))
                rec.e2e_s = time.perf_counter() - t0 - rec.sent_s
                if not rec.ok:
                    rec.error = json.dumps(out)[:200]
                return
            done = False
            try:
                async for line in r.content:
                    text = line.decode().strip()
                    if not text.startswith("data:"):
                        continue
                    if text == "data: [DONE]":
                        done = True
                        continue
                    event = json.loads(text[5:])
                    if "error" in event:
                        rec.cut, rec.error = True, json.dumps(event["error"])[:200]
                    elif math.isnan(rec.ttft_s):
                        rec.ttft_s = time.perf_counter() - t0 - rec.sent_s
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                rec.cut, rec.error = True, f"{type(exc).__name__}: {exc}"[:200]
            rec.cut = rec.cut or not done
            rec.ok = not rec.cut
            rec.e2e_s = time.perf_counter() - t0 - rec.sent_s
            if not done and not rec.error:
                rec.error = "stream ended without [DONE]"
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class Phase:
    """One phase of a run: its key, its window (s from start) and its fault."""

    name: str
    start_s: float
    end_s: float
    fault_at_s: float | None = None
    fault: Any = None           # () -> str, run in a thread at fault_at_s
    fault_s: float | None = None
    fault_note: str = ""


@dataclass
class RunData:
    """What a load run saw: the requests, the /health samples, its length."""

    records: list[Rec] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    t0_unix: float = 0.0


async def _health_poll(session: Any, url: str, key: str, t0: float, out: list[dict[str, Any]],
                       stop: asyncio.Event) -> None:
    import aiohttp

    while not stop.is_set():
        sample: dict[str, Any] = {"t": time.perf_counter() - t0}
        try:
            async with session.get(url + "/health", headers={"Authorization": f"Bearer {key}"},
                                   timeout=aiohttp.ClientTimeout(total=1.0)) as r:
                sample["http"] = r.status
                body = await r.json(content_type=None)
                sample["status"] = body.get("status")
                sample["groups"] = {g: {k: v.get(k) for k in ("state", "replicas_running",
                                                              "replicas_wanted", "inflight")}
                                    for g, v in (body.get("groups") or {}).items()}
                sample["models"] = {m: {k: v.get(k) for k in ("state", "served_by")}
                                    for m, v in (body.get("models") or {}).items()
                                    if isinstance(v, dict)}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            sample["http"], sample["error"] = 0, type(exc).__name__
        out.append(sample)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEALTH_POLL_S)


async def _run_load(url: str, keys: dict[str, str], phases: list[Phase], *, rate_rps: float,
                    max_tokens: int | None, seed: int) -> RunData:
    """Open-loop load over the phases; each phase's fault runs in a thread at its time."""
    import aiohttp

    from boute.bench import synth_prompt
    from profiling import generate_trace

    total = phases[-1].end_s
    n = max(1, int(rate_rps * total * 1.2) + 20)
    trace = generate_trace("gsm8k", rate_rps=rate_rps, num_requests=n, seed=seed)
    rng = np.random.default_rng(seed)
    streams = rng.random(n) < STREAM_SHARE
    data = RunData()
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=4096)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        data.t0_unix = time.time()
        health = asyncio.create_task(_health_poll(session, url, keys["health"], t0,
                                                  data.health, stop))

        async def faults() -> None:
            for ph in phases:
                if ph.fault is None or ph.fault_at_s is None:
                    continue
                await asyncio.sleep(max(0.0, ph.fault_at_s - (time.perf_counter() - t0)))
                ph.fault_s = time.perf_counter() - t0
                try:
                    ph.fault_note = await asyncio.to_thread(ph.fault)
                except Exception as exc:    # reported; the run goes on
                    ph.fault_note = f"FAULT INJECTION FAILED: {type(exc).__name__}: {exc}"
                print(f"[{ph.fault_s:6.1f} s] fault {ph.name}: {ph.fault_note}", flush=True)

        fault_task = asyncio.create_task(faults())
        tasks: set[asyncio.Task[None]] = set()
        base = float(trace.arrival_s[0])
        for i in range(n):
            at = float(trace.arrival_s[i]) - base
            if at >= total:
                break
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
            ph = next(p for p in phases if p.start_s <= at < p.end_s)
            out = int(trace.output_tokens[i])
            rec = Rec(ph.name, at, bool(streams[i]))
            data.records.append(rec)
            body = _body(synth_prompt(int(trace.input_tokens[i]), rng),
                         min(out, max_tokens) if max_tokens else out, rec.stream)
            task = asyncio.create_task(_send(session, url, keys[ph.name], body, rec, t0))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await fault_task
        await asyncio.sleep(max(0.0, total - (time.perf_counter() - t0)))
        if tasks:
            await asyncio.wait(list(tasks), timeout=CLIENT_TIMEOUT_S + 10)
        data.duration_s = time.perf_counter() - t0
        await asyncio.sleep(2 * HEALTH_POLL_S)
        stop.set()
        await health
    return data


# -- chaos: analysis -------------------------------------------------------------------------
def _p95(values: list[float]) -> float | None:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return float(np.quantile(arr, 0.95)) if arr.size else None


def _healthy(s: dict[str, Any]) -> bool:
    return (s.get("http") == 200 and s.get("status") == "ok"
            and all(g["replicas_running"] == g["replicas_wanted"]
                    for g in s.get("groups", {}).values()))


LOST_GROUP = {"d": G5090, "e": G4090}
"""The group each node-loss phase takes away for good."""


def _loss_seen(s: dict[str, Any], name: str) -> bool:
    """Whether a /health sample shows the fault: 200, status ``degraded``.

    A node-loss phase: with its lost group ``down``; (e): with the 8B served by the 70B.
    """
    if s.get("http") != 200 or s.get("status") != "degraded":
        return False
    if name in LOST_GROUP and (s.get("groups", {}).get(LOST_GROUP[name]) or {}
                               ).get("state") != "down":
        return False
    return name != "e" or (s.get("models", {}).get(WEAK) or {}).get("served_by") == STRONG


def degraded_after(health: list[dict[str, Any]], fault_s: float, end_s: float, name: str
                   ) -> tuple[float | None, int]:
    """(seconds until /health first showed the fault as degraded (`_loss_seen`), its 503s)."""
    after = [s for s in health if fault_s <= s["t"] < end_s]
    first = next((s["t"] for s in after if _loss_seen(s, name)), None)
    return (None if first is None else first - fault_s,
            sum(s.get("http") == 503 for s in after))


def recovery(health: list[dict[str, Any]], fault_s: float, end_s: float, name: str
             ) -> tuple[float | None, float | None]:
    """(detect, recover) seconds after the fault on /health (see the module docstring)."""
    after = [s for s in health if s["t"] >= fault_s]
    if name in LOST_GROUP:
        down = next((s["t"] for s in after if s.get("http") == 200 and
                     (s.get("groups", {}).get(LOST_GROUP[name]) or {}).get("state") == "down"),
                    None)
        seen = next((s["t"] for s in after if not _healthy(s)), None)
        return (None if seen is None else seen - fault_s,
                None if down is None else down - fault_s)
    seen = next((s["t"] for s in after if not _healthy(s)), None)
    if seen is None:
        return None, 0.0
    back = next((s["t"] for s in after if s["t"] > seen and _healthy(s)), None)
    return seen - fault_s, (None if back is None else back - fault_s)


def analyse_chaos(data: RunData, phases: list[Phase], log: Any) -> list[dict[str, Any]]:
    """One row per phase (see the module docstring)."""
    key_ids = log.column("key_id").to_pylist() if log is not None else []
    logged = Counter(key_ids)
    rows = []
    for ph in phases:
        recs = [r for r in data.records if r.phase == ph.name]
        fault = ph.fault_s if ph.fault_s is not None else ph.fault_at_s or ph.start_s
        detect, recover = recovery(data.health, fault, ph.end_s, ph.name)
        degraded_s, health_503 = degraded_after(data.health, fault, ph.end_s, ph.name)
        during_end = fault + max(recover if recover is not None else ph.end_s - fault,
                                 MIN_DURING_S)
        ok = [r for r in recs if r.ok]
        failed = [r for r in recs if not r.ok and not r.cut]
        cut = [r for r in recs if r.cut]
        answered = sum(r.answered for r in recs)
        n_logged = logged.get(f"chaos-{ph.name}", 0)
        errors = Counter(r.error.split(":")[0] if r.error else f"HTTP {r.status}"
                         for r in failed + cut)
        rows.append({
            "phase": ph.name, "fault": FAULTS[ph.name], "fault_note": ph.fault_note,
            "fault_at_s": fault, "sent": len(recs),
            "sent_stream": sum(r.stream for r in recs),
            "ok": len(ok), "failed": len(failed),
            "failed_nonstream": sum(not r.stream for r in failed),
            "failed_stream_before_first_token": sum(r.stream for r in failed),
            "cut_streams": len(cut), "shed_429": sum(r.status == 429 for r in recs),
            "retried": sum(r.tries > 1 for r in recs),
            "degraded": sum(bool(r.degraded) for r in recs),
            "p95_before_s": _p95([r.e2e_s for r in ok if r.sent_s < fault]),
            "p95_during_s": _p95([r.e2e_s for r in ok if fault <= r.sent_s < during_end]),
            "p95_after_s": _p95([r.e2e_s for r in ok if r.sent_s >= during_end]),
            "during_window_s": [fault, min(during_end, ph.end_s)],
            "detect_s": detect, "recover_s": recover,
            "health_degraded_s": degraded_s, "health_503": health_503,
            "answered": answered, "logged": n_logged, "lost": answered - n_logged,
            "lost_bound": (len(cut) + 1) if ph.name == "c" else 0,
            "errors": dict(errors),
            "first_errors": [r.error for r in failed + cut][:5],
        })
    return rows


def _fmt(v: float | None, spec: str = "5.2f") -> str:
    return "    -" if v is None else format(v, spec)


def chaos_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'fault':<38} {'sent':>5} {'failed':>6} {'(429)':>5} {'cut':>4} {'retried':>7} "
            f"{'P95 before/during/after s':>26} {'detect':>6} {'recover':>7} "
            f"{'degraded':>8} {'503s':>4} {'answered/logged/lost':>21}")
    lines = [head, "-" * len(head)]
    for r in rows:
        p95 = "/".join(_fmt(r[k]) for k in ("p95_before_s", "p95_during_s", "p95_after_s"))
        rec = "never" if r["recover_s"] is None else f"{r['recover_s']:.1f}"
        det = "-" if r["detect_s"] is None else f"{r['detect_s']:.1f}"
        log = f"{r['answered']}/{r['logged']}/{r['lost']}"
        deg = "-" if r["health_degraded_s"] is None else f"{r['health_degraded_s']:.1f}"
        lines.append(f"({r['phase']}) {r['fault']:<34} {r['sent']:>5} {r['failed']:>6} "
                     f"{r['shed_429']:>5} {r['cut_streams']:>4} {r['retried']:>7} {p95:>26} "
                     f"{det:>6} {rec:>7} {deg:>8} {r['health_503']:>4} {log:>21}")
    return "\n".join(lines)


def chaos_checks(rows: list[dict[str, Any]]) -> dict[str, bool]:
    checks = {}
    for r in rows:
        p = r["phase"]
        if p in ("a", "b", "d", "e"):
            # The fault takes capacity away: a few 429s (the router's fail-safe refusal at a
            # group's in-flight bound) are allowed, nothing else.
            refused = r["errors"].get("HTTP 429", 0)
            checks[f"({p}) 0 failed requests but <= 5% refused (429)"] = (
                r["failed"] == refused and refused <= 0.05 * r["sent"])
            checks[f"({p}) 0 lost log records"] = r["lost"] == 0
            # The router serves every request: the load balancer's check must keep it.
            checks[f"({p}) /health never 503 while it serves"] = r["health_503"] == 0
        else:
            checks[f"({p}) lost log records <= cut streams + 1 = {r['lost_bound']}"] = (
                r["lost"] <= r["lost_bound"])
        if p in LOST_GROUP:
            deg = r["health_degraded_s"]
            checks[f"({p}) /health 200 'degraded' within {DEGRADED_WITHIN_S:g} s of the node "
                   "loss"] = deg is not None and deg <= DEGRADED_WITHIN_S
            checks[f"({p}) the lost group 'down' on /health within {DEGRADED_WITHIN_S:g} s"] = (
                r["recover_s"] is not None and r["recover_s"] <= DEGRADED_WITHIN_S)
        if p == "e":
            checks["(e) the 8B's requests answered by the 70B (degraded > 0)"] = r["degraded"] > 0
        checks[f"({p}) fault injected"] = not r["fault_note"].startswith("FAULT INJECTION")
    return checks


def read_log_rows(log_dir: Path) -> Any:
    from app.request_log import read_log

    try:
        return read_log(log_dir)
    except FileNotFoundError:
        print(f"MISSING: no request log under {log_dir} (every answered request counts as "
              "lost)", file=sys.stderr)
        return None


def run_chaos(args: argparse.Namespace) -> int:
    import secrets

    dur = args.duration_s
    fault_at = min(15.0, dur / 3)
    keys = {name: "bk-chaos-" + secrets.token_hex(16) for name in [*FAULTS, "health"]}
    key_ids = {name: f"chaos-{name}" for name in keys}
    plan = chaos_plan()
    log_dir = WORK / f"log-{int(time.time())}"
    wall = time.time()
    cluster = start_cluster()
    out: dict[str, Any] = {"mode": "chaos", "cluster_up_s": time.time() - wall}
    try:
        t = time.time()
        url = deploy(plan, log_dir, {key_ids[k]: v for k, v in keys.items()})
        out["deploy_s"] = time.time() - t
        router = replica_actors("boute")
        out["router_node"] = router[0]["node_id"] if router else None
        phases = []
        for i, name in enumerate(FAULTS):
            phases.append(Phase(name, i * dur, (i + 1) * dur, i * dur + fault_at))
        phases[0].fault = lambda: "killed " + ", ".join(kill_replicas(G4090, 1))
        phases[1].fault = lambda: "killed " + ", ".join(kill_replicas(G4090, None))
        phases[2].fault = lambda: "killed " + ", ".join(
            kill_replicas("boute", None, no_restart=False))
        phases[3].fault = lambda: "removed node " + kill_gpu_node(cluster, "RTX-5090")
        phases[4].fault = lambda: "removed node " + kill_gpu_node(cluster, "RTX-4090")
        data = asyncio.run(_run_load(url, keys, phases, rate_rps=args.rate,
                                     max_tokens=CHAOS_MAX_TOKENS, seed=args.seed))
    finally:
        teardown(cluster)
    out["wall_s"] = time.time() - wall
    log = read_log_rows(log_dir)
    rows = analyse_chaos(data, phases, log)
    checks = chaos_checks(rows)
    if all(checks.values()):        # kept for inspection when a target is missed
        shutil.rmtree(log_dir, ignore_errors=True)
    out.update({
        "args": vars(args), "plan": plan.to_dict(), "rate_rps": args.rate,
        "phase_s": dur, "fault_at_s_in_phase": fault_at, "load_s": data.duration_s,
        "stream_share": STREAM_SHARE, "max_tokens_cap": CHAOS_MAX_TOKENS,
        "log_rows_total": 0 if log is None else log.num_rows, "phases": rows,
        "checks": checks, "targets": check({}, {}, checks), "health": data.health,
        "records": [asdict(r) for r in data.records]})
    print(f"plan: {', '.join(f'{g.name} x{g.replicas} share {g.share:.3f}' for g in plan.groups)}"
          f"; predicted P95 {plan.predicted.p95_s:.2f} s, capacity "
          f"{plan.predicted.capacity_rps:.1f} req/s at P95 <= {TARGET_P95_S} s")
    print(f"load: {args.rate:g} req/s open loop, {STREAM_SHARE:.0%} streamed, max_tokens <= "
          f"{CHAOS_MAX_TOKENS}; {len(phases)} phases x {dur:g} s, fault at +{fault_at:g} s; "
          f"cluster up "
          f"{out['cluster_up_s']:.0f} s, deploy {out['deploy_s']:.0f} s, wall "
          f"{out['wall_s']:.0f} s")
    print(chaos_table(rows))
    for r in rows:
        if r["errors"]:
            print(f"  ({r['phase']}) {r['errors']}; first: {r['first_errors'][:2]}")
    print_checks(out["targets"])
    path = Path(args.json or "build/chaos.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")
    return 0 if all(checks.values()) else 1


# -- overload ----------------------------------------------------------------------------------
def _rss_sampler(pid: int, t0: float, out: list[tuple[float, int]], stop: threading.Event
                 ) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            out.append((time.perf_counter() - t0, proc.memory_info().rss))
        except psutil.Error:
            out.append((time.perf_counter() - t0, -1))
        stop.wait(1.0)


def plot_overload(data: RunData, rss: list[tuple[float, int]], lead_s: float, load_s: float,
                  path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sent = np.array([r.sent_s for r in data.records])
    acc = np.array([r.ok for r in data.records])
    ref = np.array([r.status == 429 for r in data.records])
    bins = np.arange(0.0, load_s + 1.0, 1.0)
    mid = bins[:-1] + 0.5
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(mid, np.histogram(sent[acc], bins)[0], label="accepted (200)")
    ax1.plot(mid, np.histogram(sent[ref], bins)[0], label="refused (429)")
    ax1.plot(mid, np.histogram(sent, bins)[0], ":", color="grey", label="sent")
    ax1.set_ylabel("requests/s (by send time)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    t = np.array([x for x, m in rss if m > 0]) - lead_s
    m = np.array([m for _, m in rss if m > 0]) / 2**20
    ax2.plot(t, m, color="C3")
    ax2.axvspan(0, load_s, color="C1", alpha=0.08, label="overload")
    ax2.set_ylabel("router replica RSS, MiB")
    ax2.set_xlabel("seconds from the start of the overload")
    ax2.set_ylim(0, max(m.max() * 1.15, 1.0) if m.size else 1.0)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run_overload(args: argparse.Namespace) -> int:
    import secrets

    plan = chaos_plan()
    capacity = plan.predicted.capacity_rps
    rate = OVERLOAD_FACTOR * capacity
    keys = {"overload": "bk-chaos-" + secrets.token_hex(16),
            "health": "bk-chaos-" + secrets.token_hex(16)}
    log_dir = WORK / f"log-overload-{int(time.time())}"
    wall = time.time()
    lead_s = tail_s = 10.0
    cluster = start_cluster()
    out: dict[str, Any] = {"mode": "overload", "cluster_up_s": time.time() - wall}
    rss: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        t = time.time()
        url = deploy(plan, log_dir, {f"chaos-{k}": v for k, v in keys.items()})
        out["deploy_s"] = time.time() - t
        (router,) = replica_actors("boute")
        t0 = time.perf_counter()
        sampler = threading.Thread(target=_rss_sampler, args=(router["pid"], t0, rss, stop),
                                   daemon=True)
        sampler.start()
        time.sleep(lead_s)
        phases = [Phase("overload", 0.0, args.overload_s)]
        data = asyncio.run(_run_load(url, keys, phases, rate_rps=rate, max_tokens=None,
                                     seed=args.seed))
        time.sleep(tail_s)
        stop.set()
        sampler.join()
        out["router_still_same_pid"] = any(a["pid"] == router["pid"]
                                           for a in replica_actors("boute"))
    finally:
        stop.set()
        teardown(cluster)
    out["wall_s"] = time.time() - wall
    log = read_log_rows(log_dir)
    shutil.rmtree(log_dir, ignore_errors=True)
    recs = data.records
    accepted = [r for r in recs if r.ok]
    refused = [r for r in recs if r.status == 429]
    other = [r for r in recs if not r.ok and r.status != 429]
    p95 = _p95([r.e2e_s for r in accepted])
    load_s = args.overload_s
    # rss samples: t relative to the sampler start; the load starts ~lead_s later
    base = [m for t, m in rss if t < lead_s and m > 0]
    first = [m for t, m in rss if lead_s <= t < lead_s + load_s / 2 and m > 0]
    second = [m for t, m in rss if lead_s + load_s / 2 <= t < lead_s + load_s and m > 0]
    after = [m for t, m in rss if t >= lead_s + load_s and m > 0]
    mib = 2**20
    rss_summary = {
        "before_mib": max(base) / mib if base else None,
        "first_half_peak_mib": max(first) / mib if first else None,
        "second_half_peak_mib": max(second) / mib if second else None,
        "after_mib": after[-1] / mib if after else None,
        "samples": len(rss)}
    bounded = bool(first and second and max(second) <= (1 + RSS_GROWTH_BOUND) * max(first))
    target = 2 * TARGET_P95_S
    checks = {
        f"excess refused with 429 (> 0 of {len(recs)})": len(refused) > 0,
        f"accepted P95 <= 2 x target P95 = {target:g} s": p95 is not None and p95 <= target,
        f"router RSS bounded (2nd-half peak <= {1 + RSS_GROWTH_BOUND:.2f} x 1st-half peak)":
            bounded,
        "no request failed other than 429": not other,
        "0 lost log records": (log is not None and
                               sum(r.answered for r in recs) == log.num_rows),
    }
    out.update({
        "args": vars(args), "plan": plan.to_dict(), "capacity_rps": capacity,
        "rate_rps": rate, "load_s": data.duration_s, "sent": len(recs),
        "accepted": len(accepted), "refused_429": len(refused), "other_failed": len(other),
        "other_errors": dict(Counter(r.error.split(":")[0] for r in other)),
        "accepted_rps": len(accepted) / load_s, "accepted_p95_s": p95,
        "accepted_p50_s": (float(np.median([r.e2e_s for r in accepted]))
                           if accepted else None),
        "target_p95_s": TARGET_P95_S, "rss": rss_summary, "rss_samples": rss,
        "log_rows": None if log is None else log.num_rows,
        "answered": sum(r.answered for r in recs), "checks": checks,
        "targets": check({}, {}, checks),
        "records": [asdict(r) for r in recs]})
    head = (f"{'offered req/s':>13} {'sent':>6} {'accepted':>8} {'refused 429':>11} "
            f"{'other':>5} {'acc. P50 s':>10} {'acc. P95 s':>10} {'target x2':>9} "
            f"{'RSS MiB before/1st/2nd/after':>30}")
    r_ = rss_summary
    rss_txt = "/".join(_fmt(r_[k], ".0f") for k in ("before_mib", "first_half_peak_mib",
                                                      "second_half_peak_mib", "after_mib"))
    print(f"plan capacity {capacity:.2f} req/s at P95 <= {TARGET_P95_S} s; overload "
          f"{OVERLOAD_FACTOR:g}x for {load_s:g} s (GSM8K lengths, {STREAM_SHARE:.0%} streamed); "
          f"cluster up {out['cluster_up_s']:.0f} s, deploy {out['deploy_s']:.0f} s, wall "
          f"{out['wall_s']:.0f} s")
    print(head)
    print("-" * len(head))
    print(f"{rate:>13.1f} {len(recs):>6} {len(accepted):>8} {len(refused):>11} {len(other):>5} "
          f"{_fmt(out['accepted_p50_s']):>10} {_fmt(p95):>10} {target:>9.1f} {rss_txt:>30}")
    print(f"log: {out['answered']} answered by the router, {out['log_rows']} rows logged")
    if other:
        print(f"other failures: {out['other_errors']}; first: {other[0].error}")
    print_checks(out["targets"])
    plot_overload(data, rss, lead_s, load_s, Path(args.plot),
                  f"BOute router at {OVERLOAD_FACTOR:g}x the plan's capacity "
                  f"({rate:.0f} req/s offered for {load_s:g} s): {len(refused)} refused (429), "
                  f"accepted P95 {_fmt(p95).strip()} s")
    path = Path(args.json or "build/overload.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path} and {args.plot}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--overload", action="store_true", help="the overload mode")
    ap.add_argument("--quick", action="store_true", help="20 s phases (the test)")
    ap.add_argument("--duration-s", type=float, default=None,
                    help="seconds per chaos phase (default 50; --quick: 20)")
    ap.add_argument("--rate", type=float, default=4.0, help="chaos load, requests/s")
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None,
                    help="output (default build/chaos.json, --overload: build/overload.json)")
    ap.add_argument("--plot", default="docs/overload.png", help="--overload's figure")
    args = ap.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = 20.0 if args.quick else 50.0
    os.chdir(REPO)
    return run_overload(args) if args.overload else run_chaos(args)


if __name__ == "__main__":
    sys.exit(main())
