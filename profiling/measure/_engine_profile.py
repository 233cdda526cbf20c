"""Engine profiles: a real engine's measured TTFT, TPOT, throughput and latency per load.

The replica model's prediction of each measured point is `predict_point`.

File (JSON lines, appended and flushed as the run goes, so an interrupted run keeps the
points it finished):

* line 1 ``{"kind": "meta", ...}``: model directory and architecture, device key, engine
  arguments (``max_num_seqs``, ``max_num_batched_tokens``, ``max_model_len``), trace shape,
  command, date;
* one ``{"kind": "point", "mode": "concurrency" | "rate", "level": c | rate_rps,
  "requests": {"arrival_s": [...], "input_tokens": [...], "output_tokens": [...],
  "ttft_s": [...], "latency_s": [...]}, "summary": {...}}`` per load level;
* last ``{"kind": "end", "status": "complete" | "partial", "error": ...}``.

Per request (times from the client's clock): TTFT = first token - arrival, TPOT =
(finish - first token) / (output tokens - 1), latency = finish - arrival. Per point:
medians of TTFT and TPOT, latency quantiles, throughput = output tokens / (last finish -
first arrival) — the same definitions as `SimResult`, so a measured point and its simulation
compare like for like.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ProfilerError

from .._replica import EngineConfig, ReplicaModel
from .._simulator import SimResult, simulate, simulate_closed_loop
from .._workload import Trace

__all__ = [
    "EngineOverheads",
    "EnginePoint",
    "EngineProfile",
    "JsonlWriter",
    "fit_engine_overhead",
    "load_engine_profile",
    "point_summary",
    "predict_point",
]


class JsonlWriter:
    """Append JSON objects to a file, one per line, flushed after each."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, obj: Mapping[str, Any]) -> None:
        """Append `obj` as one line."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(obj) + "\n")


def point_summary(arrival_s: Sequence[float], output_tokens: Sequence[int],
                  ttft_s: Sequence[float], latency_s: Sequence[float]) -> dict[str, float]:
    """The point's metrics from per-request measurements (see the module docstring).

    Returns:
        ``ttft_ms`` and ``tpot_ms`` (medians), ``latency_s_p50/p95/p99``,
        ``throughput_tok_s``, ``throughput_rps``, ``duration_s``, ``requests``.

    """
    arr = np.asarray(arrival_s, dtype=float)
    out = np.asarray(output_tokens, dtype=float)
    ttft = np.asarray(ttft_s, dtype=float)
    lat = np.asarray(latency_s, dtype=float)
    finish = arr + lat
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (lat - ttft) / (out - 1), np.nan)
    duration = float(finish.max() - arr.min()) if arr.size else 0.0
    return {
        "ttft_ms": float(np.median(ttft) * 1e3),
        "tpot_ms": float(np.nanmedian(tpot) * 1e3) if np.any(out > 1) else math.nan,
        "latency_s_p50": float(np.quantile(lat, 0.50)),
        "latency_s_p95": float(np.quantile(lat, 0.95)),
        "latency_s_p99": float(np.quantile(lat, 0.99)),
        "throughput_tok_s": float(out.sum() / duration) if duration > 0 else 0.0,
        "throughput_rps": float(arr.size / duration) if duration > 0 else 0.0,
        "duration_s": duration,
        "requests": float(arr.size),
    }


def sim_summary(res: SimResult) -> dict[str, float]:
    """`point_summary`'s keys for a simulation result."""
    lat = res.latency_s
    return {
        "ttft_ms": float(np.median(res.ttft_s) * 1e3),
        "tpot_ms": float(np.nanmedian(res.tpot_s) * 1e3),
        "latency_s_p50": float(np.quantile(lat, 0.50)),
        "latency_s_p95": float(np.quantile(lat, 0.95)),
        "latency_s_p99": float(np.quantile(lat, 0.99)),
        "throughput_tok_s": res.throughput_tok_s,
        "throughput_rps": res.throughput_rps,
        "duration_s": res.duration_s,
        "requests": float(res.completed),
    }


