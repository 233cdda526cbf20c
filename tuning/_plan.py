"""Plans: immutable values with a JSON round trip in the public contract's format.

```
{"routing": {"strong_share": s, "threshold": t, "router": name},
 "groups": [{"model", "gpu", "tp", "pp", "replicas", "share"}, ...],
 "predicted": {"p95_s", "system_p95_s", "mean_s", "quality", "cost_per_hour",
               "throughput_rps", "capacity_rps", ["ttft_p95_s", "tpot_p95_s", "goodput"]},
 "scenario": {"name", "rate_rps", "budget_per_hour", "task", "models", "gpus", "spec"},
 "search": {..., "goal": {"mode", "quality", "p95_s", "qualities", "slo", "ttft_p95_s",
                               "tpot_p95_s"}}, ...}
```

The bracketed ``predicted`` keys are written only for a goal with a TTFT or TPOT target
(`Goal.ttft_p95_s`, `Goal.tpot_p95_s`; ``goodput`` only after the headroom check).

``share`` is the share of *its model's* load that a group receives (shares of one model's groups
sum to 1). ``predicted`` is optional on input (`boute evaluate` recomputes it).

A *ladder* (K models, or several workloads) adds to ``routing``

```
"models": [smallest, ..., largest],
"workloads": [{"name", "rate_rps", "shares": {model: share}, "thresholds": [t_2, ..., t_K],
               "quality"}, ...]
```

where each workload's shares sum to 1 and a query of the workload with router score >= t_k
goes to model k or a larger one (NaN / null: calibrated live); ``strong_share`` is then the
share of all traffic on the largest model. Two models and one workload keep the pair format.

*Length classes* (`profiling.LengthClasses`) add

```
"routing": {..., "length_classes": {"threshold_tokens": n,
                                    "shares": {workload: {"short": p, "long": 1 - p}}}},
"groups": [{..., "length_class": "short" | "long"}, ...]
```

a request with prompt + max_tokens <= n tokens is *short* and is served by its model's short
groups only (``share`` is then the share of its model's load *of that class*).

*Disaggregated pools* (prefill/decode, `tuning.plan_pd`) are groups with a ``role``:

```
"groups": [{..., "role": "prefill"}, {..., "role": "decode"}, ...]
```

a model's prefill and decode groups form its pool pair; both carry the share of the model's
load the pair serves. A plan without them is written exactly as before.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, model_validator

from common.errors import BouteError
from common.textfile import read_utf8
from profiling import Scenario

from ._goal import Goal, SearchError

__all__ = ["LENGTH_CLASSES", "MAX_GROUP_GPUS", "Group", "LengthRouting", "Plan", "PlanError",
           "Predicted", "Routing", "WorkloadRouting"]

LENGTH_CLASSES = ("short", "long")
"""Request classes by length: prompt + max_tokens at most the threshold, and above it."""


def length_spans(threshold_tokens: int) -> dict[str, tuple[int, int]]:
    """Each class's ``(lo, hi]`` range of prompt + max_tokens, by class name."""
    return {LENGTH_CLASSES[0]: (0, threshold_tokens),
            LENGTH_CLASSES[1]: (threshold_tokens, 2**62)}

MAX_GROUP_GPUS = 4096
"""GPUs one replica group may use: a group is one GPU type, and a scenario offers at most
4096 GPUs of a type (`profiling.GpuOffer.count`)."""


class PlanError(BouteError, ValueError):
    """A plan file or value is malformed."""


@dataclass(frozen=True)
class WorkloadRouting:
    """One workload's routing over a ladder of models (smallest first)."""

    name: str
    shares: tuple[float, ...]
    thresholds: tuple[float, ...]
    rate_rps: float = math.nan
    quality: float = math.nan

    @property
    def tails(self) -> tuple[float, ...]:
        """``S_k``, k = 2..K: the share sent to model k or a larger one."""
        out, acc = [], 0.0
        for v in reversed(self.shares[1:]):
            acc += v
            out.append(acc)
        return tuple(reversed(out))


