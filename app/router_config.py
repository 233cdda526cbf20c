"""The router's ``user_config``: one typed, frozen value, validated once per change.

`RouterConfig` is what `app.main.routing_config` and `app.main.stack_config` produce (as its
JSON dict: ``RouterConfig(...).wire()``), what a ``serve deploy`` config carries in the
``RouterIngress`` deployment's ``user_config``, and what `app.ingress.RouterIngress.reconfigure`
parses (`RouterConfig.parse`) before anything in the running router changes: a bad config
is refused whole, with one line naming the field, the value and the rule
(`app.routing.RouterError`), and the router keeps the config it had.

The wire format is the dict the router always took; fields a producer leaves out take their
defaults (a hand-written config needs only ``weak``, ``strong``, ``strong_share`` and
``shares``), and a field the router does not know is an error naming the known ones.

Notation: a *lane* is what the router picks groups by (`placement.Lane`: a model, or one
length class of it, ``model#class`` on the wire); a *workload* of a ladder plan routes its
queries over the K models by its own shares (`app.routing.LiveCascade`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from placement import Lane
from tuning import PredictionTable

from .guard import KeyEntry, RequestLimits
from .isolation import Isolation
from .routing import RouterError

__all__ = ["GroupPrediction", "RouterConfig", "RouterSettings", "WorkloadRouting"]

_M = TypeVar("_M", bound="_Strict")
_FIX = "fix the router's user_config (app.main.routing_config writes a valid one)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @classmethod
    def parse(cls: type[_M], obj: Mapping[str, Any] | None, where: str = "router config"
              ) -> _M:
        """Validate `obj` (None: every default).

        Raises:
            RouterError: one line: the first field breaking its rule, its value and the fix.

        """
        try:
            return cls.model_validate(dict(obj or {}))
        except ValidationError as exc:
            raise RouterError(_one_line(cls, exc, where)) from None

    def wire(self) -> dict[str, Any]:
        """The JSON dict a Serve config carries: the fields that were given, as given."""
        return self.model_dump(mode="json", exclude_unset=True)


def _one_line(cls: type[BaseModel], exc: ValidationError, where: str) -> str:
    """``where: field=value: rule; fix`` for the first error of `exc`."""
    err = exc.errors()[0]
    loc = [str(x) for x in err["loc"]]
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        owner = _model_at(cls, loc[:-1])
        known = sorted(owner.model_fields) if owner is not None else []
        msg = f"unknown field{f'; known: {known}' if known else ''}"
    if not loc:                         # a rule across fields: the message names them
        return f"{where}: {msg}; {_FIX}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err["type"] == "missing" else f"={value!r}"
    return f"{where}: {'.'.join(loc)}{shown}: {msg}; {_FIX}"


def _model_at(cls: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The model that a validation error's location `path` points into (None: not one)."""
    owner: Any = cls
    for part in path:
        if _is_model(owner):
            field = owner.model_fields.get(part)
            owner = None if field is None else field.annotation
        elif get_origin(owner) in (dict, list):     # a key or an index: its values' type
            owner = get_args(owner)[-1]
        else:
            return None
        if get_origin(owner) in (Union, UnionType):   # X | None: X
            owner = next((a for a in get_args(owner) if a is not type(None)), None)
    return owner if _is_model(owner) else None


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and not get_args(obj) and issubclass(obj, BaseModel)


