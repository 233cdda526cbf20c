"""Served calibrations: the stage-1 model's free parameters fitted on what the system served.

`boute calibrate` (fitting: `profiling.measure.fit_served`) writes one JSON file; this module
reads it and applies it, so the perf DB build (`profiling._perfdb`) and the planners use the
corrected model. It extends the hardware-profile route (`profiling._hardware.Calibration`):
a hardware profile gives a GPU type's `Efficiency` from kernel measurements, a served
calibration multiplies a GPU type's base efficiency by a fitted scale and replaces the engine's
overheads per replica config.

File (JSON, ``format`` = `SERVED_FORMAT`)::

    {"format": "boute-served-calibration/1",
     "window": {"start_unix_s", "end_unix_s", "requests"},    # the log window fitted on
     "created_unix_s": float,
     "gpus": {"H100": {"scale": s, "scale_p05": .., "scale_p95": ..,
                       "base_efficiency": {Efficiency fields}}},
     "groups": [{"model", "gpu", "tp", "pp", "replicas", "requests", "rate_rps",
                 "step_overhead_s", "frontend_latency_s", "step_overhead_per_seq_s",
                 "spread": {"step_overhead_s": [p05, p95], "frontend_latency_s": [p05, p95]},
                 "fidelity": {...}}],
     "fit": {...}}                                            # solver facts (informative)

Applying it (`ServedCalibration.efficiency`, `.engine_for`):

* GPU type g's efficiency = ``base_efficiency(g)`` with ``compute``, ``memory`` and
  ``attention_compute`` multiplied by ``scale(g)`` (all three: a served window sees whole
  steps, not kernels, so it cannot tell them apart; link and fixed latencies stay);
* config (model, g, tp, pp)'s engine = the engine with ``step_overhead_s``,
  ``step_overhead_per_seq_s`` and ``frontend_latency_s`` of that group's fit; a config of g
  that was not served takes the median of g's fitted groups (overheads are the host's and the
  serving stack's, shared by a GPU type's nodes); a GPU type not served keeps the engine's.

The calibration's identity is ``sha256`` (16 hex digits over the canonical JSON) and its
``label`` ``served:<start>/<seconds>s`` (UTC); a perf DB built with it records both
(``efficiency_source``), and `is_stale` names a calibration older than `STALE_AFTER_S`.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.errors import ProfilerError

from ._replica import Efficiency, EngineConfig

__all__ = ["SERVED_FORMAT", "STALE_AFTER_S", "ServedCalibration", "ServedGroupFit",
           "load_served_calibration", "model_source", "model_source_line", "scale_efficiency"]

SERVED_FORMAT = "boute-served-calibration/1"
STALE_AFTER_S = 7 * 24 * 3600.0
"""A served calibration older than this (a week: the log's default retention) is named stale;
traffic, software versions and hosts change on that scale."""

_SCALED = ("compute", "memory", "attention_compute")


def max_scale(base: Efficiency) -> float:
    """The largest scale keeping every scaled factor <= 1 (`Efficiency`'s rule)."""
    return 1.0 / max(float(getattr(base, name)) for name in _SCALED)


def scale_efficiency(base: Efficiency, scale: float) -> Efficiency:
    """`base` with compute, memory and attention efficiency times `scale` (each capped at 1).

    Raises:
        ValueError: `scale` is not a positive finite number.

    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"efficiency scale={scale!r} must be a positive finite number")
    return replace(base, **{n: min(1.0, getattr(base, n) * scale) for n in _SCALED})


@dataclass(frozen=True)
class ServedGroupFit:
    """One replica group's fitted engine parameters (seconds) and what they were fitted on."""

    model: str
    gpu: str
    tp: int
    pp: int
    replicas: int
    requests: int
    rate_rps: float
    step_overhead_s: float
    frontend_latency_s: float
    step_overhead_per_seq_s: float
    spread: dict[str, list[float]] = field(default_factory=dict)
    """Parameter -> [p05, p95] over the bootstrap windows."""
    fidelity: dict[str, Any] = field(default_factory=dict)
    """Observed versus predicted, before and after (`profiling.measure.fit_served`)."""

    @property
    def key(self) -> tuple[str, str, int, int]:
        """(model, gpu, tp, pp)."""
        return (self.model, self.gpu, self.tp, self.pp)

    def apply(self, engine: EngineConfig) -> EngineConfig:
        """`engine` with this group's overheads and front-end latency."""
        return replace(engine, step_overhead_s=self.step_overhead_s,
                       step_overhead_per_seq_s=self.step_overhead_per_seq_s,
                       frontend_latency_s=self.frontend_latency_s)


@dataclass(frozen=True)
class ServedCalibration:
    """A served calibration (module docstring); `load_served_calibration` reads one."""

    window_start_unix_s: float
    window_end_unix_s: float
    window_requests: int
    created_unix_s: float
    gpus: dict[str, dict[str, Any]]
    """GPU type -> ``scale``, ``scale_p05``, ``scale_p95``, ``base_efficiency``."""
    groups: tuple[ServedGroupFit, ...]
    fit: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (module docstring); ``path`` is not part of it."""
        return {"format": SERVED_FORMAT,
                "window": {"start_unix_s": self.window_start_unix_s,
                           "end_unix_s": self.window_end_unix_s,
                           "requests": self.window_requests},
                "created_unix_s": self.created_unix_s,
                "gpus": self.gpus,
                "groups": [asdict(g) for g in self.groups],
                "fit": self.fit}

    @property
    def sha256(self) -> str:
        """SHA-256 (16 hex digits) of the canonical JSON: the calibration's identity."""
        text = json.dumps(self.to_json(), sort_keys=True, default=_finite)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """``served:<window start, UTC>/<window seconds>s``."""
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.window_start_unix_s))
        return f"served:{start}/{self.window_end_unix_s - self.window_start_unix_s:.0f}s"

    def age_s(self, now_s: float | None = None) -> float:
        """Seconds since the window ended."""
        return (time.time() if now_s is None else now_s) - self.window_end_unix_s

    def is_stale(self, now_s: float | None = None, max_age_s: float = STALE_AFTER_S) -> bool:
        """Whether the window ended more than `max_age_s` ago."""
        return self.age_s(now_s) > max_age_s

    def efficiency(self, gpu: str, default: Efficiency) -> Efficiency:
        """GPU type `gpu`'s efficiency: its fitted scale times its base; else `default`."""
        row = self.gpus.get(gpu)
        if row is None:
            return default
        return scale_efficiency(Efficiency(**row["base_efficiency"]), float(row["scale"]))

    def engine_for(self, model: str, gpu: str, tp: int, pp: int,
                   engine: EngineConfig) -> EngineConfig:
        """The engine of config (model, gpu, tp, pp).

        Its group's fit, else the median fit of the GPU type's groups, else `engine`
        unchanged (module docstring).
        """
        for g in self.groups:
            if g.key == (model, gpu, tp, pp):
                return g.apply(engine)
        same = [g for g in self.groups if g.gpu == gpu]
        if not same:
            return engine
        return replace(
            engine,
            step_overhead_s=statistics.median(g.step_overhead_s for g in same),
            step_overhead_per_seq_s=statistics.median(g.step_overhead_per_seq_s for g in same),
            frontend_latency_s=statistics.median(g.frontend_latency_s for g in same))

    def to_meta(self) -> dict[str, Any]:
        """What a perf DB built with it records (``served_calibration``)."""
        return {"label": self.label, "sha256": self.sha256, "path": self.path,
                "window_end_unix_s": self.window_end_unix_s,
                "created_unix_s": self.created_unix_s,
                "gpus": {g: row["scale"] for g, row in sorted(self.gpus.items())}}

    def save(self, path: str | Path) -> Path:
        """Write the JSON file (parents made); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True, default=_finite)
                        + "\n")
        return path


def _finite(obj: Any) -> Any:
    """JSON fallback for numpy scalars."""
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def load_served_calibration(path: str | Path) -> ServedCalibration:
    """Read a served calibration file (module docstring).

    Raises:
        ProfilerError: missing, not JSON, another format, or a field missing or of the wrong
            type (named, with the fix).

    """
    path = Path(path)
    fix = "write it again with `boute calibrate --log DIR --out FILE`"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfilerError(f"served calibration {str(path)!r}: cannot read ({exc.strerror}); "
                            f"{fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfilerError(f"served calibration {str(path)!r}: not JSON ({exc}); {fix}"
                            ) from None
    if not isinstance(obj, dict) or obj.get("format") != SERVED_FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise ProfilerError(f"served calibration {str(path)!r}: format={got!r}, expected "
                            f"{SERVED_FORMAT!r}; {fix}")
    where = f"served calibration {str(path)!r}"
    try:
        window = obj["window"]
        gpus = obj["gpus"]
        if not isinstance(gpus, dict):
            raise TypeError("gpus must be an object")
        eff_names = {f.name for f in fields(Efficiency)}
        for gpu, row in gpus.items():
            scale = float(row["scale"])
            if not (scale > 0 and math.isfinite(scale)):
                raise ValueError(f"gpus.{gpu}.scale={scale!r} must be a positive number")
            base = row["base_efficiency"]
            if set(base) - eff_names:
                raise ValueError(f"gpus.{gpu}.base_efficiency has unknown fields "
                                 f"{sorted(set(base) - eff_names)}")
            Efficiency(**base)
        groups = []
        for i, g in enumerate(obj["groups"]):
            fit = ServedGroupFit(
                str(g["model"]), str(g["gpu"]), int(g["tp"]), int(g["pp"]), int(g["replicas"]),
                int(g["requests"]), float(g["rate_rps"]), float(g["step_overhead_s"]),
                float(g["frontend_latency_s"]), float(g["step_overhead_per_seq_s"]),
                dict(g.get("spread") or {}), dict(g.get("fidelity") or {}))
            for name in ("step_overhead_s", "frontend_latency_s", "step_overhead_per_seq_s"):
                value = getattr(fit, name)
                if not (value >= 0 and math.isfinite(value)):
                    raise ValueError(f"groups[{i}].{name}={value!r} must be >= 0 seconds")
            groups.append(fit)
        return ServedCalibration(float(window["start_unix_s"]), float(window["end_unix_s"]),
                                 int(window["requests"]), float(obj["created_unix_s"]), gpus,
                                 tuple(groups), dict(obj.get("fit") or {}), str(path))
    except KeyError as exc:
        raise ProfilerError(f"{where}: field {exc.args[0]!r} is missing; {fix}") from None
    except (TypeError, ValueError) as exc:
        raise ProfilerError(f"{where}: {exc}; {fix}") from None


def model_source(meta: dict[str, Any], now_s: float | None = None,
                 max_age_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """Where a perf DB's model came from, from its metadata (`PerfDB.meta`).

    Returns ``efficiency_source`` (GPU type -> ``spec-sheet`` / ``profile:<dir>`` /
    ``served:<window>``) and ``served_calibration``: None, or its ``label``, ``sha256``,
    ``path``, ``age_s`` (since its window ended) and ``stale`` (older than `max_age_s`).
    """
    served = meta.get("served_calibration")
    out: dict[str, Any] = {"efficiency_source": dict(meta.get("efficiency_source") or {}),
                           "served_calibration": None}
    if served:
        now = time.time() if now_s is None else now_s
        age = now - float(served.get("window_end_unix_s", now))
        out["served_calibration"] = {**served, "age_s": age, "stale": age > max_age_s,
                                     "stale_after_s": max_age_s}
    return out


def model_source_line(source: dict[str, Any]) -> str:
    """One line for people: the efficiency source per GPU type, and a stale calibration named."""
    text = "model: " + ", ".join(f"{g} {s}" for g, s in
                                 sorted(source["efficiency_source"].items()))
    served = source.get("served_calibration")
    if served:
        text += f"; served calibration {served['sha256']} ({served['label']}"
        text += f", {served['age_s'] / 3600:.1f} h old)"
        if served["stale"]:
            text += (f" is STALE (older than {served['stale_after_s'] / 86400:g} days): "
                     "recalibrate with `boute calibrate --log DIR --out FILE`")
    return text