@dataclass(frozen=True)
class LengthRouting:
    """Length classes of a plan: the threshold and each workload's predicted class shares."""

    threshold_tokens: int
    shares: dict[str, tuple[float, float]] = field(default_factory=dict)

    def class_of(self, tokens: int) -> str:
        """``short`` when prompt + max_tokens ``tokens`` <= the threshold, else ``long``."""
        return LENGTH_CLASSES[0] if tokens <= self.threshold_tokens else LENGTH_CLASSES[1]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object."""
        return {"threshold_tokens": self.threshold_tokens,
                "shares": {w: dict(zip(LENGTH_CLASSES, v, strict=True))
                           for w, v in self.shares.items()}}


@dataclass(frozen=True)
class Routing:
    """Which share of queries goes to the strong model, and the router threshold doing it.

    A ladder (``models`` and ``workloads`` set) routes each workload by its own shares.
    """

    strong_share: float
    threshold: float = math.nan
    router: str = "builtin"
    models: tuple[str, ...] = ()
    workloads: tuple[WorkloadRouting, ...] = ()
    length_classes: LengthRouting | None = None

    @property
    def is_ladder(self) -> bool:
        """Per-workload shares over a ladder (else the pair's strong share)."""
        return bool(self.workloads)

    def per_workload(self, names: tuple[str, ...]) -> tuple[WorkloadRouting, ...]:
        """Each workload's routing: a ladder's own; a pair's as the ladder's with K = 2.

        A pair routes every workload of `names` alike: shares ``(1 - s, s)`` and its one
        threshold, so callers read one shape whatever the plan's.
        """
        if self.is_ladder:
            return self.workloads
        s = self.strong_share
        return tuple(WorkloadRouting(n, (1.0 - s, s), (self.threshold,)) for n in names)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (the pair's three keys, and a ladder's two more)."""
        out: dict[str, Any] = {"strong_share": self.strong_share, "threshold": self.threshold,
                               "router": self.router}
        if self.is_ladder:
            out["models"] = list(self.models)
            out["workloads"] = [
                {"name": w.name, "rate_rps": w.rate_rps,
                 "shares": dict(zip(self.models, w.shares, strict=True)),
                 "thresholds": list(w.thresholds), "quality": w.quality}
                for w in self.workloads]
        if self.length_classes is not None:
            out["length_classes"] = self.length_classes.to_dict()
        return out


@dataclass(frozen=True)
class Group:
    """A replica group: `replicas` identical replicas of one (model, GPU, TP, PP) config.

    `role` is None for a co-located group (prefill and decode on each replica); ``prefill`` /
    ``decode`` for one pool of its model's disaggregated pool pair (`tuning.plan_pd`): the
    pair's two groups carry the same `share`, the share of the model's load they serve.
    """

    model: str
    gpu: str
    tp: int
    pp: int
    replicas: int
    share: float = 0.0
    length_class: str | None = None
    role: Literal["prefill", "decode"] | None = None

    @property
    def num_gpus(self) -> int:
        """GPUs the group occupies."""
        return self.tp * self.pp * self.replicas

    @property
    def name(self) -> str:
        """A stable, Serve-safe name, e.g. ``llama-3.1-70b-H100-tp4pp1`` (``-short`` appended)."""
        cls = "" if self.length_class is None else f"-{self.length_class}"
        role = "" if self.role is None else f"-{self.role}"
        return f"{self.model}-{self.gpu}-tp{self.tp}pp{self.pp}{cls}{role}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (``length_class`` and ``role`` only when set)."""
        out = asdict(self)
        for key in ("length_class", "role"):
            if out[key] is None:
                del out[key]
        return out


@dataclass(frozen=True)
class Predicted:
    """Predicted metrics of a plan (see `tuning.evaluate`).

    Attributes:
        p95_s: the P95 latency every replica group meets (the planning objective).
        system_p95_s: P95 of all requests (mixture over groups); <= p95_s.
        mean_s: mean end-to-end latency of all requests.
        quality: task quality at the plan's strong share.
        cost_per_hour: $/hour of all replicas.
        throughput_rps: request rate served (the scenario's rate when feasible).
        capacity_rps: highest total rate (same routing) at which every group keeps P95 <=
            the scenario ceiling, or the target P95 when one was given.
        ttft_p95_s, tpot_p95_s: the highest TTFT / TPOT P95 of any group at its per-replica
            rate (perf DB); set only when the plan was made for a TTFT or TPOT target.
        goodput: the share of requests meeting every target of the goal (end-to-end latency
            <= ``p95_s``, TTFT <= ``ttft_p95_s``, TPOT <= ``tpot_p95_s``, those set), over the
            headroom check's fresh traces, each group weighted by its load; set only with a
            TTFT or TPOT target and a check.

    """

    p95_s: float
    system_p95_s: float
    mean_s: float
    quality: float
    cost_per_hour: float
    throughput_rps: float
    capacity_rps: float
    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None
    goodput: float | None = None

    def to_dict(self) -> dict[str, float]:
        """The JSON object; the optional fields only when set."""
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in _OPTIONAL_PREDICTED}