class RouterSettings(_Strict):
    """How the router fails safe (the ``settings`` of its ``user_config``; all live)."""

    on_model_down: Literal["fallback", "fail"] = Field(
        "fallback", description="A model without a healthy group: 'fallback' sends its "
        "requests to the nearest other model (flagged x-boute-degraded), 'fail' answers a "
        "fast 503.")
    call_timeout_s: float | None = Field(
        None, gt=0, le=86_400.0, description="Deadline of one engine call, seconds "
        "(non-streamed: the whole response; streamed: the first token, then each next "
        "batch); null: max(30 s, 4 x the plan's P95).")
    max_tries: int = Field(3, ge=1, le=100, description="Engine calls per request at most "
                           "(first + retries, fallback included).")
    fail_threshold: int = Field(3, ge=1, le=10_000, description="Consecutive failed calls "
                                "that eject a group (its circuit breaker opens).")
    cooldown_s: float = Field(5.0, gt=0, le=60.0, description="First ejection's length, "
                              "seconds (doubles per ejection in a row, up to 60 s).")
    max_body_bytes: int = Field(RequestLimits.max_body_bytes, ge=1, le=1 << 30,
                                description="Largest request body, bytes (413 above).")
    max_json_depth: int = Field(RequestLimits.max_json_depth, ge=1, le=10_000,
                                description="Deepest JSON nesting of a body (400 above).")
    tenant_isolation: bool = Field(True, description="Isolate API keys in the live threshold "
                                   "calibration (app.isolation): slot quota, deficit cap, "
                                   "move bound, once two keys are in the window.")
    tenant_max_fraction: float = Field(
        0.1, gt=0, le=1, description="a: the most of the calibration window one key (or the "
        "anonymous tenant) holds while another key is in it (floor(a x 2000) scores).")
    tenant_deficit_cap: float = Field(
        0.01, ge=0, le=1, description="kappa: the most one key moves the calibrated share "
        "through the deficit correction (share, 0.01 = 1 point).")
    max_threshold_move: float = Field(
        0.05, gt=0, le=1, description="Largest move of a threshold's base (its deficit-free "
        "quantile) per recalibration, as the share of the window's scores it crosses; wider "
        "moves are clamped (two or more keys) and counted.")
    max_threshold_move_per_s: float = Field(
        0.02, gt=0, le=1, description="Largest move of a threshold per second, same units.")

    max_n: int = Field(RequestLimits.max_n, ge=1, le=16_384, description="Largest n "
                       "(completions per prompt) and best_of a request may ask for (400 "
                       "above; vLLM's own cap is 16384). A request costs prompts x n units "
                       "of its key's rate and of a group's in-flight bound.")
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600.0, description="Longest time a request body may take to arrive "
        "at the router, seconds (408 past it; nginx's client_body_timeout is 60 s). HAProxy "
        "bounds headers and the first 16 KiB of body itself (placement._haproxy).")
    metrics_key_label: bool = Field(
        False, description="Tag boute_refused_total by API key id (key=<id>); off: one "
        "aggregate series (key=\"*\"), so Ray's metrics endpoint names no key ids. The "
        "request log keeps each request's key id either way.")

    drift_window_s: float = Field(
        120.0, gt=0, le=86_400.0, description="The live prediction error's sliding window, "
        "seconds (app.drift): each group's served requests in it against the deploy's "
        "prediction table.")
    drift_min_requests: int = Field(
        30, ge=3, le=1_000_000, description="Fewest successful requests of a group in the "
        "window for a drift verdict (fewer: errors shown, no verdict).")
    drift_tolerance: float = Field(
        0.25, gt=0, le=100.0, description="A group has drifted when its P95 prediction error "
        "stays past this share over the window and each of its thirds, or its TPOT error is "
        "past it (tuning.detect_drift).")

    @property
    def limits(self) -> RequestLimits:
        """The body limits."""
        return RequestLimits(self.max_body_bytes, self.max_json_depth, max_n=self.max_n)

    @property
    def isolation(self) -> Isolation:
        """The tenant isolation rules (`app.isolation.Isolation`)."""
        return Isolation(self.tenant_isolation, self.tenant_max_fraction,
                         self.tenant_deficit_cap, self.max_threshold_move,
                         self.max_threshold_move_per_s)


class WorkloadRouting(_Strict):
    """One workload of a ladder plan: its share per model and its calibrated thresholds."""

    shares: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        min_length=1, description="Share of the workload's queries per model of the ladder, "
        "smallest model first (one per entry of `models`).")
    thresholds: list[float | None] = Field(
        default_factory=list, description="The K - 1 thresholds on the router's score, "
        "calibrated on a prompt sample (null: unknown, calibrated live); empty: all unknown.")

    @property
    def tails(self) -> list[float]:
        """``S_k = sum(shares[k:])`` for k = 1..K-1: the share sent to model k or above."""
        return [sum(self.shares[k:]) for k in range(1, len(self.shares))]

    @property
    def initial(self) -> list[float] | None:
        """The thresholds as floats (unknown: NaN); None when none is given."""
        if not self.thresholds:
            return None
        return [math.nan if v is None else float(v) for v in self.thresholds]


