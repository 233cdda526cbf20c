"""Build the Serve applications of a plan: one deployment per replica group + the router.

Two layouts of the same deployments:

- one application (``serve run app.main:app plan=build/plan.json [backend=...]``, or
  `build_app` from Python): quickest to try; a new plan redeploys it as a whole.
- the *stack* that `boute deploy` and ``--serve-config`` use (`stack_config`): the router is
  application ``boute`` (`router_app`) and every replica group is an application of its own
  named after its config (`group_app`, no HTTP route). Each application's builder arguments
  depend only on the serving settings (`Stack`) and the group's (model, GPU, TP, PP), never
  on replica counts or shares, so a new plan applied through Serve's declarative API only
  adds or deletes the groups that changed, resizes the others in place (``num_replicas``)
  and reconfigures the router (``user_config``): nothing that keeps running restarts. This
  is what replanning (`app.replan`) relies on.

Each group's replicas are placed by `placement` (bundles ``{"GPU": 1, "gpu_type_<gpu>": 1}``,
STRICT_PACK inside a node), so the cluster must declare the GPU-type resources (see
cluster.yaml, or `placement.local_cluster`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.serve import Application

from common.pairs import parse_pairs
from placement import GroupSpec, Lane
from tuning import LENGTH_CLASSES, Group, Plan, PredictionTable, Routing

from .affinity import DEFAULT_IMBALANCE
from .emulated_server import EmulatedLLMServer
from .groups import inflight_limits
from .ingress import RouterIngress
from .request_log import LogLimits
from .router_config import GroupPrediction, RouterConfig
from .stack import BACKENDS, LIVE_FIELDS, Stack, plan_specs, stack_specs

__all__ = ["APP_NAME", "BACKENDS", "DRAIN_MAX_S", "DRAIN_MIN_S", "Stack", "app", "build_app",
           "drain_timeout_s", "group_app", "plan_specs",
           "router_app", "routing_config", "stack_config", "stack_specs"]

APP_NAME = "boute"
"""The router's application name (its HTTP route is ``/``)."""


def routing_config(plan: Plan, specs: list[GroupSpec], weak: str, strong: str,
                   seed: int = 0, stack: Stack | None = None,
                   predictions: Mapping[str, PredictionTable] | None = None
                   ) -> dict[str, Any]:
    """The router's ``user_config`` for a plan (threshold null until calibrated).

    A `RouterConfig` as its wire dict (validated here: a bad one never reaches a cluster).
    Besides the routing: each group's in-flight bound (`app.groups.inflight_limits`) and
    replica count, each model's context length, the plan's P95, the API keys, the
    router's settings (from `stack`; default `Stack()`) and, when given, each routed group's
    prediction table (`tuning.prediction_table`; `app.drift`).

    Raises:
        RouterError: the config breaks a rule (one line: field, value, fix).

    """
    stack = stack or Stack()
    shares: dict[str, dict[str, float]] = {}
    for spec in specs:
        shares.setdefault(spec.lane.key, {})[spec.name] = spec.share
    t = plan.routing.threshold
    s = plan.routing.strong_share
    pred = plan.predicted
    rt = plan.routing
    if rt.is_ladder:
        rates = [w.rate_rps if math.isfinite(w.rate_rps) else 1.0 for w in rt.workloads]
        load = {m: sum(r * w.shares[k] for r, w in zip(rates, rt.workloads, strict=True))
                / sum(rates) for k, m in enumerate(rt.models)}
    else:
        load = {strong: s, weak: 1.0 - s} if weak != strong else {strong: 1.0}
    lc = rt.length_classes
    if lc is not None:      # each model's load split by class, over the workloads
        rates_by = {w.name: (w.rate_rps if math.isfinite(w.rate_rps) else 1.0, w.shares)
                    for w in rt.workloads} if rt.is_ladder else {}
        total = sum(r for r, _ in rates_by.values()) or 1.0
        load = {Lane(m, cls).key: sum(r * sh[k] * lc.shares.get(w, (0.5, 0.5))[c]
                                  for w, (r, sh) in rates_by.items()) / total
                for k, m in enumerate(rt.models) for c, cls in enumerate(LENGTH_CLASSES)}
    limits = inflight_limits(
        [(spec.name, spec.lane.key, spec.replicas, spec.share) for spec in specs], load,
        pred.capacity_rps if pred and math.isfinite(pred.capacity_rps) else None,
        _latency_level_s(plan),
        scale=stack.inflight_scale)
    ladder: dict[str, Any] = {}
    if rt.is_ladder:
        ladder = {"models": list(rt.models), "workloads": {
            w.name: {"shares": list(w.shares),
                     "thresholds": [v if math.isfinite(v) else None for v in w.thresholds]}
            for w in rt.workloads}}
    if lc is not None:
        ladder["length_threshold_tokens"] = lc.threshold_tokens
    return RouterConfig.parse({
        **ladder, "weak": weak, "strong": strong, "strong_share": s,
        "threshold": t if math.isfinite(t) else None, "router": plan.routing.router,
        "seed": seed, "shares": shares, "limits": limits,
        "replicas": {spec.name: spec.replicas for spec in specs},
        "context": _context(specs, stack),
        "plan_p95_s": pred.p95_s if pred and math.isfinite(pred.p95_s) else None,
        **({} if predictions is None else {"predictions": {
            spec.name: GroupPrediction.of(predictions[spec.name]).wire()
            for spec in specs if spec.name in predictions}}),
        "api_keys": stack.api_keys, "settings": stack.settings().wire(),
        "stack_live": stack.live()}).wire()