@dataclass(frozen=True)
class EnginePoint:
    """One measured load level."""

    mode: str
    """``"concurrency"`` (closed loop, `level` clients) or ``"rate"`` (open loop, req/s)."""
    level: float
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    latency_s: np.ndarray
    summary: dict[str, float]

    @property
    def label(self) -> str:
        """``c=8`` or ``4 rps``."""
        return f"c={self.level:g}" if self.mode == "concurrency" else f"{self.level:g} rps"

    def trace(self) -> Trace:
        """The point's arrivals and lengths as a trace (arrivals matter in rate mode only)."""
        arr = self.arrival_s - self.arrival_s.min()
        order = np.argsort(arr, kind="stable")
        return Trace(arr[order], self.input_tokens[order].astype(np.int64),
                     self.output_tokens[order].astype(np.int64), None,
                     f"engine-{self.mode}-{self.level:g}")


@dataclass(frozen=True)
class EngineProfile:
    """A loaded engine profile."""

    path: Path
    meta: dict[str, Any]
    points: list[EnginePoint]
    status: str
    error: str | None


def load_engine_profile(path: str | Path) -> EngineProfile:
    """Read an engine profile (JSON lines; see the module docstring).

    Raises:
        ProfilerError: the file is missing, has no meta line, or a line is not JSON.

    """
    path = Path(path)
    fix = "re-run `boute profile engine --out FILE`"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ProfilerError(f"engine profile {str(path)!r}: cannot read ({exc.strerror}); "
                            "run `boute profile engine --out FILE` first") from None
    except UnicodeDecodeError as exc:
        raise ProfilerError(f"engine profile {str(path)!r}: not UTF-8 text (byte "
                            f"{exc.object[exc.start]:#04x} at offset {exc.start}); {fix}"
                            ) from None
    meta: dict[str, Any] | None = None
    points: list[EnginePoint] = []
    status, error = "partial", None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"engine profile {str(path)!r} line {i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProfilerError(f"{where}: not JSON ({exc.msg}); {fix}") from None
        if not isinstance(obj, dict):
            raise ProfilerError(f"{where}: expected a JSON object with a 'kind', got "
                                f"{type(obj).__name__}; {fix}")
        kind = obj.get("kind")
        if kind == "meta":
            meta = obj
        elif kind == "point":
            points.append(_point(obj, where, fix))
        elif kind == "end":
            status, error = obj.get("status", "partial"), obj.get("error")
    if meta is None:
        raise ProfilerError(f"engine profile {str(path)!r}: no meta line; not an engine profile")
    return EngineProfile(path, meta, points, status, error)


_POINT_COLUMNS = ("arrival_s", "input_tokens", "output_tokens", "ttft_s", "latency_s")
_SUMMARY_KEYS = ("ttft_ms", "tpot_ms", "latency_s_p50", "latency_s_p95", "latency_s_p99",
                 "throughput_tok_s", "throughput_rps")


def _point(obj: dict[str, Any], where: str, fix: str) -> EnginePoint:
    """An `EnginePoint` from a ``point`` line, checked.

    Raises:
        ProfilerError: a missing or ill-typed field (named), or columns of unequal length.

    """
    mode, level, requests, summary = (obj.get(k) for k in ("mode", "level", "requests",
                                                           "summary"))
    if mode not in ("concurrency", "rate"):
        raise ProfilerError(f"{where}: mode={mode!r} must be 'concurrency' or 'rate'; {fix}")
    if (isinstance(level, bool) or not isinstance(level, int | float)
            or not 0 < level < math.inf):
        raise ProfilerError(f"{where}: level={level!r} must be a number > 0; {fix}")
    if not isinstance(requests, dict) or not isinstance(summary, dict):
        raise ProfilerError(f"{where}: 'requests' and 'summary' must be JSON objects; {fix}")
    cols: list[np.ndarray] = []
    for key in _POINT_COLUMNS:
        try:
            col = np.asarray(requests[key], dtype=float)
        except (KeyError, TypeError, ValueError):
            raise ProfilerError(f"{where}: requests.{key} must be a list of numbers; {fix}"
                                ) from None
        if col.ndim != 1 or len(col) != len(cols[0] if cols else col):
            raise ProfilerError(f"{where}: requests.{key} must be a list as long as "
                                f"requests.arrival_s; {fix}")
        if not np.all(np.isfinite(col)):
            raise ProfilerError(f"{where}: requests.{key} holds a value that is not a finite "
                                f"number; {fix}")
        cols.append(col)
    for key in _SUMMARY_KEYS:
        value = summary.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProfilerError(f"{where}: summary.{key}={value!r} must be a number; {fix}")
    arr, inp, out, ttft, lat = cols
    return EnginePoint(mode, float(level), arr, inp, out, ttft, lat, summary)


