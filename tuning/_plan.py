"""Plans: immutable values with a JSON round trip in the public contract's format.

```
{"routing": {"strong_share": s, "threshold": t, "router": name},
 "groups": [{"model", "gpu", "tp", "pp", "replicas", "share"}, ...],
 "predicted": {"p95_s", "system_p95_s", "mean_s", "quality", "cost_per_hour",
               "throughput_rps", "capacity_rps"},
 "scenario": {"name", "rate_rps", "budget_per_hour", "task", "models", "gpus"}}
```

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
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.errors import BouteError
from common.textfile import read_utf8

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
    """A replica group: `replicas` identical replicas of one (model, GPU, TP, PP) config."""

    model: str
    gpu: str
    tp: int
    pp: int
    replicas: int
    share: float = 0.0
    length_class: str | None = None

    @property
    def num_gpus(self) -> int:
        """GPUs the group occupies."""
        return self.tp * self.pp * self.replicas

    @property
    def name(self) -> str:
        """A stable, Serve-safe name, e.g. ``llama-3.1-70b-H100-tp4pp1`` (``-short`` appended)."""
        cls = "" if self.length_class is None else f"-{self.length_class}"
        return f"{self.model}-{self.gpu}-tp{self.tp}pp{self.pp}{cls}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (``length_class`` only when set)."""
        out = asdict(self)
        if self.length_class is None:
            del out["length_class"]
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

    """

    p95_s: float
    system_p95_s: float
    mean_s: float
    quality: float
    cost_per_hour: float
    throughput_rps: float
    capacity_rps: float


@dataclass(frozen=True)
class Plan:
    """Routing + replica groups (+ predicted metrics and the scenario it was made for)."""

    routing: Routing
    groups: tuple[Group, ...]
    predicted: Predicted | None = None
    scenario: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

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
            "predicted": asdict(self.predicted) if self.predicted else None,
            "scenario": self.scenario,
        }
        out.update(self.extra)
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
        """Parse and validate a plan object.

        Raises:
            PlanError: a missing or ill-typed field (named in the message).

        """
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object with 'routing' and 'groups'")
        routing = data.get("routing")
        if not isinstance(routing, dict) or "strong_share" not in routing:
            raise PlanError(f"{source}: routing.strong_share is required (share of queries "
                            "sent to the strong model, 0..1)")
        share = _number(routing["strong_share"], f"{source}: routing.strong_share")
        if not 0.0 <= share <= 1.0:
            raise PlanError(f"{source}: routing.strong_share={share} must lie in [0, 1]")
        threshold = routing.get("threshold")
        router = routing.get("router", "builtin")
        if not isinstance(router, str) or not router:
            raise PlanError(f"{source}: routing.router={router!r} must be a router name "
                            "(builtin, random, or a RouteLLM router such as mf)")
        rt = Routing(share, math.nan if threshold is None else
                     _number(threshold, f"{source}: routing.threshold"), router,
                     *_ladder_routing(routing, source), _length_routing(routing, source))
        raw_groups = data.get("groups")
        if not isinstance(raw_groups, list) or not raw_groups:
            raise PlanError(f"{source}: groups must be a non-empty list of "
                            "{model, gpu, tp, pp, replicas, share}")
        groups = []
        for i, g in enumerate(raw_groups):
            where = f"{source}: groups[{i}]"
            if not isinstance(g, dict):
                raise PlanError(f"{where}: expected an object")
            for key in ("model", "gpu"):
                if not isinstance(g.get(key), str) or not g[key]:
                    raise PlanError(f"{where}.{key}={g.get(key)!r} must be a catalog name")
            ints = {}
            for key, default in (("tp", 1), ("pp", 1), ("replicas", None)):
                value = g.get(key, default)
                if (not isinstance(value, int) or isinstance(value, bool) or value < 1
                        or value > MAX_GROUP_GPUS):
                    raise PlanError(f"{where}.{key}={value!r} must be an integer in "
                                    f"[1, {MAX_GROUP_GPUS}]")
                ints[key] = value
            gpus = ints["tp"] * ints["pp"] * ints["replicas"]
            if gpus > MAX_GROUP_GPUS:
                raise PlanError(f"{where}: tp x pp x replicas = {gpus} GPUs, more than the "
                                f"{MAX_GROUP_GPUS} of one GPU type a scenario can offer")
            gshare = _number(g.get("share", 0.0), f"{where}.share")
            if not 0.0 <= gshare <= 1.0:
                raise PlanError(f"{where}.share={gshare} must lie in [0, 1]")
            cls_name = g.get("length_class")
            if cls_name is not None and cls_name not in LENGTH_CLASSES:
                raise PlanError(f"{where}.length_class={cls_name!r} must be one of "
                                f"{list(LENGTH_CLASSES)} (or absent)")
            if (cls_name is None) != (rt.length_classes is None):
                raise PlanError(f"{where}.length_class={cls_name!r}: "
                                + ("every group of a plan with routing.length_classes names "
                                   "its class (short or long)" if cls_name is None else
                                   "the plan has no routing.length_classes; drop the field "
                                   "or add routing.length_classes.threshold_tokens"))
            groups.append(Group(g["model"], g["gpu"], ints["tp"], ints["pp"],
                                ints["replicas"], gshare, cls_name))
        pred = data.get("predicted")
        predicted = None
        if isinstance(pred, dict):
            try:
                predicted = Predicted(**{k: math.inf if pred.get(k) is None else float(pred[k])
                                         for k in Predicted.__dataclass_fields__})
            except (TypeError, ValueError):
                predicted = None
        known = {"routing", "groups", "predicted", "scenario"}
        scenario = _scenario_block(data.get("scenario"), source)
        return cls(rt, tuple(groups), predicted, scenario or {},
                   {k: v for k, v in data.items() if k not in known})

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


def _ladder_routing(routing: dict[str, Any], source: str
                    ) -> tuple[tuple[str, ...], tuple[WorkloadRouting, ...]]:
    """``routing.models`` and ``routing.workloads`` of a ladder plan (empty for a pair).

    Raises:
        PlanError: naming the field, the value and the rule.

    """
    if "models" not in routing and "workloads" not in routing:
        return (), ()
    where = f"{source}: routing"
    models = routing.get("models")
    if (not isinstance(models, list) or len(models) < 1
            or not all(isinstance(m, str) and m for m in models)
            or len(set(models)) != len(models)):
        raise PlanError(f"{where}.models={models!r} must list 1 or more distinct model names, "
                        "smallest first")
    raw = routing.get("workloads")
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{where}.workloads={raw!r} must be a non-empty list of "
                        "{name, shares, thresholds}")
    out = []
    for i, w in enumerate(raw):
        at = f"{where}.workloads[{i}]"
        if not isinstance(w, dict) or not isinstance(w.get("name"), str) or not w["name"]:
            raise PlanError(f"{at}: expected an object with a name")
        shares = w.get("shares")
        if not isinstance(shares, dict) or set(shares) != set(models):
            raise PlanError(f"{at}.shares={shares!r} must give one share per model of "
                            f"routing.models {models}")
        vals = tuple(_number(shares[m], f"{at}.shares.{m}") for m in models)
        if any(v < 0 for v in vals) or abs(sum(vals) - 1.0) > 1e-6:
            raise PlanError(f"{at}.shares={shares} must be >= 0 and sum to 1 (they sum to "
                            f"{sum(vals):.6g})")
        th = w.get("thresholds", [None] * (len(models) - 1))
        if not isinstance(th, list) or len(th) != len(models) - 1:
            raise PlanError(f"{at}.thresholds={th!r} must list {len(models) - 1} router "
                            "thresholds (null: calibrated live)")
        thresholds = tuple(math.nan if t is None else _number(t, f"{at}.thresholds")
                           for t in th)
        rate = w.get("rate_rps")
        quality = w.get("quality")
        out.append(WorkloadRouting(
            w["name"], vals, thresholds,
            math.nan if rate is None else _number(rate, f"{at}.rate_rps"),
            math.nan if quality is None else _number(quality, f"{at}.quality")))
    names = [w.name for w in out]
    if len(set(names)) != len(names):
        raise PlanError(f"{where}.workloads names {names} repeat")
    return tuple(models), tuple(out)


def _length_routing(routing: dict[str, Any], source: str) -> LengthRouting | None:
    """``routing.length_classes`` (None when absent).

    Raises:
        PlanError: naming the field, the value and the rule.

    """
    block = routing.get("length_classes")
    if block is None:
        return None
    where = f"{source}: routing.length_classes"
    if not isinstance(block, dict):
        raise PlanError(f"{where}={block!r} must be an object with threshold_tokens")
    n = block.get("threshold_tokens")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PlanError(f"{where}.threshold_tokens={n!r} must be a positive whole number of "
                        "tokens (prompt + max_tokens)")
    raw = block.get("shares", {})
    if not isinstance(raw, dict):
        raise PlanError(f"{where}.shares={raw!r} must map each workload to its class shares")
    shares = {}
    for name, v in raw.items():
        if not isinstance(v, dict) or set(v) != set(LENGTH_CLASSES):
            raise PlanError(f"{where}.shares.{name}={v!r} must give the share of each class "
                            f"{list(LENGTH_CLASSES)}")
        pair = tuple(_number(v[c], f"{where}.shares.{name}.{c}") for c in LENGTH_CLASSES)
        shares[str(name)] = (pair[0], pair[1])
    return LengthRouting(n, shares)


def _scenario_block(block: Any, source: str) -> dict[str, Any]:
    """Check the ``scenario`` block's known keys (others are kept as they are).

    Raises:
        PlanError: naming the key, the value and the rule.

    """
    if block is None:
        return {}
    where = f"{source}: scenario"
    if not isinstance(block, dict):
        raise PlanError(f"{where}={block!r} must be an object (name, rate_rps, budget_per_hour, "
                        "task, models, gpus)")
    for key in ("name", "task"):
        if key in block and not isinstance(block[key], str):
            raise PlanError(f"{where}.{key}={block[key]!r} must be a string")
    for key, unit in (("rate_rps", "requests/s"), ("budget_per_hour", "$/hour")):
        value = block.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not (math.isfinite(value) and value > 0)):
            raise PlanError(f"{where}.{key}={value!r} must be a positive number of {unit} "
                            "(or null); fix the plan file")
    models = block.get("models")
    ladder = isinstance(models, list) and len(models) >= 1 and all(
        isinstance(m, str) for m in models)
    if models is not None and not ladder and (not isinstance(models, dict) or not all(
            isinstance(models.get(k), str) for k in ("weak", "strong"))):
        raise PlanError(f"{where}.models={models!r} must be an object with the weak and "
                        'strong model names, e.g. {"weak": "llama-3.1-8b", "strong": '
                        '"llama-3.1-70b"}, or a list of a ladder\'s models')
    for key in ("gpus", "spec"):
        if block.get(key) is not None and not isinstance(block[key], dict):
            raise PlanError(f"{where}.{key}={block[key]!r} must be an object")
    if isinstance(block.get("spec"), dict):
        from pydantic import ValidationError

        from profiling import Scenario

        try:
            Scenario.model_validate(block["spec"])
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = "".join(f".{x}" for x in err["loc"])
            raise PlanError(f"{where}.spec{loc}: {err['msg']}; re-plan with `boute plan` or "
                            "drop scenario.spec") from None
    return block


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"{where}={value!r} must be a finite number")
    return float(value)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