def _latency_level_s(plan: Plan) -> float | None:
    """The latency level of the plan's ``capacity_rps``.

    Its P95 target when it was planned for one (capacity is computed at that level), else its
    predicted P95.
    """
    target = plan.goal.p95_s if plan.goal is not None else None
    if target is not None and math.isfinite(target) and target > 0:
        return float(target)
    p95 = plan.predicted.p95_s if plan.predicted is not None else None
    return p95 if p95 is not None and math.isfinite(p95) else None


# How long an engine replica that a change removes keeps serving what it holds (see
# `drain_timeout_s`).
DRAIN_MIN_S = 60.0
DRAIN_MAX_S = 600.0


def drain_timeout_s(plan: Plan) -> float:
    """Seconds an engine replica that is scaled down or deleted may finish its requests.

    Serve stops sending to such a replica, waits until it holds no request (checked every
    2 s), and kills it after the deployment's ``graceful_shutdown_timeout_s`` (Serve's
    default 20 s). A replan on a loaded cluster cut 38 of 1,398 streams with the default:
    the slow groups' requests outlived it. The drain is the router's deadline rule applied
    to a whole request:

        drain = min(DRAIN_MAX_S, max(DRAIN_MIN_S, 4 x L))

    with L the plan's latency level (its P95 target, else its predicted P95; none: the
    minimum). A replica that empties sooner exits sooner; only a stuck one waits it out.
    """
    level = _latency_level_s(plan)
    drain = DRAIN_MIN_S if level is None or not math.isfinite(level) else 4.0 * level
    return float(min(DRAIN_MAX_S, max(DRAIN_MIN_S, drain)))


def _context(specs: list[GroupSpec], stack: Stack) -> dict[str, int]:
    """Each model's context in tokens (the catalog's, or ``max_model_len`` when smaller)."""
    from profiling import load_catalog

    catalog = load_catalog(stack.gpu_catalog, stack.model_catalog)
    out: dict[str, int] = {}
    for spec in specs:
        if spec.model in catalog.models:
            n = catalog.model(spec.model).max_position_embeddings
            cap = stack.engine_kwargs.get("max_model_len")
            out[spec.model] = min(n, int(cap)) if isinstance(cap, int) and cap > 0 else n
    return out


