"""Predicted versus measured: the replica model and the load simulation against engine profiles.

One row per measured point: the measured TTFT (median), TPOT (median), output throughput and
P95 latency, the prediction of the same load (`predict_point`: same lengths, same arrivals or
clients) and the relative errors ``predicted / measured - 1``. `error_summary` gives the median
and the worst absolute relative error of each metric.

The replica for an engine profile: the profile's model architecture (meta ``arch``), the
device (a catalog GPU type, or the measured peaks of a CPU's hardware profile), the engine's
scheduler settings read back from vLLM (meta ``engine``), the efficiencies (default or fitted
from a hardware profile) and the engine overheads (default or fitted on a calibration run).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .._catalog import GpuType, ModelArch
from .._hardware import HardwareProfile, fit_efficiency
from .._replica import Efficiency, EngineConfig, ReplicaModel
from ._engine_profile import (
    EngineOverheads,
    EnginePoint,
    EngineProfile,
    fit_engine_overhead,
    predict_point,
)

__all__ = [
    "METRICS",
    "CalibratedReplicas",
    "calibrate_replicas",
    "compare_points",
    "error_summary",
    "replica_for_profile",
]

METRICS = ("ttft_ms", "tpot_ms", "throughput_tok_s", "latency_s_p95")


def replica_for_profile(profile: EngineProfile, gpu: GpuType,
                        efficiency: Efficiency | None = None,
                        overheads: EngineOverheads | None = None) -> ReplicaModel:
    """The replica model of the engine that `profile` measured.

    Args:
        profile: the engine profile (its meta gives the architecture and scheduler settings).
        gpu: the device's catalog row (for a CPU: `device_gpu_type` of its hardware profile).
        efficiency: default `Efficiency()` (the spec-sheet roofline with default factors).
        overheads: the engine's overheads and front-end latency (`fit_engine_overhead`);
            default the `EngineConfig` defaults (current vLLM on a GPU).

    """
    arch_fields = dict(profile.meta["arch"])
    model = ModelArch(**arch_fields)
    eng = profile.meta["engine"]
    engine = EngineConfig(name="measured", max_num_seqs=int(eng["max_num_seqs"]),
                          max_num_batched_tokens=int(eng["max_num_batched_tokens"]),
                          max_model_len=int(eng["max_model_len"]),
                          gpu_memory_utilization=0.9,
                          runtime_reserve_gib=0.0 if profile.meta.get("device") == "cpu"
                          else EngineConfig().runtime_reserve_gib)
    if overheads is not None:
        engine = overheads.apply(engine)
    return ReplicaModel(model, gpu, 1, 1, engine, efficiency)


def compare_points(replica: ReplicaModel, points: Iterable[EnginePoint], *, source: str,
                   role: str = "held-out") -> list[dict[str, Any]]:
    """One row per point: measured, predicted and relative error of each of `METRICS`."""
    rows = []
    for p in points:
        pred = predict_point(replica, p)
        row: dict[str, Any] = {"source": source, "point": p.label, "mode": p.mode,
                               "level": p.level, "role": role}
        for key in METRICS:
            meas = float(p.summary[key])
            row[f"{key}_measured"] = meas
            row[f"{key}_predicted"] = pred[key]
            row[f"{key}_rel_err"] = pred[key] / meas - 1 if meas else float("nan")
        rows.append(row)
    return rows


def error_summary(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS
                  ) -> dict[str, dict[str, float]]:
    """Median and worst absolute relative error per metric over `rows` (NaN rows skipped)."""
    out = {}
    for key in metrics:
        errs = [abs(r[f"{key}_rel_err"]) for r in rows
                if f"{key}_rel_err" in r and r[f"{key}_rel_err"] == r[f"{key}_rel_err"]]
        if errs:
            out[key] = {"median_abs": statistics.median(errs), "worst_abs": max(errs),
                        "n": float(len(errs))}
    return out


@dataclass(frozen=True)
class CalibratedReplicas:
    """The replica model of an engine profile before and after calibration."""

    before: ReplicaModel
    """Default efficiencies (spec-sheet roofline) and default engine overheads."""
    after: ReplicaModel
    """Efficiencies fitted on the hardware profile, overheads fitted on the calibration runs."""
    fitted_on: dict[str, Any]
    """What was fitted on what (for the report)."""


def calibrate_replicas(profile: EngineProfile, gpu: GpuType, hardware: HardwareProfile | None,
                       calibration: Sequence[EngineProfile]) -> CalibratedReplicas:
    """Build the before/after replica models of `profile`'s engine.

    After = `fit_efficiency` on `hardware` (when given), then `fit_engine_overhead` on the
    points of `calibration` (other runs than `profile`; when empty the default overheads stay).

    Raises:
        ValueError: `profile` is itself one of the `calibration` runs (it would be judged on
            the points it was fitted on).

    """
    if any(c.path == profile.path for c in calibration):
        raise ValueError(f"{profile.path}: a calibration run cannot be judged; pass other runs")
    before = replica_for_profile(profile, gpu)
    eff = fit_efficiency(hardware, gpu) if hardware is not None else Efficiency()
    after = replica_for_profile(profile, gpu, eff)
    points = [p for c in calibration for p in c.points]
    if points:
        fitted = fit_engine_overhead(replica_for_profile(calibration[0], gpu, eff), points)
        after = replica_for_profile(profile, gpu, eff, EngineOverheads.of(fitted.engine))
    info = {"efficiency_from": str(hardware.path) if hardware is not None else None,
            "compute": eff.compute, "memory": eff.memory,
            "attention_compute": eff.attention_compute, "kernel_latency_s": eff.kernel_latency_s,
            "overhead_from": [f"{c.path}: {', '.join(p.label for p in c.points)}"
                              for c in calibration],
            **asdict(EngineOverheads.of(after.engine))}
    return CalibratedReplicas(before, after, info)