_OPTIONAL_PREDICTED = ("ttft_p95_s", "tpot_p95_s", "goodput")


@dataclass(frozen=True)
class Plan:
    """Routing + replica groups (+ predicted metrics, the scenario and goal it was made for).

    `goal` is written as ``search.goal``; `extra` holds the file's other top-level keys.
    """

    routing: Routing
    groups: tuple[Group, ...]
    predicted: Predicted | None = None
    scenario: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    goal: Goal | None = None

    def with_predicted(self, predicted: Predicted, groups: tuple[Group, ...] | None = None
                       ) -> Plan:
        """A copy with predicted metrics (and optionally re-balanced group shares)."""
        return replace(self, predicted=predicted, groups=groups or self.groups)

    def with_extra(self, extra: dict[str, Any]) -> Plan:
        """A copy with `extra` merged into its extra top-level keys."""
        return replace(self, extra={**self.extra, **extra})

    def catalog_gpu(self, offer: str) -> str:
        """The catalog GPU an offer of this plan's scenario rents.

        ``H100`` for an ``H100-spot: {gpu: H100}`` offer; the offer's own name otherwise.
        """
        spec = self.scenario.get("spec") if isinstance(self.scenario, dict) else None
        gpus = spec.get("gpus") if isinstance(spec, dict) else None
        entry = gpus.get(offer) if isinstance(gpus, dict) else None
        base = entry.get("gpu") if isinstance(entry, dict) else None
        return base if isinstance(base, str) and base else offer

    def _goal_workloads(self) -> tuple[str, ...]:
        """The names `goal`'s ``qualities`` go by (`Problem.workloads`: ``default`` for one)."""
        named = (self.scenario.get("spec") or {}).get("workloads") or [{"name": "default"}]
        return (tuple(w.name for w in self.routing.workloads) if self.routing.is_ladder
                else (str(named[0]["name"]),))                     # a pair: one workload

    def gpus_by_type(self) -> dict[str, int]:
        """GPUs used per GPU type."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.gpu] = out.get(g.gpu, 0) + g.num_gpus
        return out

    def scaled(self, factor: float) -> Plan:
        """The same plan shrunk (or grown), for a dry run on a smaller cluster.

        Every group keeps its config and gets ``max(1, round(replicas * factor))`` replicas;
        the scenario's rate is scaled by the ratio of GPUs,
        ``rate * gpus_after / gpus_before``, so each GPU sees about the load it was planned
        for. Predictions are dropped (re-evaluate at the new rate).

        Raises:
            PlanError: `factor` is not positive.

        """
        if not (factor > 0 and math.isfinite(factor)):
            raise PlanError(f"scale factor {factor} must be a positive number")
        groups = tuple(replace(g, replicas=max(1, round(g.replicas * factor)))
                       for g in self.groups)
        before = sum(g.num_gpus for g in self.groups)
        after = sum(g.num_gpus for g in groups)
        scenario = dict(self.scenario)
        if "rate_rps" in scenario:
            scenario["rate_rps"] = float(scenario["rate_rps"]) * after / before
        return replace(self, groups=groups, predicted=None, scenario=scenario)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object (NaN/inf become null)."""
        out: dict[str, Any] = {
            "routing": self.routing.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "predicted": self.predicted.to_dict() if self.predicted else None,
            "scenario": self.scenario,
            **self.extra,
        }
        if self.goal is not None:              # as search.goal, where `from_dict` finds it
            out["search"] = {**(out.get("search") or {}), "goal": self.goal.to_dict(
                self._goal_workloads())}
        return _json_safe(out)  # type: ignore[no-any-return]

    def to_json(self, indent: int | None = 2) -> str:
        """Serialize (see `to_dict`)."""
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        """Write the JSON file (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        """Parse and check a plan object (`_PlanFile`); other keys go to `extra` (and `goal`).

        Raises:
            PlanError: in one line, the first missing or ill-typed field, its value and rule.

        """
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object with 'routing' and 'groups'")
        try:
            f = _PlanFile.model_validate(data)
        except ValidationError as exc:
            raise PlanError(_message(source, exc)) from None
        r, lc, models = f.routing, f.routing.length_classes, tuple(f.routing.models or ())
        routing = Routing(r.strong_share, r.threshold, r.router, models, tuple(
            WorkloadRouting(w.name, tuple(w.shares[m] for m in models),
                            tuple(w.thresholds or [math.nan] * (len(models) - 1)),
                            w.rate_rps, w.quality) for w in r.workloads or ()),
            None if lc is None else LengthRouting(lc.threshold_tokens, {
                w: (v.short, v.long) for w, v in lc.shares.items()}))
        extra = {k: v for k, v in data.items() if k not in _PlanFile.model_fields}
        try:                  # leniently (null: inf), as `boute evaluate` recomputes it
            values: dict[str, Any] = {
                k: (None if k in _OPTIONAL_PREDICTED else math.inf)
                if (v := f.predicted.get(k)) is None else float(v)
                for k in Predicted.__dataclass_fields__}
            predicted = Predicted(**values)
        except (AttributeError, TypeError, ValueError):   # not an object, a bad number
            predicted = None
        plan = cls(routing, tuple(Group(**g.model_dump()) for g in f.groups), predicted,
                   data.get("scenario") or {}, extra)
        search = extra.get("search")
        if not isinstance(search, dict) or search.get("goal") is None:
            return plan
        try:
            goal = Goal.from_dict(search["goal"], plan._goal_workloads(), "search.goal")
        except SearchError as exc:
            raise PlanError(f"{source}: {exc}; fix it, or drop search.goal") from None
        extra["search"] = {k: v for k, v in search.items() if k != "goal"}
        return replace(plan, goal=goal)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan JSON file.

        Raises:
            PlanError: missing file, invalid JSON, or invalid fields.

        """
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {str(path)!r} does not exist; write one with "
                            f"`boute plan --out {path}`")
        text = read_utf8(path, f"plan file {str(path)!r}", PlanError,
                         "write it with `boute plan --out FILE`")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan file {str(path)!r} is not valid JSON ({exc.msg} at line "
                            f"{exc.lineno}); write it with `boute plan --out FILE`") from None
        except RecursionError:
            raise PlanError(f"plan file {str(path)!r}: JSON nested too deeply") from None
        return cls.from_dict(data, f"plan {str(path)!r}")