def _engine(spec: GroupSpec, stack: Stack, drain_s: float = DRAIN_MIN_S,
            prefill: dict[str, Any] | None = None) -> Application:
    """The deployment of one replica group (named ``spec.name``; `drain_timeout_s`).

    Its request router follows ``stack.affinity`` (`app.affinity`). `prefill`: the decode
    pool of a pool pair (`app.emulated_server`; emulated only).
    """
    if prefill is not None and stack.backend != "emulated":
        raise ValueError(f"{spec.name}: prefill/decode pool pairs are served by the emulated "
                         "backend only (--backend emulated); plan without --disaggregate")
    router: dict[str, Any] = {}
    if stack.affinity != "off":             # else Serve's default (power of two choices)
        from .affinity_router import request_router_config

        router["request_router_config"] = request_router_config(stack.affinity,
                                                                stack.affinity_imbalance)
    if stack.backend == "vllm":
        from .vllm_server import vllm_deployment

        return vllm_deployment(spec, device=stack.device, drain_s=drain_s, serve_options=router)
    return EmulatedLLMServer.options(  # type: ignore[attr-defined,no-any-return]
        name=spec.name, num_replicas=spec.replicas, graceful_shutdown_timeout_s=drain_s,
        placement_group_bundles=spec.bundles, placement_group_strategy=spec.strategy,
        **router,
    ).bind(spec.model, spec.catalog_gpu, spec.tp, spec.pp, stack.gpu_catalog or None,
           stack.model_catalog or None, stack.time_scale, stack.prefix_cache, prefill)


def build_app(plan: Plan, *, backend: str = "emulated",
              gpus_per_node: Mapping[str, int] | None = None,
              sources: Mapping[str, str] | None = None,
              engine_kwargs: Mapping[str, Any] | None = None, device: str = "gpu",
              gpu_catalog: list[str] | None = None, model_catalog: list[str] | None = None,
              seed: int = 0, time_scale: float = 1.0, log_dir: str | None = None,
              api_keys: list[dict[str, Any]] | None = None, on_model_down: str = "fallback",
              call_timeout_s: float | None = None, inflight_scale: float = 1.0,
              log_limits: LogLimits | None = None, router_replicas: int = 1,
              affinity: str = "off", affinity_imbalance: int = DEFAULT_IMBALANCE,
              prefix_cache: bool = False) -> Application:
    """The one-application layout of `plan`: a deployment per replica group + the router.

    The arguments are `Stack`'s (``api_keys=None``: no authentication; the ``serve run``
    builder `app` requires keys unless told ``api_keys=none``); `log_limits` gives the
    ``log_refused_sample``, ``log_retain_s`` and ``log_max_bytes`` fields (default
    `LogLimits()`). `router_replicas`: replicas of the router deployment (Serve's ingress
    spreads requests over them; each keeps its own routing state, admission counts and
    request-log writer, so the groups' in-flight bounds hold per router replica).

    Raises:
        ValueError: an unknown backend, a plan without its scenario's models, or
            ``router_replicas < 1``.
        PlacementError: a model without a weights source, a TP group wider than a node.

    """
    if router_replicas < 1:
        raise ValueError(f"{router_replicas=} must be >= 1")
    stack = Stack(backend=backend, device=device, sources=dict(sources or {}),
                  engine_kwargs=dict(engine_kwargs or {}), gpus_per_node=dict(gpus_per_node or {}),
                  gpu_catalog=list(gpu_catalog or []), model_catalog=list(model_catalog or []),
                  seed=seed, time_scale=time_scale, log_dir=log_dir, api_keys=api_keys,
                  on_model_down=on_model_down, call_timeout_s=call_timeout_s,
                  inflight_scale=inflight_scale, affinity=affinity,
                  affinity_imbalance=affinity_imbalance, prefix_cache=prefix_cache,
                  **_log_fields(log_limits or LogLimits()))
    specs = stack_specs(plan, stack)
    weak, strong = _pair(plan)
    drain_s = drain_timeout_s(plan)
    handles = {spec.name: _engine(spec, stack, drain_s) for spec in specs}
    return RouterIngress.options(  # type: ignore[attr-defined,no-any-return]
        num_replicas=router_replicas,
        user_config=routing_config(plan, specs, weak, strong, seed, stack)
    ).bind(handles, log_dir, stack.log_rotate_s, stack.log_limits())


def _log_fields(limits: LogLimits) -> dict[str, Any]:
    """`Stack`'s log fields from `limits` (its sampling interval is always 1 s)."""
    return {"log_refused_sample": limits.refused_sample, "log_retain_s": limits.retain_s,
            "log_max_bytes": limits.max_bytes}


