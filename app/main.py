"""Build the Serve application of a plan: one deployment per replica group + the router.

    serve run app.main:app plan=build/plan.json [backend=emulated]

or from Python, `build_app(plan, backend="emulated")`. Each group's replicas are placed by
`placement` (bundles ``{"GPU": 1, "gpu_type_<gpu>": 1}``, STRICT_PACK inside a node), so the
cluster must declare the GPU-type resources (see cluster.yaml, or `placement.local_cluster`).
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve import Application

from placement import GroupSpec, group_specs
from tuning import Plan

from .server import EmulatedLLMServer, RouterIngress

__all__ = ["BACKENDS", "app", "build_app", "routing_config"]

BACKENDS = ("emulated",)


def routing_config(plan: Plan, specs: list[GroupSpec], weak: str, strong: str,
                   seed: int = 0) -> dict[str, Any]:
    """The router's ``user_config`` for a plan (threshold null until calibrated)."""
    shares: dict[str, dict[str, float]] = {}
    for spec in specs:
        shares.setdefault(spec.model, {})[spec.name] = spec.share
    t = plan.routing.threshold
    return {"weak": weak, "strong": strong, "strong_share": plan.routing.strong_share,
            "threshold": t if math.isfinite(t) else None, "router": plan.routing.router,
            "seed": seed, "shares": shares}


def build_app(plan: Plan, *, backend: str = "emulated", gpus_per_node: dict[str, int] | None
              = None, gpu_catalog: list[str] | None = None,
              model_catalog: list[str] | None = None, seed: int = 0) -> Application:
    """The Serve application serving `plan` with `backend` engines."""
    from profiling import load_catalog

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    catalog = load_catalog(gpu_catalog or (), model_catalog or ())
    models = sorted({g.model for g in plan.groups})
    sizes = gpus_per_node or {g.gpu: catalog.gpu(g.gpu).gpus_per_node for g in plan.groups}
    specs = group_specs(plan, sources={m: catalog.model(m).hf_id or m for m in models},
                        gpus_per_node=sizes)
    handles = {}
    for spec in specs:
        handles[spec.name] = EmulatedLLMServer.options(  # type: ignore[attr-defined]
            name=spec.name, num_replicas=spec.replicas,
            placement_group_bundles=spec.bundles, placement_group_strategy=spec.strategy,
        ).bind(spec.model, spec.gpu, spec.tp, spec.pp, gpu_catalog, model_catalog)
    weak, strong = _pair(plan)
    return RouterIngress.options(  # type: ignore[attr-defined,no-any-return]
        user_config=routing_config(plan, specs, weak, strong, seed)).bind(handles)


def _pair(plan: Plan) -> tuple[str, str]:
    if plan.scenario and isinstance(plan.scenario.get("models"), dict):
        m = plan.scenario["models"]
        return str(m["weak"]), str(m["strong"])
    models = sorted({g.model for g in plan.groups})
    raise ValueError(f"plan.scenario.models is missing; cannot tell weak from strong among "
                     f"{models}")


def app(args: dict[str, str]) -> Application:
    """`serve run app.main:app plan=PLAN.json [backend=emulated]` builder."""
    plan = Plan.load(args["plan"])
    return build_app(plan, backend=args.get("backend", "emulated"))