Count = Annotated[int, Field(ge=0)]
NonNegative = Annotated[float, Field(ge=0)]


class GroupPrediction(_Strict):
    """One group's prediction table (`tuning.PredictionTable`), shipped by the deploy.

    Points of the perf DB's curve of the group's config: per-replica rate -> P95 and median
    TPOT (the router interpolates, `tuning.interpolate_prediction`).
    """

    rate_rps: list[NonNegative] = Field(min_length=1, description="Per-replica request rates "
                                        "of the points, strictly increasing.")
    p95_s: list[NonNegative] = Field(min_length=1, description="Predicted end-to-end P95 at "
                                     "each rate, seconds.")
    tpot_s: list[NonNegative | None] = Field(
        default_factory=list, description="Predicted median TPOT at each rate, seconds (null: "
        "unknown; empty: none).")

    @model_validator(mode="after")
    def _points(self) -> GroupPrediction:
        n = len(self.rate_rps)
        if len(self.p95_s) != n or (self.tpot_s and len(self.tpot_s) != n):
            raise ValueError(f"{n} rates, {len(self.p95_s)} P95s, {len(self.tpot_s)} TPOTs: "
                             "give one of each per point (TPOTs may be empty)")
        if any(b <= a for a, b in zip(self.rate_rps, self.rate_rps[1:], strict=False)):
            raise ValueError(f"rate_rps={self.rate_rps} must be strictly increasing")
        return self

    def table(self) -> PredictionTable:
        """As a `tuning.PredictionTable` (unknown TPOTs: NaN)."""
        tpot = self.tpot_s or [None] * len(self.rate_rps)
        return PredictionTable(tuple(self.rate_rps), tuple(self.p95_s),
                               tuple(math.nan if v is None else float(v) for v in tpot))

    @classmethod
    def of(cls, table: PredictionTable) -> GroupPrediction:
        """From a `tuning.PredictionTable` (NaN TPOTs: null)."""
        return cls(rate_rps=list(table.rate_rps), p95_s=list(table.p95_s),
                   tpot_s=[v if math.isfinite(v) else None for v in table.tpot_p50_s])