def _optional(args: Mapping[str, str], key: str, kind: type[float] | type[int],
              default: float | int | None) -> Any:
    """``args[key]`` as `kind` (``none``: None; missing: `default`)."""
    if key not in args:
        return default
    if args[key].lower() == "none":
        return None
    try:
        return kind(args[key])
    except ValueError:
        raise ValueError(f"{key}={args[key]!r} is not a{'n integer' if kind is int else ' number'}"
                         " (or none)") from None


def _pair(plan: Plan) -> tuple[str, str]:
    """The smallest and the largest model of the plan (a pair's weak and strong)."""
    if plan.routing.is_ladder:
        return plan.routing.models[0], plan.routing.models[-1]
    if plan.scenario and isinstance(plan.scenario.get("models"), dict):
        m = plan.scenario["models"]
        return str(m["weak"]), str(m["strong"])
    models = sorted({g.model for g in plan.groups})
    raise ValueError(f"plan.scenario.models is missing; cannot tell weak from strong among "
                     f"{models}")


def app(args: dict[str, str]) -> Application:
    """Builder for ``serve run app.main:app plan=PLAN.json [key=value ...]``.

    Keys: ``plan`` (required), ``api_keys`` (required: a key file from ``boute keys new``,
    or ``none`` to serve without authentication), ``backend`` (emulated|vllm), ``device``
    (gpu|cpu), ``models`` (``name=DIR_OR_HF_ID,...``), ``engine_kwargs`` (a JSON object),
    ``gpus_per_node`` (``type=N,...``), ``seed``, ``log_dir``, ``on_model_down``
    (fallback|fail), ``log_refused_sample``, ``log_retain_s``, ``log_max_bytes`` (a number,
    or ``none``: no bound; `Stack`), ``fit_check`` (``on``, the default, or ``skip``),
    ``affinity`` (off|prefix), ``affinity_imbalance`` (requests) and ``prefix_cache``
    (on|off, emulated engines; `app.affinity`).

    Before anything is deployed (``serve run`` calls the builder before it starts or joins
    Ray), as ``boute deploy`` does:

    1. the plan is checked against the cluster ``serve run`` deploys on
       (`placement.target_nodes`: the connected one, ``--address`` / ``RAY_ADDRESS``, the
       local cluster ``ray start`` left, else the new local Ray it would start) by
       `app.fit.fit_plan` (`boute deploy`'s check): a missing or short GPU type fails at
       once, naming the type, the GPUs needed and available, and the fix, instead of Serve
       waiting for resources that never come. ``fit_check=skip`` waives this (an
       autoscaling cluster whose GPU nodes start on demand);
    2. the Ray token file is made private (`placement.secure_token_file`); when ``serve
       run`` is about to start a new local Ray, which would write ``~/.ray/auth_token``
       0644, it is created 0600 first.

    Raises:
        ValueError: a missing or malformed argument.
        DeployError: the plan does not fit the cluster.

    """
    from .guard import read_key_file

    if "plan" not in args:
        raise ValueError("plan=PLAN.json is required: serve run app.main:app plan=PLAN.json")
    if "api_keys" not in args:
        raise ValueError("api_keys=FILE is required (make one with `boute keys new --file "
                         "FILE --id NAME`), or api_keys=none to serve without authentication")
    fit_check = args.get("fit_check", "on")
    if fit_check not in ("on", "skip"):
        raise ValueError(f"fit_check={fit_check!r} is unknown; use 'on' (the default) or "
                         "'skip'")
    keys = None if args["api_keys"] == "none" else [
        e.to_dict() for e in read_key_file(args["api_keys"])]
    plan = Plan.load(args["plan"])
    gpus_per_node = {k: int(v) for k, v in parse_pairs(
        args.get("gpus_per_node", "").split(","), "gpus_per_node").items()}
    sources = parse_pairs(args.get("models", "").split(","), "models")
    engine_kwargs = json.loads(args.get("engine_kwargs") or "{}")
    backend, device = args.get("backend", "emulated"), args.get("device", "gpu")
    if fit_check == "on":
        gpus_per_node = _check_serve_run_fit(plan, Stack(
            backend=backend, device=device, sources=sources, engine_kwargs=engine_kwargs,
            gpus_per_node=gpus_per_node))
    return build_app(plan, backend=backend, device=device, sources=sources,
                     gpus_per_node=gpus_per_node, engine_kwargs=engine_kwargs,
                     seed=int(args.get("seed", 0)), log_dir=args.get("log_dir"),
                     api_keys=keys, on_model_down=args.get("on_model_down", "fallback"),
                     affinity=args.get("affinity", "off"),
                     affinity_imbalance=int(args.get("affinity_imbalance", DEFAULT_IMBALANCE)),
                     prefix_cache=args.get("prefix_cache", "off") == "on",
                     log_limits=LogLimits(
                         refused_sample=_optional(args, "log_refused_sample", int,
                                                  LogLimits.refused_sample),
                         retain_s=_optional(args, "log_retain_s", float, LogLimits.retain_s),
                         max_bytes=_optional(args, "log_max_bytes", int, LogLimits.max_bytes)))


