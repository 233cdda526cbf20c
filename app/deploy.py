"""Deploy a plan on a running Ray cluster: fit check first, then Serve.

`deploy_plan` builds the group specs, checks them against the live cluster's GPU-type
resources (a plan that does not fit raises `DeployError` naming the shortfall per GPU type,
before anything is deployed), then deploys the stack (`app.main.stack_config`: the router
application + one application per replica group) through Serve's declarative API and waits
until it runs. `serve_config` writes the same config as a file for ``serve deploy``.

`deploy_plan` can ship the router each group's prediction table (``predictions``,
`tuning.prediction_table` of the plan's perf DB; `app.drift`: the live prediction error).
`set_engine_speed` (a dry-run feature) makes one emulated group's engines run slower or
faster, live, to rehearse drift.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from common.textfile import read_utf8
from placement import capacity_nodes
from tuning import Plan, PredictionTable

from .affinity import DEFAULT_IMBALANCE
from .fit import DeployError, fit_plan
from .main import APP_NAME, Stack, stack_config
from .serve_api import ServeApi, dashboard_url, local_url

__all__ = ["APP_NAME", "DeployError", "apply_api_keys", "calibrated", "check_plan_fits",
           "deploy_plan", "read_prompts", "serve_config", "set_engine_speed"]


def read_prompts(path: str) -> list[str]:
    """Prompts of a sample file, one per line: JSONL (``prompt`` or ``messages``) or text.

    Raises:
        DeployError: the file is missing, empty, or a JSONL line has no prompt.

    """
    import json
    from pathlib import Path

    from .openai_api import ApiError, prompt_of

    p = Path(path)
    if not p.is_file():
        raise DeployError(f"--calibration-prompts {path!r}: no such file")
    text = read_utf8(p, f"--calibration-prompts {path!r}", DeployError)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DeployError(f"--calibration-prompts {path!r} is empty")
    if p.suffix != ".jsonl":
        return lines
    out = []
    for i, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"got {type(obj).__name__}")
            out.append(prompt_of("chat" if "messages" in obj else "completions", obj))
        except (ValueError, ApiError, AttributeError, TypeError) as exc:
            raise DeployError(f"{path}:{i}: not a JSON object with 'prompt' or 'messages' "
                              f"({exc})") from None
    return out


def calibrated(plan: Plan, prompts: list[str], seed: int = 0) -> Plan:
    """`plan` with its router threshold calibrated on a prompt sample.

    RouteLLM's calibration: ``threshold = quantile(scores, 1 - strong_share)`` of the plan's
    router's scores, so that share of the sample scores at or above it. The router starts
    from it, then keeps recalibrating on live traffic (`app.routing.LiveThreshold`).

    Raises:
        RouterError: the plan's router cannot be built (unknown, or RouteLLM missing).
        DeployError: a RouteLLM router fails to score the prompts.

    """
    from dataclasses import replace

    from .routing import calibrate_threshold, make_router

    router = make_router(plan.routing.router, seed)
    if plan.routing.router in ("builtin", "random"):
        scores = [float(router.calculate_strong_win_rate(p)) for p in prompts]
    else:
        try:
            scores = [float(router.calculate_strong_win_rate(p)) for p in prompts]
        except Exception as exc:     # a RouteLLM router calls out (embeddings API, hub)
            raise DeployError(f"router={plan.routing.router!r} failed to score the "
                              f"calibration prompts ({type(exc).__name__}: {exc}); check its "
                              "credentials and network, or use router=builtin") from None
    rt = plan.routing
    if rt.is_ladder:        # every workload's cascade, on the same sample
        workloads = tuple(replace(w, thresholds=tuple(calibrate_threshold(scores, t)
                                                      for t in w.tails))
                          for w in rt.workloads)
        return replace(plan, routing=replace(rt, workloads=workloads))
    threshold = calibrate_threshold(scores, rt.strong_share)
    return replace(plan, routing=replace(rt, threshold=threshold))


def check_plan_fits(plan: Plan, stack: Stack, *, gpu_catalog: list[str] | None = None,
                    model_catalog: list[str] | None = None) -> Stack:
    """`app.fit.fit_plan` on the cluster's alive and autoscaler-launchable nodes.

    The nodes are `placement.capacity_nodes`: a ``ray up`` cluster starts without GPU workers.

    Returns `stack` with the cluster's node sizes.

    Raises:
        DeployError: a GPU type is missing or short on the cluster (per type: needed,
            available, what to add).
        InfeasibleConfigError: a group's (model, GPU, TP, PP) does not fit in GPU memory.

    """
    return fit_plan(plan, stack, capacity_nodes, gpu_catalog=gpu_catalog,
                    model_catalog=model_catalog)


def deploy_plan(plan: Plan, *, backend: str, device: str = "gpu",
                sources: Mapping[str, str] | None = None,
                engine_kwargs: Mapping[str, Any] | None = None,
                gpu_catalog: list[str] | None = None, model_catalog: list[str] | None = None,
                host: str = "127.0.0.1", port: int = 8000, seed: int = 0,
                log_dir: str | None = None, log_rotate_s: float = 60.0,
                time_scale: float = 1.0,
                dashboard: str | None = None, proxy_location: str = "EveryNode",
                timeout_s: float = 900.0, api_keys: list[dict[str, Any]] | None = None,
                on_model_down: str = "fallback",
                predictions: Mapping[str, PredictionTable] | None = None,
                drift_window_s: float = 120.0, affinity: str = "off",
                affinity_imbalance: int = DEFAULT_IMBALANCE, prefix_cache: bool = False) -> str:
    """Deploy `plan` on the connected Ray cluster; returns the router's base URL.

    `api_keys` (`app.guard.KeyEntry` dicts, digests only) close the OpenAI endpoint; None
    leaves it open (the CLI asks for that explicitly, ``--no-api-keys``). `predictions`:
    group -> prediction table (`tuning.prediction_table` of the plan's perf DB) for the
    router's live prediction error over `drift_window_s` seconds (`app.drift`; None: the
    router reports ``no_prediction``). `affinity`, `affinity_imbalance`: how each group
    spreads calls over its replicas (`app.affinity`); `prefix_cache`: the emulated engines
    model vLLM's prefix cache (`Stack`).

    The stack layout (`app.main.stack_config`), through Serve's declarative API on the
    dashboard. Node sizes come from the cluster (largest GPU count of each type on one node). Blocks
    until every application runs.

    Raises:
        DeployError: a GPU type is missing or short on the cluster (per type: needed,
            available, what to add), checked before anything is deployed.
        InfeasibleConfigError: a group's (model, GPU, TP, PP) does not fit in GPU memory.
        ServeApiError: the dashboard is unreachable or a deployment failed.

    """
    stack = Stack(backend=backend, device=device, sources=dict(sources or {}),
                  engine_kwargs=dict(engine_kwargs or {}), gpu_catalog=list(gpu_catalog or []),
                  model_catalog=list(model_catalog or []), seed=seed, time_scale=time_scale,
                  log_dir=log_dir, log_rotate_s=log_rotate_s, api_keys=api_keys,
                  on_model_down=on_model_down, drift_window_s=drift_window_s,
                  affinity=affinity, affinity_imbalance=affinity_imbalance,
                  prefix_cache=prefix_cache)
    stack = check_plan_fits(plan, stack)
    api = ServeApi(dashboard or dashboard_url())
    config = stack_config(plan, stack, host=host, port=port, proxy_location=proxy_location,
                          applied_unix_s=time.time(), predictions=predictions)
    api.apply(config)
    api.wait(config, timeout_s=timeout_s)
    return local_url(host, port)


def serve_config(plan: Plan, *, backend: str, device: str = "gpu",
                 sources: Mapping[str, str] | None = None,
                 engine_kwargs: Mapping[str, Any] | None = None,
                 gpus_per_node: Mapping[str, int] | None = None,
                 host: str = "0.0.0.0", port: int = 8000, seed: int = 0,
                 log_dir: str | None = None, api_keys: list[dict[str, Any]] | None = None,
                 on_model_down: str = "fallback",
                 predictions: Mapping[str, PredictionTable] | None = None,
                 affinity: str = "off", affinity_imbalance: int = DEFAULT_IMBALANCE,
                 prefix_cache: bool = False) -> dict[str, Any]:
    """The Serve config file (``serve deploy FILE``) of a plan, in the stack layout.

    (`app.main.stack_config`): editing a group's ``num_replicas`` or the router's
    ``user_config`` and re-deploying changes them in place, and ``boute replan`` can take
    it over. `api_keys` (digests only) go into the router's ``user_config``; `predictions`
    (group -> prediction table, as for `deploy_plan`) too, for the router's live prediction
    error (`app.drift`). The affinity and prefix-cache settings are `deploy_plan`'s.
    """
    stack = Stack(backend=backend, device=device, sources=dict(sources or {}),
                  engine_kwargs=dict(engine_kwargs or {}), gpus_per_node=dict(gpus_per_node or {}),
                  seed=seed, log_dir=log_dir, api_keys=api_keys, on_model_down=on_model_down,
                  affinity=affinity, affinity_imbalance=affinity_imbalance,
                  prefix_cache=prefix_cache)
    return stack_config(plan, stack, host=host, port=port, predictions=predictions)


def set_engine_speed(api: ServeApi, group: str, speed_factor: float, *,
                     timeout_s: float = 120.0) -> None:
    """Run one emulated group's engines at `speed_factor` x the model's speed, live (dry run).

    A ``user_config`` change of that group's deployment only (``{"speed_factor": f}``,
    `app.emulated_server.EmulatedLLMServer.reconfigure`): every step takes ``1 / f`` of its
    modelled time (0.625: 1.6x slower); nothing restarts, the router and the other groups
    keep their configs. For rehearsing drift (`app.drift`, ``boute replan
    --recalibrate-on-drift``) on emulated engines; replanning keeps it for the groups that
    stay.

    Raises:
        DeployError: no such group application, or its engines are not emulated.
        ServeApiError: the dashboard refused the config or the group did not take it.

    """
    details = api.details()
    apps = details.get("applications") or {}
    cfg = (apps.get(group) or {}).get("deployed_app_config") or {}
    stack = (cfg.get("args") or {}).get("stack") or {}
    if cfg.get("import_path") != "app.main:group_app":
        raise DeployError(f"no replica group application {group!r} runs at {api.base}; "
                          f"groups: {sorted(a for a in apps if a != APP_NAME)}")
    if stack.get("backend") != "emulated":
        raise DeployError(f"group {group!r} runs {stack.get('backend')!r} engines; the speed "
                          "factor is a dry-run feature of emulated engines (--backend emulated)")
    from .emulated_server import EngineSettings

    settings = EngineSettings.parse({"speed_factor": speed_factor})
    cfg["deployments"][0]["user_config"] = settings.wire()
    _reapply(api, details, timeout_s)


def _reapply(api: ServeApi, details: dict[str, Any], timeout_s: float) -> None:
    """Apply the running applications' deployed configs, as edited in `details`.

    Waits until Serve runs them: a live change that restarts nothing else.
    """
    http = details.get("http_options") or {}
    apps = details.get("applications") or {}
    config = {"proxy_location": details.get("proxy_location") or "EveryNode",
              "http_options": {"host": http.get("host", "127.0.0.1"),
                               "port": http.get("port", 8000)},
              "applications": [a.get("deployed_app_config") for a in apps.values()]}
    api.apply(config)
    api.wait(config, timeout_s=timeout_s)


def apply_api_keys(api: ServeApi, entries: list[dict[str, Any]], *, app: str = APP_NAME,
                   timeout_s: float = 120.0) -> None:
    """Give the running router a new key set, live (a ``user_config`` change only).

    Every application keeps its deployed config; only the router's ``api_keys`` change, so
    nothing restarts and requests in flight are not affected.

    Raises:
        DeployError: no such router on the cluster.
        ServeApiError: the dashboard refused the config or the router did not take it.

    """
    details = api.details()
    apps = details.get("applications") or {}
    cfg = (apps.get(app) or {}).get("deployed_app_config") or {}
    routers = [d for d in cfg.get("deployments", []) if d.get("name") == "RouterIngress"]
    if not routers:
        raise DeployError(f"no BOute router (application {app!r}) runs at {api.base}; deploy "
                          "a plan first with `boute deploy`")
    uc = routers[0].setdefault("user_config", {})
    uc["api_keys"] = entries
    uc.setdefault("stack_live", {})["api_keys"] = entries
    _reapply(api, details, timeout_s)