class RouterConfig(_Strict):
    """The router's whole ``user_config`` (module docstring); changed live, never restarted."""

    # -- routing ---------------------------------------------------------------------------
    weak: str = Field(min_length=1, description="The pair's small model (a ladder: its "
                      "smallest).")
    strong: str = Field(min_length=1, description="The pair's large model (a ladder: its "
                        "largest).")
    strong_share: float = Field(ge=0, le=1, description="Share of routed queries sent to the "
                                "strong model (a pair; a ladder's is reported, not routed).")
    threshold: float | None = Field(
        None, description="The pair's threshold on the router's score, calibrated on a prompt "
        "sample (null: unknown; calibrated live).")
    router: str = Field("builtin", min_length=1, description="The scorer: builtin, random, or "
                        "a RouteLLM router's name (app.routing.make_router).")
    seed: int = Field(0, description="Seed of the router's draws (random scorer, coin flips "
                      "while the pair's threshold is unknown).")
    models: list[str] | None = Field(
        None, min_length=1, description="A ladder's models, smallest first (null: the pair, "
        "[weak, strong]).")
    workloads: dict[str, WorkloadRouting] = Field(
        default_factory=dict, description="A ladder's workloads, by name, each routed by its "
        "own cascade; the first is the default (empty: the pair's threshold routes).")
    length_threshold_tokens: int | None = Field(
        None, ge=1, description="Prompt + max_tokens at most this is a short request, else "
        "long; each class has groups of its own (null: no length classes).")
    # -- groups ----------------------------------------------------------------------------
    shares: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(
        description="Lane (model or model#class) -> group -> share of the lane's queries.")
    limits: dict[str, Count] | None = Field(
        None, description="Group -> in-flight bound (app.groups.inflight_limits); null or "
        "absent: unbounded.")
    replicas: dict[str, Count] | None = Field(
        None, description="Group -> replicas the plan wants (reported by /health).")
    apps: dict[str, str] = Field(
        default_factory=dict, description="The stack layout: group -> the Serve application "
        "it runs in (its handle is looked up by name).")
    context: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="Model -> context length, tokens (a request "
        "asking more max_tokens than fit is refused with 400).")
    plan_p95_s: float | None = Field(
        None, ge=0, description="The plan's predicted P95, seconds (sizes the default "
        "call_timeout_s).")
    predictions: dict[str, GroupPrediction] | None = Field(
        None, description="Group -> its prediction table from the plan's perf DB (app.drift: "
        "the live prediction error in /health and boute_prediction_error); null or a group "
        "left out: no prediction for it.")
    # -- access and failing safe -------------------------------------------------------------
    api_keys: list[KeyEntry] | None = Field(
        None, description="API keys, digests only (app.guard.KeyEntry as dicts: id, sha256, "
        "rate_rps?, burst?, expires_at?); null: no authentication.")
    settings: RouterSettings = Field(default_factory=RouterSettings,
                                     description="How the router fails safe.")
    # -- carried for /health and replanning (the router does not route by them) -------------
    config_id: str | None = Field(None, description="A digest of the routing, echoed by "
                                  "/health once applied (app.replan waits for it).")
    plan: dict[str, Any] | None = Field(None, description="The routed plan (tuning.Plan "
                                        "JSON), read back by replanning.")
    applied_unix_s: float | None = Field(None, description="When the plan was applied "
                                         "(replanning's cool-down).")
    stack_live: dict[str, Any] | None = Field(
        None, description="The live app.main.Stack fields, read back by replanning.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> list[KeyEntry] | None:
        if v is None:
            return None
        if not isinstance(v, list):
            raise ValueError("must be a list of {id, sha256, rate_rps?, burst?, expires_at?} "
                             "(or null: no authentication)")
        return [e if isinstance(e, KeyEntry) else KeyEntry.from_dict(e, f"api_keys[{i}]")
                for i, e in enumerate(v)]

    @field_serializer("api_keys")
    def _keys_out(self, v: list[KeyEntry] | None) -> list[dict[str, Any]] | None:
        return None if v is None else [e.to_dict() for e in v]

    @field_validator("shares")
    @classmethod
    def _lanes(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        owner: dict[str, str] = {}
        for key, groups in v.items():
            Lane.parse(key)
            if not groups or sum(groups.values()) <= 0:
                raise ValueError(f"lane {key!r}: group shares {groups} must be >= 0 with a "
                                 "positive sum")
            for g in groups:
                if g in owner:
                    raise ValueError(f"group {g!r} is in two lanes, {owner[g]!r} and {key!r}")
                owner[g] = key
        return v

    @model_validator(mode="after")
    def _ladder(self) -> RouterConfig:
        k = len(self.ladder_models)
        for name, w in self.workloads.items():
            if len(w.shares) != k:
                raise ValueError(f"workload {name!r}: {len(w.shares)} shares for {k} models "
                                 f"{list(self.ladder_models)}")
            if w.thresholds and len(w.thresholds) != k - 1:
                raise ValueError(f"workload {name!r}: {len(w.thresholds)} thresholds for {k} "
                                 f"models; give {k - 1} (or none)")
            if w.tails and w.tails[0] > 1.0:   # (shares >= 0: the tails decrease)
                raise ValueError(f"workload {name!r}: shares {w.shares}: those above the "
                                 f"smallest model's sum to {w.tails[0]:g}, more than 1")
        return self

    @property
    def ladder(self) -> bool:
        """Per-workload cascades over K models (else the pair's threshold routes)."""
        return bool(self.workloads)

    @property
    def ladder_models(self) -> tuple[str, ...]:
        """The served models, smallest first (the pair: weak, strong; once each)."""
        return tuple(dict.fromkeys(self.models or [self.weak, self.strong]))

    @property
    def threshold_or_nan(self) -> float:
        """The pair's initial threshold (unknown: NaN)."""
        return math.nan if self.threshold is None else float(self.threshold)