def _check_serve_run_fit(plan: Plan, stack: Stack) -> dict[str, int]:
    """Steps 1 and 2 of `app`; returns the node sizes to build with (the cluster's).

    Raises:
        DeployError: the plan does not fit the cluster ``serve run`` deploys on (a GPU type
            missing or short, or its nodes smaller than a replica).

    """
    import sys

    import placement

    from .fit import DeployError, fit_plan

    target = placement.target_nodes(_serve_run_address(sys.argv))
    try:
        fitted = fit_plan(plan, stack, target.nodes, where=target.name)
    except (DeployError, placement.PlacementError) as exc:   # short, or nodes too small
        hint = (" (start the cluster first: `ray start --head --resources ...`, or `boute "
                "deploy --local` for a local fake cluster)" if target.new_local else "")
        raise DeployError(f"serve run: {exc}{hint}; or pass fit_check=skip when the cluster "
                          "starts GPU nodes on demand") from None
    # A new local Ray (`serve run` starts it next) writes its generated token 0644 unless a
    # token exists: create it 0600 first. Otherwise tighten the file this client reads.
    placement.secure_token_file(create=target.new_local)
    return fitted.gpus_per_node


def _serve_run_address(argv: list[str]) -> str | None:
    """The ``--address`` / ``-a`` of a ``serve run`` command line (None: not one, or none).

    ``serve run`` calls the builder before it joins Ray, so the address it will join is
    only on its command line (``RAY_ADDRESS`` is read by `placement.target_nodes`).
    """
    if len(argv) < 2 or Path(argv[0]).name != "serve" or argv[1] != "run":
        return None
    for i, arg in enumerate(argv):
        if arg in ("--address", "-a") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--address="):
            return arg.split("=", 1)[1]
    return None


# -- the stack layout: one application per replica group + the router application ------------
def router_app(args: dict[str, Any]) -> Application:
    """Builder of the router application (args: `Stack.to_args`).

    The groups it routes to come with its ``user_config`` (`stack_config`), resolved by
    application name.
    """
    stack = Stack.from_args(args)
    return RouterIngress.bind(  # type: ignore[attr-defined,no-any-return]
        {}, stack.log_dir, stack.log_rotate_s, stack.log_limits())


def group_app(args: dict[str, Any]) -> Application:
    """Builder of one replica group's application.

    Args: ``{"stack": Stack.to_args(), "group": {"model", "gpu", "tp", "pp",
    "device_gpu"?, "length_class"?}}`` (``device_gpu``: the catalog GPU of an offer under
    another name); the replica
    count comes from the config's ``deployments[0].num_replicas`` (`stack_config`).
    """
    stack = Stack.from_args(args["stack"])
    g = args["group"]
    offers = {g["gpu"]: {"gpu": g.get("device_gpu") or g["gpu"]}}
    one = Plan(Routing(1.0), (Group(g["model"], g["gpu"], int(g["tp"]), int(g["pp"]), 1, 1.0,
                                    g.get("length_class"), g.get("role")),),
               scenario={"spec": {"gpus": offers}})
    (spec,) = stack_specs(one, stack)
    return _engine(spec, stack, prefill=g.get("prefill"))