# -- the file's schema, checked once in `Plan.from_dict` ---------------------------------------
class _Invalid(ValueError):
    """A rule across fields, broken: the message goes on from the object's path."""


def _rule(rule: str, default: Any = ..., **constraints: Any) -> Any:
    """A field whose description is its `rule`: what its value must be (its error says so)."""
    return Field(default, description=rule, **constraints)


class _Schema(BaseModel):   # strict: no bool for a number, no "4" for an integer
    model_config = ConfigDict(frozen=True, strict=True, allow_inf_nan=False, extra="ignore")


# a finite number, or null read as NaN (unknown; a router threshold calibrated live)
_OrNaN = Annotated[float, WrapValidator(lambda v, finite: math.nan if v is None else finite(v))]
_COUNT = f"an integer in [1, {MAX_GROUP_GPUS}]"


class _Workload(_Schema):
    name: str = _rule("the workload's name (non-empty, unique)", min_length=1)
    shares: dict[str, float] = _rule("an object: a share per model of the ladder")
    thresholds: list[_OrNaN] | None = _rule("a list of router thresholds or nulls", None)
    rate_rps: _OrNaN = _rule("a finite number of requests/s, or null", math.nan)
    quality: _OrNaN = _rule("a finite number (its quality), or null", math.nan)


