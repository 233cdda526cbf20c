"""Deploy a plan on a running Ray cluster: fit check first, then Serve.

`deploy_plan` builds the group specs, checks them against the live cluster's GPU-type
resources (a plan that does not fit raises `DeployError` naming the shortfall per GPU type,
before anything is deployed), then runs the app (`app.main.build_app`) without blocking.
`serve_config` writes the equivalent Serve config file for ``serve deploy`` / ``serve run``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from boute.errors import BouteError
from placement import check_fit, gpu_types_in, live_nodes
from tuning import Plan

from .main import build_app, plan_specs, routing_config

__all__ = ["DeployError", "calibrated", "deploy_plan", "read_prompts", "serve_config"]

APP_NAME = "boute"


class DeployError(BouteError, RuntimeError):
    """A plan cannot be deployed on this cluster (nothing was deployed)."""


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
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    if not lines:
        raise DeployError(f"--calibration-prompts {path!r} is empty")
    if p.suffix != ".jsonl":
        return lines
    out = []
    for i, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            out.append(prompt_of("chat" if "messages" in obj else "completions", obj))
        except (ValueError, ApiError, AttributeError) as exc:
            raise DeployError(f"{path}:{i}: not a JSON object with 'prompt' or 'messages' "
                              f"({exc})") from None
    return out


def calibrated(plan: Plan, prompts: list[str], seed: int = 0) -> Plan:
    """`plan` with its router threshold calibrated on a prompt sample.

    RouteLLM's calibration: ``threshold = quantile(scores, 1 - strong_share)`` of the plan's
    router's scores, so that share of the sample scores at or above it. The router starts
    from it, then keeps recalibrating on live traffic (`app.routing.LiveThreshold`).
    """
    from dataclasses import replace

    from .routing import calibrate_threshold, make_router

    router = make_router(plan.routing.router, seed)
    scores = [float(router.calculate_strong_win_rate(p)) for p in prompts]
    threshold = calibrate_threshold(scores, plan.routing.strong_share)
    return replace(plan, routing=replace(plan.routing, threshold=threshold))


def deploy_plan(plan: Plan, *, backend: str, device: str = "gpu",
                sources: Mapping[str, str] | None = None,
                engine_kwargs: Mapping[str, Any] | None = None,
                gpu_catalog: list[str] | None = None, model_catalog: list[str] | None = None,
                host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME,
                seed: int = 0, log_dir: str | None = None) -> str:
    """Deploy `plan` on the connected Ray cluster; returns the router's base URL.

    Node sizes come from the cluster (largest GPU count of each type on one node).

    Raises:
        DeployError: a GPU type is missing or short on the cluster (per type: needed,
            available, what to add), checked before anything is deployed.
        InfeasibleConfigError: a group's (model, GPU, TP, PP) does not fit in GPU memory.

    """
    from ray import serve

    from profiling import ReplicaModel, load_catalog

    catalog = load_catalog(gpu_catalog or (), model_catalog or ())
    for g in plan.groups:           # memory fit per replica (raises with the numbers)
        if g.model in catalog.models and g.gpu in catalog.gpus:
            ReplicaModel(catalog.model(g.model), catalog.gpu(g.gpu), g.tp, g.pp)

    nodes = live_nodes()
    sizes = gpu_types_in(nodes)
    missing = sorted({g.gpu for g in plan.groups} - set(sizes))
    if missing:
        raise DeployError(f"the cluster has no node with GPU type(s) {', '.join(missing)}; "
                          "nodes must declare the resource gpu_type_<TYPE> per GPU (see "
                          "cluster.yaml or `ray start --resources`)")
    specs = plan_specs(plan, backend=backend, gpus_per_node=sizes, sources=sources,
                       engine_kwargs=engine_kwargs, gpu_catalog=gpu_catalog,
                       model_catalog=model_catalog)
    short = check_fit(specs, nodes)
    if short:
        raise DeployError("the plan does not fit the cluster:\n  " +
                          "\n  ".join(str(s) for s in short))
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(plan, backend=backend, gpus_per_node=sizes, sources=sources,
                        engine_kwargs=engine_kwargs, device=device, gpu_catalog=gpu_catalog,
                        model_catalog=model_catalog, seed=seed, log_dir=log_dir),
              name=name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def serve_config(plan: Plan, plan_path: str, *, backend: str, device: str = "gpu",
                 sources: Mapping[str, str] | None = None,
                 engine_kwargs: Mapping[str, Any] | None = None,
                 gpus_per_node: Mapping[str, int] | None = None,
                 host: str = "0.0.0.0", port: int = 8000, seed: int = 0,
                 log_dir: str | None = None) -> dict[str, Any]:
    """The Serve config (``serve deploy FILE``) of a plan.

    It names the `app.main:app` builder with its arguments, and spells out the router's
    ``user_config`` so that editing it (share, threshold, group shares) and re-deploying
    reconfigures the router live.
    """
    import json

    specs = plan_specs(plan, backend=backend, gpus_per_node=gpus_per_node, sources=sources,
                       engine_kwargs=engine_kwargs)
    from .main import _pair

    weak, strong = _pair(plan)
    args: dict[str, str] = {"plan": plan_path, "backend": backend, "device": device,
                            "seed": str(seed)}
    if sources:
        args["models"] = ",".join(f"{k}={v}" for k, v in sorted(sources.items()))
    if engine_kwargs:
        args["engine_kwargs"] = json.dumps(dict(engine_kwargs), sort_keys=True)
    if log_dir:
        args["log_dir"] = log_dir
    if gpus_per_node:
        args["gpus_per_node"] = ",".join(f"{k}={v}" for k, v in sorted(gpus_per_node.items()))
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": "app.main:app",
            "args": args,
            "deployments": [{"name": "RouterIngress",
                             "user_config": routing_config(plan, specs, weak, strong, seed)}],
        }],
    }