def _pd_peers(plan: Plan) -> dict[str, dict[str, Any]]:
    """Decode group name -> its prefill group (``app`` name, catalog ``gpu``, ``tp``, ``pp``).

    Raises:
        ValueError: a model's pools are not one prefill group and one decode group.

    """
    out: dict[str, dict[str, Any]] = {}
    for m in sorted({g.model for g in plan.groups if g.role is not None}):
        pre = [g for g in plan.groups if g.model == m and g.role == "prefill"]
        dec = [g for g in plan.groups if g.model == m and g.role == "decode"]
        if len(pre) != 1 or len(dec) != 1:
            raise ValueError(f"plan: model {m} has {len(pre)} prefill and {len(dec)} decode "
                             "groups; a pool pair is one of each")
        p = pre[0]
        out[dec[0].name] = {"app": p.name, "gpu": plan.catalog_gpu(p.gpu), "tp": p.tp,
                            "pp": p.pp}
    return out


def stack_config(plan: Plan, stack: Stack, *, host: str = "0.0.0.0", port: int = 8000,
                 proxy_location: str = "EveryNode", applied_unix_s: float | None = None,
                 routed_plan: Plan | None = None,
                 predictions: Mapping[str, PredictionTable] | None = None) -> dict[str, Any]:
    """The Serve config (``serve deploy FILE``, or Serve's REST API) serving `plan` as a stack.

    Applications: ``boute`` (the router, route ``/``) and one per replica group named
    ``spec.name`` (no route). The router's ``user_config`` is `routing_config` plus
    ``apps`` (group -> application), ``plan`` (the plan, for replanning), ``applied_unix_s``
    and ``config_id`` (a digest of the routing, echoed by ``/health``).

    For the steps of a change (`app.replan`): `routed_plan` (default `plan`) is the plan whose
    routing the router gets, so the groups of `plan` may be a superset of the routed ones
    (scale up before routing to them, stop routing before scaling down). `predictions`: the
    routed groups' prediction tables for the router's live prediction error (`app.drift`;
    None: none, the router reports ``no_prediction``).
    """
    routed = routed_plan or plan
    specs = {s.name: s for s in stack_specs(plan, stack)}
    peers = _pd_peers(plan)
    hidden = {g.name for g in routed.groups if g.role == "prefill"}   # reached via its pair
    routed_specs = [s for s in stack_specs(routed, stack) if s.name not in hidden]
    missing = sorted({s.name for s in routed_specs} - set(specs))
    if missing:
        raise ValueError(f"the routed plan names groups {missing} that are not deployed")
    weak, strong = _pair(routed)
    user_config = routing_config(routed, routed_specs, weak, strong, stack.seed, stack,
                                 predictions)
    user_config["apps"] = {s.name: s.name for s in routed_specs}
    user_config["config_id"] = hashlib.sha256(
        json.dumps(user_config, sort_keys=True).encode()).hexdigest()[:12]
    user_config["plan"] = routed.to_dict()
    user_config["applied_unix_s"] = applied_unix_s
    stack_args = {k: v for k, v in stack.to_args().items() if k not in LIVE_FIELDS}
    apps: list[dict[str, Any]] = [{
        "name": APP_NAME, "route_prefix": "/", "import_path": "app.main:router_app",
        "args": stack_args,
        "deployments": [{"name": "RouterIngress", "user_config": user_config}],
    }]
    drain_s = drain_timeout_s(plan)
    roles = {g.name: g.role for g in plan.groups if g.role is not None}
    for name, spec in sorted(specs.items()):
        apps.append({
            "name": name, "route_prefix": None, "import_path": "app.main:group_app",
            "args": {"stack": stack_args, "group": {
                "model": spec.model, "gpu": spec.gpu, "tp": spec.tp, "pp": spec.pp,
                **({} if spec.catalog_gpu == spec.gpu else {"device_gpu": spec.catalog_gpu}),
                **({} if spec.length_class is None else {"length_class": spec.length_class}),
                **({} if name not in roles else {"role": roles[name]}),
                **({} if name not in peers else {"prefill": peers[name]})}},
            "deployments": [{"name": name, "num_replicas": spec.replicas,
                             "graceful_shutdown_timeout_s": drain_s}],
        })
    return {"proxy_location": proxy_location, "http_options": {"host": host, "port": port},
            "applications": apps}