class _ClassShares(_Schema):
    model_config = ConfigDict(extra="forbid")
    short: float = _rule("a finite number (the short requests' share)")
    long: float = _rule("a finite number (the long requests' share)")


class _LengthClasses(_Schema):
    threshold_tokens: int = _rule("a positive whole number of tokens (prompt + max_tokens)", ge=1)
    shares: dict[str, _ClassShares] = _rule("an object: each workload's {short, long} shares", {})


class _Routing(_Schema):
    strong_share: float = _rule("a number in [0, 1] (the strong model's share)", ge=0, le=1)
    threshold: _OrNaN = _rule("a finite number, or null: calibrated live", math.nan)
    router: str = _rule("a router name (builtin, random, or a RouteLLM router such as mf)",
                        "builtin", min_length=1)
    models: list[str] | None = _rule("a list of 1 or more distinct model names, smallest first",
                                     None, min_length=1)
    workloads: list[_Workload] | None = _rule("a non-empty list of {name, shares, thresholds}",
                                              None, min_length=1)
    length_classes: _LengthClasses | None = _rule("an object with threshold_tokens", None)


class _Group(_Schema):
    model: str = _rule("a catalog name (the group's model)", min_length=1)
    gpu: str = _rule("a catalog name (the group's GPU type)", min_length=1)
    tp: int = _rule(f"{_COUNT} (tensor parallelism)", 1, ge=1, le=MAX_GROUP_GPUS)
    pp: int = _rule(f"{_COUNT} (pipeline stages)", 1, ge=1, le=MAX_GROUP_GPUS)
    replicas: int = _rule(f"{_COUNT} (replicas)", ge=1, le=MAX_GROUP_GPUS)
    share: float = _rule("a number in [0, 1] (of its model's load)", 0.0, ge=0, le=1)
    length_class: Literal["short", "long"] | None = _rule("short or long (or absent)", None)
    role: Literal["prefill", "decode"] | None = _rule(
        "prefill or decode (a disaggregated pool), or absent (co-located)", None)


class _ScenarioBlock(_Schema):
    model_config = ConfigDict(extra="allow")
    name: str = _rule("a string (the scenario's name)", "")
    task: str = _rule("a string (the quality task)", "")
    rate_rps: float | None = _rule("a positive number of requests/s (or null)", None, gt=0)
    budget_per_hour: float | None = _rule("a positive number of $/hour (or null)", None, gt=0)
    models: Any = _rule("{weak, strong} model names, or a ladder's list", None)
    gpus: dict[str, Any] | None = _rule("an object (the GPU offers)", None)
    spec: Scenario | None = _rule("an object (the whole scenario)", None)