def predict_point(replica: ReplicaModel, point: EnginePoint) -> dict[str, float]:
    """Simulate `point`'s load on `replica`; returns `sim_summary`.

    The same lengths, and in rate mode the same arrival times; in concurrency mode the same
    number of clients.
    """
    trace = point.trace()
    if point.mode == "concurrency":
        res = simulate_closed_loop(replica, trace, int(point.level))
    else:
        res = simulate(replica, trace, capacity=math.inf)
    return sim_summary(res)


@dataclass(frozen=True)
class EngineOverheads:
    """The engine parameters `fit_engine_overhead` fits, in seconds (`EngineConfig` fields)."""

    step_overhead_s: float
    step_overhead_per_seq_s: float
    frontend_latency_s: float

    @classmethod
    def of(cls, engine: EngineConfig) -> EngineOverheads:
        """`engine`'s values."""
        return cls(engine.step_overhead_s, engine.step_overhead_per_seq_s,
                   engine.frontend_latency_s)

    def apply(self, engine: EngineConfig) -> EngineConfig:
        """`engine` with these values."""
        return replace(engine, step_overhead_s=self.step_overhead_s,
                       step_overhead_per_seq_s=self.step_overhead_per_seq_s,
                       frontend_latency_s=self.frontend_latency_s)


def fit_engine_overhead(replica: ReplicaModel, points: Sequence[EnginePoint]) -> ReplicaModel:
    """Fit the engine's CPU overhead per step and per sequence, and its front-end latency.

    Notation (`EngineConfig`): o_0 = ``step_overhead_s``, o_1 = ``step_overhead_per_seq_s``
    (every step costs ``roofline + o_0 + o_1 n_seqs``), d = ``frontend_latency_s`` (added once
    to a request's TTFT and latency; `profiling._simulator`). With everything else fixed (the
    hardware profile's efficiencies), choose

        (o_0, o_1, d) = argmin sum_points [(log tpot_sim - log tpot_meas)^2
                                            + (log tput_sim - log tput_meas)^2]
                                + (log ttft_sim(p_0) - log ttft_meas(p_0))^2,    all >= 0

    by simulating each point (`predict_point`); p_0 is the least loaded point (fewest requests
    in flight by Little's law, throughput_rps x median latency), where the front-end has the
    CPU to itself. TTFT under load is not fitted: there the front-end also queues behind the
    streaming of other requests' outputs, which the model leaves out (the fidelity report
    shows what that costs). Use points that are NOT the ones the fitted model is then judged on
    (a calibration run at other loads and lengths).

    Args:
        replica: the replica model to refit (its engine settings other than o_0, o_1, d stay).
        points: the calibration points (closed-loop or open-loop).

    Returns:
        A new replica model with the fitted overheads.

    Raises:
        ProfilerError: no points.

    """
    from scipy.optimize import least_squares

    if not points:
        raise ProfilerError("engine overhead fit: no calibration points; measure at least two "
                            "concurrency levels (e.g. --concurrency 1,24)")
    scale = (1e-3, 1e-6, 1e-3)  # x in ms, us, ms: comparable magnitudes for the solver
    idle = min(points, key=lambda p: p.summary["throughput_rps"] * p.summary["latency_s_p50"])

    def with_overhead(x: Sequence[float]) -> ReplicaModel:
        fitted = EngineOverheads(*(float(v) * f for v, f in zip(x, scale, strict=True)))
        return ReplicaModel(replica.model, replica.gpu, replica.tp, replica.pp,
                            fitted.apply(replica.engine), replica.efficiency)

    def residuals(x: np.ndarray) -> np.ndarray:
        model = with_overhead([float(v) for v in x])
        out: list[float] = []
        for p in points:
            pred = predict_point(model, p)
            keys = ("tpot_ms", "throughput_tok_s") + (("ttft_ms",) if p is idle else ())
            out.extend(math.log(pred[k]) - math.log(p.summary[k]) for k in keys)
        return np.asarray(out)

    x0 = [v / f for v, f in zip(astuple(EngineOverheads.of(replica.engine)), scale,
                                strict=True)]
    fit = least_squares(residuals, x0=x0, bounds=([0.0] * 3, [1e3, 1e5, 1e3]), diff_step=1e-2)
    return with_overhead([float(v) for v in fit.x])