class _PlanFile(_Schema):
    model_config = ConfigDict(extra="allow")
    routing: _Routing = _rule("an object with routing.strong_share (the strong model's share)")
    groups: list[_Group] = _rule("a non-empty list of {model, gpu, tp, pp, replicas}", min_length=1)
    predicted: Any = _rule("predicted metrics (read leniently)", None)
    scenario: _ScenarioBlock | None = _rule("an object (the scenario the plan was made for)", None)

    @model_validator(mode="after")
    def _across_fields(self) -> _PlanFile:
        models, workloads = self.routing.models, self.routing.workloads
        if {"models", "workloads"} & self.routing.model_fields_set:   # a ladder
            if models is None or not all(models) or len(set(models)) != len(models):
                raise _Invalid(f"routing.models={models!r} must list 1 or more distinct model "
                               "names, smallest first")
            if workloads is None:
                raise _Invalid("routing.workloads=None must be a non-empty list of {name, "
                               "shares, thresholds}")
            for i, w in enumerate(workloads):
                at, total = f"routing.workloads[{i}]", sum(w.shares.values())
                if set(w.shares) != set(models):
                    raise _Invalid(f"{at}.shares={w.shares!r} must give one share per model "
                                   f"of routing.models {models}")
                if min(w.shares.values()) < 0 or abs(total - 1.0) > 1e-6:
                    raise _Invalid(f"{at}.shares={w.shares} must be >= 0 and sum to 1 (they "
                                   f"sum to {total:.6g})")
                if w.thresholds is not None and len(w.thresholds) != len(models) - 1:
                    raise _Invalid(f"{at}.thresholds={w.thresholds!r} must list {len(models) - 1}"
                                   " router thresholds (null: calibrated live)")
            if len({w.name for w in workloads}) != len(workloads):
                raise _Invalid(f"routing.workloads names {[w.name for w in workloads]} repeat")
        m = self.scenario.models if self.scenario else None
        names = [m.get("weak"), m.get("strong")] if isinstance(m, dict) else m   # or a ladder's
        if m is not None and not (isinstance(names, list) and names and all(
                isinstance(x, str) for x in names)):
            raise _Invalid(f"scenario.models={m!r} must be an object with the weak and strong "
                           'model names, e.g. {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}'
                           ", or a list of a ladder's models")
        classes = self.routing.length_classes is not None
        for i, g in enumerate(self.groups):
            if g.tp * g.pp * g.replicas > MAX_GROUP_GPUS:
                raise _Invalid(f"groups[{i}]: tp x pp x replicas = {g.tp * g.pp * g.replicas} "
                               f"GPUs, more than the {MAX_GROUP_GPUS} of one GPU type a "
                               "scenario can offer")
            if (g.length_class is None) == classes:
                raise _Invalid(f"groups[{i}].length_class={g.length_class!r}: " + (
                    "every group of a plan with routing.length_classes names its class "
                    "(short or long)" if classes else "the plan has no routing.length_classes;"
                    " drop the field or add routing.length_classes.threshold_tokens"))
        return self


_TYPES = {"float_type": "a finite number", "finite_number": "a finite number",
          "model_type": "an object", "dict_type": "an object", "string_type": "a string"}


def _message(source: str, exc: ValidationError) -> str:
    """The first error in one line: ``{source}: {path}={value} must be {rule}``."""
    err = exc.errors(include_url=False)[0]
    path = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in err["loc"]).lstrip(".")
    kind, cause = err["type"], err.get("ctx", {}).get("error")
    if isinstance(cause, _Invalid):
        return f"{source}: {path}{cause}"
    shown = "" if kind == "missing" or isinstance(err["input"], dict) else f"={err['input']!r}"
    if path.startswith("scenario.spec") and (path, kind) != ("scenario.spec", "model_type"):
        return (f"{source}: {path}{shown}: {cause or err['msg']}; re-plan with `boute plan` or "
                "drop scenario.spec")                     # `profiling.Scenario`'s own rule
    model, info = _PlanFile, None
    for x in err["loc"]:             # the field at the path (None: a list item, a map value)
        info = None if isinstance(x, int) else getattr(model, "model_fields", {}).get(x)
        model = model if info is None else _model_in(info.annotation)
    rule = info.description if info is not None else _TYPES.get(kind, f"valid ({err['msg']})")
    return (f"{source}: {path} is missing; it must be {rule}" if kind == "missing" else
            f"{source}: {path}{shown} must be {rule}")


def _model_in(annotation: Any) -> Any:
    """The pydantic model in a field's type (``list[_Group] | None`` -> `_Group`), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, get_args(annotation))), None)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
